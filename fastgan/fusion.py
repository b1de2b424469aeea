"""``fastgan.fuse(model)``: swap BatchNorm → (Leaky)ReLU pairs for the fused block, in place.

Inside every ``nn.Sequential`` of the model, each ``nn.BatchNorm1d``/``nn.BatchNorm2d``
directly followed by ``nn.LeakyReLU`` or ``nn.ReLU`` becomes one
:class:`fastgan.nn.BatchNormLeakyReLU1d`/``2d`` (ReLU: slope 0) and the activation's slot an
``nn.Identity``, so indices and state_dict keys stay as they were. The fused module takes
over the BatchNorm's parameter and buffer tensors themselves (an optimizer built before
fusing keeps working) and its train/eval state. Pairs outside an ``nn.Sequential`` (called
from a custom ``forward``) are left alone: their order is not visible from the module tree.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from fastgan.nn import BatchNormLeakyReLU1d, BatchNormLeakyReLU2d

_FUSED_CLASS = {nn.BatchNorm1d: BatchNormLeakyReLU1d, nn.BatchNorm2d: BatchNormLeakyReLU2d}
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)


class FusedPair(NamedTuple):
    """One replacement: the BatchNorm's path in the model, what it was, what it became."""

    path: str
    norm: str
    activation: str
    fused: str


class FuseReport(NamedTuple):
    """What :func:`fuse` replaced; ``len(report)`` pairs, ``str(report)`` one line each."""

    fused: list

    def __len__(self) -> int:
        return len(self.fused)

    def __str__(self) -> str:
        if not self.fused:
            return "fastgan.fuse: nothing to fuse (no BatchNorm1d/2d directly followed by ReLU/LeakyReLU in an nn.Sequential)"
        lines = [f"fastgan.fuse: fused {len(self.fused)} BatchNorm + activation pair(s)"]
        lines += [f"  {p.path}: {p.norm} + {p.activation} -> {p.fused}" for p in self.fused]
        return "\n".join(lines)


def _fused_module(norm: nn.Module, activation: nn.Module, backend: Optional[str]) -> nn.Module:
    slope = 0.0 if isinstance(activation, nn.ReLU) else float(activation.negative_slope)
    reference = norm.weight if norm.weight is not None else norm.running_mean
    fused = _FUSED_CLASS[type(norm)](
        norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats,
        device=reference.device if reference is not None else None,
        dtype=reference.dtype if reference is not None else None,
        negative_slope=slope, backend=backend,
    )
    # Take over the very tensors, so parameter identity (optimizer state) is preserved.
    for name in ("weight", "bias"):
        setattr(fused, name, getattr(norm, name))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        fused._buffers[name] = norm._buffers.get(name)
    fused.train(norm.training)
    return fused


def fuse(module: nn.Module, *, backend: Optional[str] = None) -> FuseReport:
    """Fuse every BatchNorm1d/2d → ReLU/LeakyReLU pair inside ``module``'s ``nn.Sequential``
    containers, in place.

    Args:
        module: any ``nn.Module`` (a generator, a discriminator, a whole model).
        backend: pins a backend for the fused blocks (default: chosen per call).

    Returns:
        A :class:`FuseReport` listing each fused pair by its path in ``module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    fused = []
    for prefix, container in list(module.named_modules()):
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules)
        for first, second in zip(names, names[1:]):
            norm, activation = container._modules[first], container._modules[second]
            if type(norm) not in _FUSED_CLASS or type(activation) not in _ACTIVATIONS:
                continue
            replacement = _fused_module(norm, activation, backend)
            path = f"{prefix}.{first}" if prefix else first
            fused.append(FusedPair(path, repr(norm), repr(activation), type(replacement).__name__))
            container._modules[first] = replacement
            container._modules[second] = nn.Identity()
    return FuseReport(fused)
