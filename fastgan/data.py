"""Training data sampled on the device: 2-D toy mixtures, image folders and arrays, and an
embedded image set whose mode coverage can be measured exactly.

Every source here has the same sampling call, ``source.sample(n, device=None,
generator=None) -> Tensor``, which draws ``n`` samples uniformly at random (with
replacement) on ``device`` with ``torch.randint``/``torch.randn`` from ``generator`` (a
``torch.Generator``) or the global RNG. There is no data loader and no host
synchronisation: a sample is a couple of kernel launches, so it can be captured in a CUDA
graph once the source's tensors are on the device (call ``sample`` once before capturing).
``device=None`` means the generator's device when one is given, else the device the
source's tensors already live on (toy mixtures: the default device). A sample is
reproducible given the generator's seed on one kind of device (CPU and CUDA generators
draw different streams).

Importing this module touches no GPU.

Toy mixtures (PacGAN, Lin et al. 2018, §5; VEEGAN, Srivastava et al. 2017)
----------------------------------------------------------------------------

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

Images
------

:func:`load_images` reads a folder of PNG/JPEG files, a single image file, or a ``.npy``/
``.npz`` array into one float32 tensor (N, C, size, size) in [−1, 1]; :class:`ImageDataset`
keeps such a tensor on the device and samples batches from it. Image files need Pillow
(``pip install pillow``); arrays do not.

The embedded ``shapes`` set (no download)
-----------------------------------------

Images (3, S, S) in [−1, 1], S = 32 by default, each one flat-coloured shape on a black
background. A mode is a (shape, colour) pair, ``mode = 6·shape + colour``: 4 × 6 = 24 modes,
drawn uniformly.

- shapes (:data:`SHAPE_NAMES`): ``circle`` (radius s), ``square`` (half side 0.9·s),
  ``triangle`` (equilateral, apex up, half side 1.2·s, centred on its centroid), ``plus``
  (arms of half length 1.1·s and half width 0.37·s), unrotated;
- colours (:data:`COLOUR_NAMES`, :data:`PALETTE`): red, yellow, green, cyan, blue, magenta,
  the six saturated colours whose channels are 0 or 1 (in [0, 1] units);
- jitter, all lengths in units of S/32 pixels: the size s ~ U[5, 8]; the centre ~ S/2 +
  U[−3, 3] on each axis, so every shape lies wholly inside the image.

The shapes are rendered analytically and antialiased: a pixel's coverage is
a = clamp(0.5 − d, 0, 1), where d is the signed distance (in pixels) from the pixel centre
to the shape's outline, and its colour is a·colour (so in [−1, 1] units 2·a·colour − 1).
Rendering is vectorised torch on the device (no PIL, no host synchronisation).

Exact detector (:func:`classify_shapes`). Because every palette colour has a maximum
channel of 1, the coverage map of a clean image is its per-pixel channel maximum A. The
detector reads, from A with faint values (below 0.1) ignored: the shape's area and centroid;
its colour, the coverage-weighted least-squares colour Σ a·x / Σ a² (exact for a clean
image), mapped to the nearest palette colour; then, for each of the four shapes, it renders
a template at that centroid with the size that reproduces the area (one refinement step),
and picks the shape whose template differs least from A (L1, relative to the area). It
reconstructs the image from the winner (template × palette colour) and flags it
high-quality when all of these hold:

- the estimated colour is within 0.25 of its palette colour in every channel;
- the reconstruction explains the image: the per-pixel, per-channel errors larger than 0.1
  (in [0, 1] units) add up to at most 12 % of the shape's area;
- the size and centre are within the generator's range (size within [5/1.15, 8·1.15], centre
  within 4.5 of the middle, in S/32 units): an off-distribution shape is not a clean sample.

On true samples the detector recovers every mode and flags every image high-quality (the
templates of different shapes with the same area and centroid differ by more than 25 % of
the area in L1; a true sample differs from its own template by a fraction of a percent).
Blank and noise images fail the size check and the reconstruction check.
:func:`fastgan.metrics.shapes_metrics` turns the detector's output into mode coverage.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "COLOUR_NAMES",
    "IMAGE_EXTENSIONS",
    "NUM_SHAPE_MODES",
    "PALETTE",
    "SHAPE_NAMES",
    "TOY_MIXTURES",
    "ImageDataset",
    "ShapesClassification",
    "ShapesDataset",
    "ToyMixture",
    "classify_shapes",
    "load_images",
    "render_shapes",
    "shape_mode_names",
    "toy_mixture",
]

DeviceLike = Union[str, torch.device, int, None]
PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


def _check_count(n, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    return int(n)


def _sample_device(device: DeviceLike, generator: Optional[torch.Generator], default: torch.device) -> torch.device:
    """The device to sample on: ``device``, else the generator's, else ``default``; a
    generator on another kind of device is an error (torch's own message is obscure)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if device is None:
        return torch.device(generator.device) if generator is not None else default
    device = torch.device(device)
    if generator is not None:
        gen = torch.device(generator.device)
        if gen.type != device.type or (gen.index is not None and device.index is not None and gen.index != device.index):
            raise ValueError(f"generator is on {gen} but samples were asked for on {device}; use a generator on {device}")
    return device


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cuda":
        ia = a.index if a.index is not None else torch.cuda.current_device()
        ib = b.index if b.index is not None else torch.cuda.current_device()
        return ia == ib
    return a.index == b.index or a.index is None or b.index is None


# --------------------------------------------------------------------------------------
# Toy mixtures
# --------------------------------------------------------------------------------------

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
        device = torch.device(device) if device is not None else torch.get_default_device()
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
        return torch.index_select(centres, 0, modes).addcmul_(noise, noise.new_tensor(self.std) if False else noise, value=0).add_(noise, alpha=self.std), modes

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


def toy_mixture(name: str) -> ToyMixture:
    """The embedded mixture ``name`` (one of :data:`TOY_MIXTURES`; see the module docstring).

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
