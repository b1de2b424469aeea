"""2-D toy mixtures (PacGAN, Lin et al. 2018, §5; VEEGAN, Srivastava et al. 2017).

=============  ==================================================================  =========
name           centres (K, 2)                                                      std σ
=============  ==================================================================  =========
``ring8``      (cos 2πk/8, sin 2πk/8), k = 0..7: radius 1                          0.01
``grid25``     {−4, −2, 0, 2, 4}², row-major: (x, y) with x the slower index        0.05
``grid100``    {−9, −7, …, 7, 9}²: a 10 × 10 grid of spacing 2 centred at 0         0.05
=============  ==================================================================  =========

Each is a uniform mixture of isotropic Gaussians N(c_k, σ²I). :func:`toy_mixture` returns
one by name; :class:`ToyMixture` builds any other. :func:`fastgan.metrics.toy_metrics`
scores samples against one.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from fastgan.data._common import DeviceLike, _canonical, _check_count, _sample_device

__all__ = [
    "TOY_MIXTURES",
    "ToyMixture",
    "toy_mixture",
]


TOY_MIXTURES = ("ring8", "grid25", "grid100")


class ToyMixture:
    """A uniform mixture of K isotropic 2-D Gaussians N(c_k, std²·I).

    ``centres``: (K, 2) floating tensor (kept as a float64 CPU copy, :attr:`centres`);
    ``std``: σ > 0. ``sample`` draws the mode index with ``torch.randint`` and indexes a
    copy of the centres cached on the sampling device, so it never synchronises; the first
    call on a device copies the centres there (do it before capturing a CUDA graph).
    """

    def __init__(self, name: str, centres: Tensor, std: float) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        if not isinstance(centres, Tensor):
            raise TypeError(f"centres must be a Tensor of shape (K, 2), got {type(centres).__name__}")
        if centres.dim() != 2 or centres.shape[1] != 2 or centres.shape[0] < 1:
            raise ValueError(f"centres must have shape (K, 2) with K >= 1, got {tuple(centres.shape)}")
        if not centres.is_floating_point():
            raise TypeError(f"centres must be a floating tensor, got {centres.dtype}")
        centres = centres.detach().to("cpu", torch.float64).clone()
        if not torch.isfinite(centres).all():
            raise ValueError("centres must be finite")
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) or std <= 0:
            raise ValueError(f"std must be a finite number > 0, got {std!r}")
        self.name = name
        self._centres = centres
        self.std = float(std)
        self._cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    @property
    def centres(self) -> Tensor:
        """The mode centres, (K, 2) float64 on the CPU (a copy)."""
        return self._centres.clone()

    @property
    def num_modes(self) -> int:
        return self._centres.shape[0]

    def centres_on(self, device: DeviceLike = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """The centres (K, 2) as ``dtype`` on ``device`` (cached: do not modify in place)."""
        device = _canonical(torch.device(device) if device is not None else torch.get_default_device())
        key = (device, dtype)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = self._centres.to(device=device, dtype=dtype)
        return cached

    def sample_with_modes(
        self,
        n: int,
        device: DeviceLike = None,
        generator: Optional[torch.Generator] = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor]:
        """``(samples (n, 2) dtype, modes (n,) int64)``: each sample's mode index is drawn
        uniformly from [0, K), then Gaussian noise of std σ is added to that centre."""
        n = _check_count(n)
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        device = _sample_device(device, generator, torch.get_default_device())
        centres = self.centres_on(device, dtype)
        modes = torch.randint(self.num_modes, (n,), device=device, generator=generator)
        noise = torch.randn((n, 2), device=device, dtype=dtype, generator=generator)
        return torch.index_select(centres, 0, modes).add_(noise, alpha=self.std), modes

    def sample(
        self,
        n: int,
        device: DeviceLike = None,
        generator: Optional[torch.Generator] = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``n`` samples (n, 2) of the mixture on ``device`` (see :meth:`sample_with_modes`)."""
        return self.sample_with_modes(n, device, generator, dtype)[0]

    def __repr__(self) -> str:
        return f"ToyMixture({self.name!r}, num_modes={self.num_modes}, std={self.std})"


def _ring(k: int, radius: float) -> Tensor:
    angle = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    return torch.stack([torch.cos(angle), torch.sin(angle)], 1) * radius


def _grid(values: Sequence[float]) -> Tensor:
    v = torch.tensor(values, dtype=torch.float64)
    return torch.cartesian_prod(v, v)


_TOY_SPECS = {
    "ring8": (lambda: _ring(8, 1.0), 0.01),
    "grid25": (lambda: _grid(range(-4, 5, 2)), 0.05),
    "grid100": (lambda: _grid(range(-9, 10, 2)), 0.05),
}
_TOY_CACHE: dict[str, ToyMixture] = {}


def toy_mixture(name: Union[str, ToyMixture]) -> ToyMixture:
    """The embedded mixture ``name`` (one of :data:`TOY_MIXTURES`; see the module docstring);
    a :class:`ToyMixture` is returned as is.

    The same object is returned on every call, so its device copies of the centres are shared.
    """
    if isinstance(name, ToyMixture):
        return name
    if name not in _TOY_SPECS:
        raise ValueError(f"unknown toy mixture {name!r}; available: {', '.join(TOY_MIXTURES)}")
    if name not in _TOY_CACHE:
        centres, std = _TOY_SPECS[name]
        _TOY_CACHE[name] = ToyMixture(name, centres(), std)
    return _TOY_CACHE[name]
