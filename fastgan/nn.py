"""Module forms of fastgan's ops, drop-in replacements for their ``torch.nn`` twins."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastgan.ops.bce import REDUCTIONS, bce_with_logits


class BCEWithLogitsLoss(torch.nn.Module):
    """Drop-in for ``torch.nn.BCEWithLogitsLoss`` running :func:`fastgan.ops.bce_with_logits`.

    ``weight`` and ``pos_weight`` are registered as buffers, as in PyTorch, so they move with
    ``.to()`` and appear in the state_dict under the same keys. ``forward(input, target)``
    also accepts a Python float target. ``backend`` pins a backend for this module.
    """

    def __init__(
        self,
        weight: Optional[Tensor] = None,
        reduction: str = "mean",
        pos_weight: Optional[Tensor] = None,
        *,
        backend: Optional[str] = None,
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"{reduction} is not a valid value for reduction")
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)
        self.reduction = reduction
        self.backend = backend

    def forward(self, input: Tensor, target: Tensor | float) -> Tensor:
        return bce_with_logits(
            input, target, self.weight, self.pos_weight, reduction=self.reduction, backend=self.backend
        )

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}" + (f", backend={self.backend!r}" if self.backend else "")
