"""Module forms of fastgan's ops, drop-in replacements for their ``torch.nn`` twins."""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from fastgan.ops.batch_norm import batch_norm_leaky_relu
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


class _LeakyReLUFusion:
    """The fused forward shared by the blocks below, mixed into the ``torch.nn`` BatchNorm each
    block replaces: ``F.leaky_relu(bn(x), negative_slope)`` in one op
    (:func:`fastgan.ops.batch_norm_leaky_relu`), with the BatchNorm's own parameters, buffers,
    state_dict keys and train/eval semantics."""

    def _set_activation(self, negative_slope: float, backend: Optional[str]) -> None:
        self.negative_slope = float(negative_slope)
        self.backend = backend

    def _synchronising_group(self):
        """The process group to combine batch statistics over; None: this process's batch."""
        return None

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        # The same decisions as nn.BatchNorm's forward: batch statistics in training, or
        # always when no running statistics are kept; num_batches_tracked is advanced (on the
        # device, by the op) whenever running statistics are updated.
        use_running = not self.training or self.track_running_stats
        tracking = self.training and self.track_running_stats
        return batch_norm_leaky_relu(
            input,
            self.weight,
            self.bias,
            self.running_mean if use_running else None,
            self.running_var if use_running else None,
            self.training or (self.running_mean is None and self.running_var is None),
            self.momentum,
            self.eps,
            self.negative_slope,
            num_batches_tracked=self.num_batches_tracked if tracking else None,
            process_group=self._synchronising_group(),
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        extra = f"{super().extra_repr()}, negative_slope={self.negative_slope}"
        return extra + (f", backend={self.backend!r}" if self.backend else "")


class BatchNorm1dLeakyReLU(_LeakyReLUFusion, torch.nn.BatchNorm1d):
    """``nn.BatchNorm1d`` → ``nn.LeakyReLU(negative_slope)`` fused, for (N, C) and (N, C, L)
    inputs; ``negative_slope=0`` gives BatchNorm → ReLU. An ``nn.BatchNorm1d`` (``isinstance``
    and the class name, so initialisation, weight-decay and freezing code that looks for
    BatchNorms finds it) with its constructor arguments, parameters, buffers and state_dict
    keys: checkpoints load either way. ``backend`` pins a backend for this module."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, negative_slope: float = 0.01,
                 backend: Optional[str] = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self._set_activation(negative_slope, backend)


class BatchNorm2dLeakyReLU(_LeakyReLUFusion, torch.nn.BatchNorm2d):
    """``nn.BatchNorm2d`` → ``nn.LeakyReLU(negative_slope)`` fused, for (N, C, H, W) inputs
    (contiguous or channels_last); ``negative_slope=0`` gives BatchNorm → ReLU. An
    ``nn.BatchNorm2d`` (``isinstance`` and the class name) with its constructor arguments,
    parameters, buffers and state_dict keys: checkpoints load either way. ``backend`` pins a
    backend for this module."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, negative_slope: float = 0.01,
                 backend: Optional[str] = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self._set_activation(negative_slope, backend)


# The names these blocks had before they became nn.BatchNorm1d/2d subclasses.
BatchNormLeakyReLU1d = BatchNorm1dLeakyReLU
BatchNormLeakyReLU2d = BatchNorm2dLeakyReLU


class SyncBatchNormLeakyReLU(_LeakyReLUFusion, torch.nn.modules.batchnorm._BatchNorm):
    """Fused ``nn.SyncBatchNorm`` → ``nn.LeakyReLU(negative_slope)``: in training, batch
    statistics over the batch concatenated across ``process_group`` (default: the whole world),
    with one collective per forward and one per backward
    (:func:`fastgan.ops.batch_norm_leaky_relu` with ``process_group``). Same constructor
    arguments, parameters, buffers and state_dict keys as ``nn.SyncBatchNorm`` (so checkpoints
    load either way, and from ``nn.BatchNorm*d``), and like it: any (N, C, *) input of 2 or
    more dimensions (contiguous, channels_last or channels_last_3d), per-process batch sizes
    may differ, ``weight``/``bias`` gradients are this process's share (data parallelism
    averages them), and nothing is communicated in eval mode. Without an initialised
    ``torch.distributed``, or with a group of one process, it is exactly the unsynchronised
    fused block. A ``_BatchNorm`` with "BatchNorm" in its class name, so code that looks for
    BatchNorms finds it, but not an ``nn.SyncBatchNorm``: DistributedDataParallel refuses those
    on the CPU, where this block runs too (gloo)."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group=None,
        device=None,
        dtype=None,
        *,
        negative_slope: float = 0.01,
        backend: Optional[str] = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self._set_activation(negative_slope, backend)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")
        if input.size(1) == 0:
            raise ValueError("SyncBatchNormLeakyReLU number of input channels should be non-zero")

    def _synchronising_group(self):
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None
        return self.process_group if self.process_group is not None else dist.group.WORLD

    @classmethod
    def convert_sync_batchnorm(cls, module: torch.nn.Module, process_group=None) -> torch.nn.Module:
        """Like ``nn.SyncBatchNorm.convert_sync_batchnorm``, and safe for fused blocks: every
        :class:`BatchNorm1dLeakyReLU`/``2d`` in ``module`` becomes a
        :class:`SyncBatchNormLeakyReLU` and every plain ``nn.BatchNorm*d`` an ``nn.SyncBatchNorm``
        (``nn.SyncBatchNorm.convert_sync_batchnorm`` would turn the fused blocks, which are
        BatchNorm modules, into plain ``nn.SyncBatchNorm`` and drop their activation). The new
        modules take over the very parameter and buffer tensors (optimizers keep working) and
        the train/eval state. Returns ``module``, or its replacement when it is itself one.

        Pair a plain BatchNorm with its following (Leaky)ReLU as well with
        ``fastgan.fuse(module, sync=True)``.
        """
        converted = module
        if type(module) in (BatchNorm1dLeakyReLU, BatchNorm2dLeakyReLU):
            converted = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                            process_group, negative_slope=module.negative_slope, backend=module.backend)
            _adopt_state(module, converted)
        elif type(module) in (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d):
            converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
        for name, child in module.named_children():
            converted.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return converted


def _adopt_state(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Gives ``target`` (a fresh fused block) the BatchNorm-like ``source``'s very parameter and
    buffer tensors, so parameter identity (optimizer state) survives, and its train/eval state."""
    for name in ("weight", "bias"):
        setattr(target, name, getattr(source, name))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        target._buffers[name] = source._buffers.get(name)
    target.train(source.training)
