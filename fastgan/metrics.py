"""Mode-coverage metrics for the embedded data sets (:mod:`fastgan.data`).

Toy mixtures: the VEEGAN / PacGAN protocol
------------------------------------------

Draw 2,500 samples from the generator and call :func:`toy_metrics` with the mixture they
should match. Each sample is assigned to its nearest centre (Euclidean); it is
*high-quality* when it lies within ``threshold`` = 3 standard deviations of that centre,
‖x − c‖ < 3σ (σ the mixture's std; strict, as in the PacGAN code). For the true mixture
the expected high-quality fraction is P(χ²₂ < 9) = 1 − e^(−4.5) ≈ 98.89 %. From the
histogram c_k of high-quality samples over the K modes:

- ``modes``: the number of modes with at least one high-quality sample (c_k ≥ 1);
- ``modes_strict``: the number of modes with c_k ≥ ``min_count`` (default 20). The count
  is absolute: 20 of the protocol's 2,500 samples, a fifth of the 100 a ``grid25`` mode
  expects. If you evaluate another number of samples n, scale it yourself
  (``min_count=round(20 * n / 2500)``);
- ``high_quality``: the fraction (not %) of all samples that are high-quality;
- ``reverse_kl``: KL(p ‖ u) = Σ_k p_k·log(K·p_k) = log K − H(p), in nats, where
  p_k = c_k / Σ_j c_j is the mode distribution of the high-quality samples only (normalised
  over them, low-quality samples left out) and u is uniform over all K modes; modes with
  c_k = 0 contribute 0 (0·log 0 = 0). It is the "reverse KL" of the PacGAN paper (the
  generated distribution first). 0 for a perfectly balanced histogram, log(K/m) when m
  modes are covered evenly, NaN when no sample is high-quality (p is undefined).
- ``num_modes``: K.

Everything is computed on the samples' device, vectorised (nearest centre by broadcasting,
in blocks of a few million distances), and only the final four numbers are read back to the
host, in one transfer.

The ``shapes`` image set
------------------------

:func:`shapes_metrics` does the same with :func:`fastgan.data.classify_shapes` in place of
the nearest-centre rule: its ``mode`` is the assignment and its ``quality`` flag decides
high quality. K = 24; evaluate 2,500 images (about 104 per mode), so the default
``min_count=20`` keeps its meaning.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import torch
from torch import Tensor

from fastgan.data import NUM_SHAPE_MODES, ToyMixture, classify_shapes, toy_mixture

__all__ = [
    "DEFAULT_MIN_COUNT",
    "ModeCoverage",
    "ShapesMetrics",
    "ToyMetrics",
    "assign_toy_modes",
    "mode_histogram",
    "shapes_metrics",
    "toy_metrics",
]

DEFAULT_MIN_COUNT = 20
_BLOCK = 1 << 22  # distances computed at once


class ModeCoverage(NamedTuple):
    """The answer of :func:`toy_metrics` and :func:`shapes_metrics` (see the module
    docstring for each field)."""

    modes: int
    modes_strict: int
    high_quality: float
    reverse_kl: float
    num_modes: int

    def as_dict(self) -> dict:
        return dict(self._asdict())


ToyMetrics = ShapesMetrics = ModeCoverage  # the names each metric's callers know it by


def _check_min_count(min_count) -> int:
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
    return min_count


def _mixture(mixture: Union[ToyMixture, str]) -> ToyMixture:
    if isinstance(mixture, ToyMixture):
        return mixture
    if isinstance(mixture, str):
        return toy_mixture(mixture)
    raise TypeError(f"mixture must be a ToyMixture or a toy mixture name, got {type(mixture).__name__}")


def assign_toy_modes(
    samples: Tensor, mixture: Union[ToyMixture, str], *, threshold: float = 3.0
) -> tuple[Tensor, Tensor]:
    """Each sample's nearest centre and whether it is high-quality, on the samples' device.

    ``samples``: (n, 2) floating. ``mixture``: a :class:`~fastgan.data.ToyMixture` or its
    name. Returns ``(mode (n,) int64, high_quality (n,) bool)``, high quality meaning
    ‖x − c_mode‖ < threshold·σ. A non-finite sample is low-quality. No host synchronisation.
    """
    mixture = _mixture(mixture)
    if not isinstance(samples, Tensor):
        raise TypeError(f"samples must be a Tensor of shape (n, 2), got {type(samples).__name__}")
    if samples.dim() != 2 or samples.shape[1] != 2:
        raise ValueError(f"samples must have shape (n, 2), got {tuple(samples.shape)}")
    if not samples.is_floating_point():
        raise TypeError(f"samples must be a floating tensor, got {samples.dtype}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        raise ValueError(f"threshold must be a number of standard deviations > 0, got {threshold!r}")
    x = samples.detach()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    centres = mixture.centres_on(x.device, x.dtype)  # (K, 2)
    radius2 = (threshold * mixture.std) ** 2
    rows = max(1, _BLOCK // mixture.num_modes)
    modes, quality = [], []
    for start in range(0, x.shape[0], rows):
        block = x[start : start + rows]
        d2 = (block.unsqueeze(1) - centres).square_().sum(2)  # (rows, K)
        nearest, index = d2.min(1)  # NaN rows give NaN distances: not high-quality
        modes.append(index)
        quality.append(nearest < radius2)
    if not modes:
        empty = torch.empty((0,), dtype=torch.int64, device=x.device)
        return empty, empty.bool()
    return torch.cat(modes), torch.cat(quality)


def mode_histogram(mode: Tensor, high_quality: Tensor, num_modes: int) -> Tensor:
    """The number of high-quality samples per mode, (num_modes,) int64 on the inputs'
    device (``scatter_add``: no host synchronisation, unlike ``bincount`` on CUDA)."""
    if mode.shape != high_quality.shape or mode.dim() != 1:
        raise ValueError(
            "mode and high_quality must be 1-D of the same length, "
            f"got {tuple(mode.shape)} and {tuple(high_quality.shape)}"
        )
    counts = torch.zeros((num_modes,), dtype=torch.int64, device=mode.device)
    return counts.scatter_add_(0, mode.long(), high_quality.long())


def _summarise(mode: Tensor, high_quality: Tensor, num_modes: int, min_count: int) -> tuple[int, int, float, float]:
    n = mode.shape[0]
    counts = mode_histogram(mode, high_quality, num_modes)
    dtype = torch.float32 if counts.device.type == "mps" else torch.float64
    c = counts.to(dtype)
    total = c.sum()
    p = c / total  # NaN everywhere when no sample is high-quality
    reverse_kl = torch.special.xlogy(p, p * num_modes).sum()
    stats = torch.stack([(counts > 0).sum().to(dtype), (counts >= min_count).sum().to(dtype), total, reverse_kl])
    covered, strict, total_hq, kl = stats.tolist()  # the one host read
    return int(covered), int(strict), total_hq / n, kl


def toy_metrics(
    samples: Tensor,
    mixture: Union[ToyMixture, str],
    *,
    min_count: int = DEFAULT_MIN_COUNT,
    threshold: float = 3.0,
) -> ToyMetrics:
    """Mode coverage of ``samples`` (n, 2) against ``mixture`` (a ToyMixture or a name such
    as ``"grid25"``): the VEEGAN/PacGAN protocol of the module docstring (use n = 2,500).
    ``threshold``: the high-quality radius in standard deviations; ``min_count``: the
    high-quality samples a mode needs to count in ``modes_strict``."""
    mixture = _mixture(mixture)
    min_count = _check_min_count(min_count)
    mode, quality = assign_toy_modes(samples, mixture, threshold=threshold)
    if mode.shape[0] == 0:
        raise ValueError("samples is empty: toy_metrics needs at least one sample (the protocol uses 2,500)")
    return ToyMetrics(*_summarise(mode, quality, mixture.num_modes, min_count), mixture.num_modes)


def shapes_metrics(images: Tensor, *, min_count: int = DEFAULT_MIN_COUNT) -> ShapesMetrics:
    """Mode coverage of generated ``shapes`` images (N, 3, S, S) in [−1, 1], using
    :func:`fastgan.data.classify_shapes` (same definitions as :func:`toy_metrics`; use
    N = 2,500)."""
    min_count = _check_min_count(min_count)
    mode, quality = classify_shapes(images)
    if mode.shape[0] == 0:
        raise ValueError("images is empty: shapes_metrics needs at least one image (use 2,500)")
    return ShapesMetrics(*_summarise(mode, quality, NUM_SHAPE_MODES, min_count), NUM_SHAPE_MODES)

