"""``fastgan.fuse(model)``: swap BatchNorm → (Leaky)ReLU pairs for the fused block, in place.

Inside every ``nn.Sequential`` of the model, each ``nn.BatchNorm1d``/``nn.BatchNorm2d``
directly followed by ``nn.LeakyReLU`` or ``nn.ReLU`` becomes one
:class:`fastgan.nn.BatchNormLeakyReLU1d`/``2d`` (ReLU: slope 0) and the activation's slot an
``nn.Identity``, so indices and state_dict keys stay as they were. The fused module takes
over the BatchNorm's parameter and buffer tensors themselves (an optimizer built before
fusing keeps working) and its train/eval state. Pairs outside an ``nn.Sequential`` (called
from a custom ``forward``) are left alone: their order is not visible from the module tree.

Synchronised (``sync=True``, for data-parallel training): those pairs, ``nn.BatchNorm3d``
pairs too, become :class:`fastgan.nn.SyncBatchNormLeakyReLU` over ``process_group`` (default:
the whole world), and so do the fused blocks already in the model, wherever they are (a
fused block's order is its own). An ``nn.SyncBatchNorm`` → (Leaky)ReLU pair always becomes
the synchronised block, with the SyncBatchNorm's own process group unless ``process_group``
is given: fusing never drops synchronisation.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from torch import nn

from fastgan.nn import BatchNormLeakyReLU1d, BatchNormLeakyReLU2d, SyncBatchNormLeakyReLU, _adopt_state

_FUSED_CLASS = {nn.BatchNorm1d: BatchNormLeakyReLU1d, nn.BatchNorm2d: BatchNormLeakyReLU2d}
_SYNC_ONLY_NORMS = (nn.BatchNorm3d,)  # no unsynchronised fused twin: fused only with sync=True
_UNSYNCHRONISED_BLOCKS = (BatchNormLeakyReLU1d, BatchNormLeakyReLU2d)
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)


class FusedPair(NamedTuple):
    """One replacement: the BatchNorm's path in the model, what it was, what it became.
    ``activation`` is empty when an already-fused block was made synchronised."""

    path: str
    norm: str
    activation: str
    fused: str


class FuseReport(NamedTuple):
    """What :func:`fuse` replaced; ``len(report)`` replacements, ``str(report)`` one line each."""

    fused: list
    synchronised: bool = False

    def __len__(self) -> int:
        return len(self.fused)

    def __str__(self) -> str:
        if not self.fused:
            if self.synchronised:
                return ("fastgan.fuse: nothing to fuse (no BatchNorm1d/2d/3d or SyncBatchNorm directly followed by "
                        "ReLU/LeakyReLU in an nn.Sequential, and no unsynchronised fused block)")
            return ("fastgan.fuse: nothing to fuse (no BatchNorm1d/2d or SyncBatchNorm directly followed by "
                    "ReLU/LeakyReLU in an nn.Sequential)")
        pairs = sum(1 for p in self.fused if p.activation)
        blocks = len(self.fused) - pairs
        done = [f"fused {pairs} BatchNorm + activation pair(s)"] if pairs else []
        done += [f"synchronised {blocks} fused block(s)"] if blocks else []
        where = "; batch statistics synchronised across the process group" if self.synchronised else ""
        lines = [f"fastgan.fuse: {', '.join(done)}{where}"]
        lines += [f"  {p.path}: {p.norm}{f' + {p.activation}' if p.activation else ''} -> {p.fused}"
                  for p in self.fused]
        return "\n".join(lines)


def _synchronised_module(norm: nn.Module, slope: float, backend: Optional[str], process_group) -> nn.Module:
    """A SyncBatchNormLeakyReLU holding ``norm``'s tensors (a BatchNorm or a fused block)."""
    group = process_group if process_group is not None else getattr(norm, "process_group", None)
    reference = norm.weight if norm.weight is not None else norm.running_mean
    fused = SyncBatchNormLeakyReLU(
        norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats, process_group=group,
        device=reference.device if reference is not None else None,
        dtype=reference.dtype if reference is not None else None,
        negative_slope=slope, backend=backend,
    )
    _adopt_state(norm, fused)
    return fused


def _fused_module(norm: nn.Module, activation: nn.Module, backend: Optional[str], sync: bool,
                  process_group) -> nn.Module:
    slope = 0.0 if isinstance(activation, nn.ReLU) else float(activation.negative_slope)
    if sync or isinstance(norm, nn.SyncBatchNorm):
        return _synchronised_module(norm, slope, backend, process_group)
    reference = norm.weight if norm.weight is not None else norm.running_mean
    fused = _FUSED_CLASS[type(norm)](
        norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats,
        device=reference.device if reference is not None else None,
        dtype=reference.dtype if reference is not None else None,
        negative_slope=slope, backend=backend,
    )
    _adopt_state(norm, fused)
    return fused


def _fusable(norm: nn.Module, sync: bool) -> bool:
    kind = type(norm)
    return kind in _FUSED_CLASS or kind is nn.SyncBatchNorm or (sync and kind in _SYNC_ONLY_NORMS)


def fuse(module: nn.Module, *, backend: Optional[str] = None, sync: bool = False, process_group=None) -> FuseReport:
    """Fuse every BatchNorm1d/2d → ReLU/LeakyReLU pair inside ``module``'s ``nn.Sequential``
    containers, in place.

    Args:
        module: any ``nn.Module`` (a generator, a discriminator, a whole model).
        backend: pins a backend for the fused blocks (default: chosen per call; blocks made
            synchronised keep their own unless this is given).
        sync: make the fused blocks :class:`fastgan.nn.SyncBatchNormLeakyReLU` (batch
            statistics over the processes of ``process_group``, as ``nn.SyncBatchNorm``), also
            fusing BatchNorm3d pairs and converting the unsynchronised fused blocks already
            in ``module``. ``nn.SyncBatchNorm`` pairs are fused synchronised either way.
        process_group: the group to synchronise over (default: the whole world, or an
            ``nn.SyncBatchNorm``'s own group); needs ``sync=True``.

    Returns:
        A :class:`FuseReport` listing each replacement by its path in ``module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(sync, bool):
        raise TypeError(f"sync must be a bool, got {type(sync).__name__}")
    if process_group is not None and not sync:
        raise ValueError("process_group is only used with sync=True")
    if sync and isinstance(module, _UNSYNCHRONISED_BLOCKS):
        raise ValueError(f"module is itself a fused block ({type(module).__name__}) and cannot be replaced in place; "
                         "use fastgan.nn.SyncBatchNormLeakyReLU.convert_sync_batchnorm(module), which returns it")
    fused = []
    for prefix, container in list(module.named_modules()):
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules)
        for first, second in zip(names, names[1:]):
            norm, activation = container._modules[first], container._modules[second]
            if not _fusable(norm, sync) or type(activation) not in _ACTIVATIONS:
                continue
            replacement = _fused_module(norm, activation, backend, sync, process_group)
            path = f"{prefix}.{first}" if prefix else first
            fused.append(FusedPair(path, repr(norm), repr(activation), type(replacement).__name__))
            container._modules[first] = replacement
            container._modules[second] = nn.Identity()
    if sync:
        for prefix, parent in list(module.named_modules()):
            for name, child in list(parent._modules.items()):
                if type(child) not in _UNSYNCHRONISED_BLOCKS:
                    continue
                replacement = _synchronised_module(child, child.negative_slope,
                                                   backend if backend is not None else child.backend, process_group)
                fused.append(FusedPair(f"{prefix}.{name}" if prefix else name, repr(child), "",
                                       type(replacement).__name__))
                parent._modules[name] = replacement
    return FuseReport(fused, sync)
