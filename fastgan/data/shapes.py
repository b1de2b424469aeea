"""The embedded ``shapes`` image set (no download) and its exact detector.

Images (3, S, S) in [−1, 1], S = 32 by default (S >= 24), each one flat-coloured shape on a
black background. A mode is a (shape, colour) pair, ``mode = 6·shape + colour``:
4 × 6 = 24 modes, drawn uniformly (:func:`shape_mode_names` names them).

- shapes (:data:`SHAPE_NAMES`): ``circle`` (radius s), ``square`` (half side 0.9·s),
  ``triangle`` (equilateral, apex up, half side 1.2·s, centred on its centroid), ``plus``
  (arms of half length 1.1·s and half width 0.37·s), unrotated;
- colours (:data:`COLOUR_NAMES`, :data:`PALETTE`): red, yellow, green, cyan, blue, magenta,
  the six saturated colours whose channels are 0 or 1 (in [0, 1] units);
- jitter, all lengths in units of S/32 pixels: the size s ~ U[5, 8]; the centre ~ S/2 +
  U[−3, 3] on each axis, so every shape lies wholly inside the image.

The shapes are rendered analytically and antialiased: a pixel of coverage a ∈ [0, 1] has
the colour a·colour (so 2·a·colour − 1 in [−1, 1] units). For the square and the plus, a is
the exact fraction of the pixel inside the shape; for the circle a = clamp(½ − d, 0, 1) with
d the signed distance (pixels) from the pixel centre to the outline; for the triangle the
least of that over its three edges. Rendering is vectorised torch on the sampling device
(no PIL, no host synchronisation); :func:`render_shapes` draws given parameters.

Exact detector (:func:`classify_shapes`). Every palette colour peaks at 1 in some channel,
so the coverage map of a clean image is its per-pixel channel maximum A. With faint values
removed, G = clamp((A − 0.1)/0.8, 0, 1) (which keeps the area of antialiased edges), the
detector measures the area and the centroid of G, and the colour as the coverage-weighted
least-squares fit Σ G·x / Σ G·A (exact for a clean image), matched to the nearest palette
colour (L∞). For each of the four shapes it renders a template at the centroid with the
size that has the measured area, and it takes the shape whose (faint-cut) template is
nearest to G in L1, relative to the area. The image is high-quality when all of these hold:

- the estimated colour is within 0.25 of its palette colour in every channel;
- the reconstruction (template × palette colour) explains the image: its per-pixel,
  per-channel errors beyond 0.1 (in [0, 1] units) add up to at most 12 % of the shape's area;
- the shape is unambiguous: the winning template fits at least twice as well (L1) as the
  next best shape's;
- the size and the centre are in the generator's range: size within [5/1.15, 8·1.15] and
  centre within 4.5 of the middle on each axis, in S/32 units;
- the image is finite.

Margins, measured on 20,000 true samples at S = 24, 32, 48 and 64: a true sample's
template error is at most about 5 % of its area, the other shapes' are at least 15 % (circle
against square, the closest pair), so every true sample is classified correctly and
flagged high-quality, and tests check that on thousands. Blank, gray and noise images fail;
so do a 50/50 blend of two shapes, or a colour 0.3 off the palette.
:func:`fastgan.metrics.shapes_metrics` turns the detector's output into mode coverage.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from fastgan.data._common import DeviceLike, _canonical, _check_count, _check_size, _sample_device

__all__ = [
    "COLOUR_NAMES",
    "NUM_SHAPE_MODES",
    "PALETTE",
    "SHAPE_NAMES",
    "ShapesClassification",
    "ShapesDataset",
    "classify_shapes",
    "render_shapes",
    "shape_mode_names",
]


SHAPE_NAMES = ("circle", "square", "triangle", "plus")
COLOUR_NAMES = ("red", "yellow", "green", "cyan", "blue", "magenta")
#: The six colours, (6, 3) in [0, 1] units (RGB); in [−1, 1] units: 2·PALETTE − 1.
PALETTE = torch.tensor(
    [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1]], dtype=torch.float32
)
NUM_SHAPE_MODES = len(SHAPE_NAMES) * len(COLOUR_NAMES)
_PALETTE_CACHE: dict[torch.device, Tensor] = {}

_REFERENCE_SIZE = 32  # lengths below are in units of size/32 pixels
_SCALE_RANGE = (5.0, 8.0)  # s ~ U[5, 8]
_JITTER = 3.0  # centre ~ size/2 + U[−3, 3] per axis
# Geometry per unit s: square half side, triangle half side, plus half length / half width.
_SQUARE = 0.9
_TRIANGLE = 1.2
_PLUS_LENGTH, _PLUS_WIDTH = 1.1, 0.37
# Area of each shape per s².
_AREA = (
    math.pi,
    (2 * _SQUARE) ** 2,
    math.sqrt(3) * _TRIANGLE**2,
    8 * _PLUS_LENGTH * _PLUS_WIDTH - 4 * _PLUS_WIDTH**2,
)
# Detector tolerances (see the module docstring).
_FAINT = 0.1  # coverage / error below this (in [0, 1] units) is ignored
_COLOUR_TOLERANCE = 0.25
_RESIDUAL_TOLERANCE = 0.12
_AMBIGUITY = 0.5  # the winning template must fit at least twice as well as any other
_SCALE_SLACK = 1.15
_CENTRE_TOLERANCE = _JITTER + 1.5
_DETECT_CHUNK = 1024
_MIN_SIZE = 24


def _palette_on(device: torch.device) -> Tensor:
    """PALETTE on ``device``, copied there once (a copy per call would block capture)."""
    device = _canonical(device)
    palette = _PALETTE_CACHE.get(device)
    if palette is None:
        palette = _PALETTE_CACHE[device] = PALETTE.to(device)
    return palette


def shape_mode_names() -> list[str]:
    """The 24 mode names in mode order (``mode = 6·shape + colour``): "red circle", ..."""
    return [f"{c} {s}" for s in SHAPE_NAMES for c in COLOUR_NAMES]


def _interval(t: Tensor, h: Tensor) -> Tensor:
    """Length of the overlap of the pixel [t − ½, t + ½] with [−h, h] (exact for h >= ½)."""
    return (h + 0.5 - t.abs()).clamp_(0, 1)


def _offsets(centre: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre offsets from ``centre`` (n, 2) = (x, y): px (n, 1, size), py (n, size, 1)
    (y pointing down), the image spanning [0, size] with pixel (i, j) at (j + ½, i + ½)."""
    grid = torch.arange(size, device=centre.device, dtype=torch.float32) + 0.5
    px = grid.view(1, 1, size) - centre[:, 0].view(-1, 1, 1)
    py = grid.view(1, size, 1) - centre[:, 1].view(-1, 1, 1)
    return px, py


def _coverage(kind: int, px: Tensor, py: Tensor, s: Tensor) -> Tensor:
    """Antialiased coverage (n, H, W) in [0, 1] of shape ``kind`` of size ``s`` (n,), centred
    where (px, py) = 0. Square and plus: the exact area of each pixel inside the shape
    (products of 1-D overlaps); circle: clamp(½ − d) of the signed distance d; triangle: the
    least of clamp(½ − d) over its three edges. Separable parts are computed on (n, W) and
    (n, H) vectors, so a shape costs a handful of full-size operations."""
    s = s.view(-1, 1, 1)
    if kind == 0:
        return (s + 0.5 - torch.sqrt(px.square() + py.square())).clamp_(0, 1)
    if kind == 1:
        h = _SQUARE * s
        return _interval(px, h) * _interval(py, h)
    if kind == 2:  # equilateral, apex up, centred on its centroid; inradius ρ = r/√3
        rho = _TRIANGLE * s / math.sqrt(3.0)
        base = (rho + 0.5 - py).clamp_(0, 1)  # edge below the centre, outward normal down
        # The two slanted edges: outward normals (±cos 30°, sin 30°) in y-up coordinates.
        side = (rho + 0.5) - 0.5 * (-py)  # (n, H, 1)
        c30 = math.sqrt(3.0) / 2
        right = (side - c30 * px).clamp_(0, 1)
        left = (side + c30 * px).clamp_(0, 1)
        return torch.minimum(torch.minimum(right, left), base)
    length, width = _PLUS_LENGTH * s, _PLUS_WIDTH * s
    lx, ly, wx, wy = _interval(px, length), _interval(py, length), _interval(px, width), _interval(py, width)
    return lx * wy + wx * ly - wx * wy


def render_shapes(shape: Tensor, colour: Tensor, centre: Tensor, scale: Tensor, size: int = 32) -> Tensor:
    """Renders images (n, 3, size, size) in [−1, 1] on the inputs' device.

    ``shape`` (n,) int64 index into :data:`SHAPE_NAMES`; ``colour`` (n,) int64 index into
    :data:`COLOUR_NAMES`; ``centre`` (n, 2) float, the shape's centre (x, y) in pixels, the
    image spanning [0, size] with pixel (i, j) centred at (j + 0.5, i + 0.5) (a triangle's
    centre is its centroid); ``scale`` (n,) float, the size s in pixels (the circle's
    radius; see the module docstring for the others).
    """
    size = _check_size(size)
    for name, t in (("shape", shape), ("colour", colour), ("centre", centre), ("scale", scale)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if shape.dim() != 1:
        raise ValueError(f"shape must have shape (n,), got {tuple(shape.shape)}")
    n = shape.shape[0]
    for name, t, want in (("colour", colour, (n,)), ("centre", centre, (n, 2)), ("scale", scale, (n,))):
        if tuple(t.shape) != want:
            raise ValueError(f"{name} must have shape {want} to match shape's (n,) = ({n},), got {tuple(t.shape)}")
    for name, t in (("shape", shape), ("colour", colour)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor of indices, got {t.dtype}")
    centre = centre.to(torch.float32)
    scale = scale.to(torch.float32)
    px, py = _offsets(centre, size)
    coverage = _coverage(0, px, py, scale)
    for kind in range(1, len(SHAPE_NAMES)):
        coverage = torch.where((shape == kind).view(-1, 1, 1), _coverage(kind, px, py, scale), coverage)
    rgb = _palette_on(centre.device)[colour]  # (n, 3)
    return (coverage.unsqueeze(1) * rgb.view(n, 3, 1, 1)).mul_(2).sub_(1)


class ShapesDataset:
    """The embedded ``shapes`` set (module docstring): 24 modes = 4 shapes × 6 colours.

    ``size``: image side (default 32; geometry scales with it). ``modes``: optionally a
    subset of mode indices in [0, 24) to draw from (uniformly), e.g. to build a collapsed
    distribution; default all 24. Images are rendered on the fly on the sampling device.
    """

    num_modes = NUM_SHAPE_MODES

    def __init__(self, size: int = 32, modes: Optional[Sequence[int]] = None) -> None:
        self.size = _check_size(size)
        if self.size < _MIN_SIZE:
            raise ValueError(f"size must be >= {_MIN_SIZE} for the shapes to be told apart exactly, got {size}")
        if modes is None:
            modes = range(NUM_SHAPE_MODES)
        modes = [int(m) for m in (modes.tolist() if isinstance(modes, Tensor) else modes)]
        if not modes or any(m < 0 or m >= NUM_SHAPE_MODES for m in modes):
            raise ValueError(f"modes must be a non-empty list of mode indices in [0, {NUM_SHAPE_MODES}), got {modes}")
        self.modes = tuple(modes)
        self._modes_cpu = torch.tensor(self.modes, dtype=torch.int64)
        self._cache: dict[torch.device, Tensor] = {}

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return (3, self.size, self.size)

    def sample_with_modes(
        self, n: int, device: DeviceLike = None, generator: Optional[torch.Generator] = None
    ) -> tuple[Tensor, Tensor]:
        """``(images (n, 3, size, size) float32 in [−1, 1], modes (n,) int64)``."""
        n = _check_count(n)
        device = _canonical(_sample_device(device, generator, torch.get_default_device()))
        table = self._cache.get(device)
        if table is None:
            table = self._cache[device] = self._modes_cpu.to(device)
        u = self.size / _REFERENCE_SIZE
        pick = torch.randint(len(self.modes), (n,), device=device, generator=generator)
        modes = torch.index_select(table, 0, pick)
        lo, hi = _SCALE_RANGE
        scale = torch.rand((n,), device=device, generator=generator).mul_((hi - lo) * u).add_(lo * u)
        centre = torch.rand((n, 2), device=device, generator=generator)
        centre = centre.mul_(2 * _JITTER * u).add_(self.size / 2 - _JITTER * u)
        ncol = len(COLOUR_NAMES)
        images = render_shapes(torch.div(modes, ncol, rounding_mode="floor"), modes % ncol, centre, scale, self.size)
        return images, modes

    def sample(self, n: int, device: DeviceLike = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """``n`` images (n, 3, size, size) float32 in [−1, 1]."""
        return self.sample_with_modes(n, device, generator)[0]

    def __repr__(self) -> str:
        which = "all 24 modes" if len(self.modes) == NUM_SHAPE_MODES else f"modes {list(self.modes)}"
        return f"ShapesDataset(size={self.size}, {which})"


class ShapesClassification(NamedTuple):
    """:func:`classify_shapes`'s answer: ``mode`` (N,) int64 = 6·shape + colour (the nearest
    mode, also for low-quality images), ``quality`` (N,) bool (a clean rendering of one
    shape in one palette colour within the generator's range)."""

    mode: Tensor
    quality: Tensor


def _faint_cut(a: Tensor) -> Tensor:
    """Coverage with faint values removed: (a − 0.1)/0.8 clamped to [0, 1] (area-preserving on
    antialiased edges, which ramp symmetrically around 0.5)."""
    return ((a - _FAINT) / (1 - 2 * _FAINT)).clamp_(0, 1)


def _classify_chunk(x: Tensor) -> tuple[Tensor, Tensor]:
    n, _, size, _ = x.shape
    device = x.device
    u = size / _REFERENCE_SIZE
    eps = 1e-6
    finite = torch.isfinite(x).flatten(1).all(1)
    x01 = torch.nan_to_num(x.float().add(1).mul_(0.5), nan=0.0, posinf=1.0, neginf=0.0).clamp_(0, 1)
    a = x01.amax(1)  # the coverage of a clean image (every palette colour peaks at 1)
    g = _faint_cut(a)
    area = g.sum((1, 2))
    safe_area = area.clamp_min(eps)
    grid = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    centre = torch.stack([g.sum(1) @ grid, g.sum(2) @ grid], 1) / safe_area.unsqueeze(1)
    # Colour: least squares of x = a·c over the foreground; exact for a clean rendering.
    colour_est = (g.unsqueeze(1) * x01).sum((2, 3)) / (g * a).sum((1, 2)).clamp_min(eps).unsqueeze(1)
    palette = _palette_on(device)
    colour_distance, colour = (colour_est.unsqueeze(1) - palette).abs().amax(2).min(1)
    # Template per shape at the centroid, sized to the measured area; the best fit wins.
    px, py = _offsets(centre, size)
    best_error = second_error = best_scale = template = None
    for kind in range(len(SHAPE_NAMES)):
        scale = torch.sqrt(area / _AREA[kind])
        coverage = _coverage(kind, px, py, scale)
        fit = _faint_cut(coverage)
        error = (g - fit).abs_().sum((1, 2)) / fit.sum((1, 2)).clamp_min(eps)
        if kind == 0:
            best_error, best_scale, shape, template = error, scale, torch.zeros_like(colour), coverage
            second_error = torch.full_like(error, math.inf)
        else:
            better = error < best_error
            second_error = torch.where(better, best_error, torch.minimum(second_error, error))
            best_error = torch.where(better, error, best_error)
            best_scale = torch.where(better, scale, best_scale)
            shape = torch.where(better, kind, shape)
            template = torch.where(better.view(-1, 1, 1), coverage, template)
    # Quality: the reconstruction (template × palette colour) explains the image.
    reconstruction = template.unsqueeze(1) * palette[colour].view(n, 3, 1, 1)
    residual = (x01 - reconstruction).abs_().sub_(_FAINT).clamp_min_(0).sum((1, 2, 3))
    residual = residual / template.sum((1, 2)).clamp_min(eps)
    lo, hi = _SCALE_RANGE
    offset = (centre - size / 2).abs().amax(1)
    quality = (
        finite
        & (colour_distance <= _COLOUR_TOLERANCE)
        & (residual <= _RESIDUAL_TOLERANCE)
        & (best_error <= _AMBIGUITY * second_error)
        & (best_scale >= lo * u / _SCALE_SLACK)
        & (best_scale <= hi * u * _SCALE_SLACK)
        & (offset <= _CENTRE_TOLERANCE * u)
    )
    return shape * len(COLOUR_NAMES) + colour, quality


def classify_shapes(images: Tensor) -> ShapesClassification:
    """Recovers each image's mode and whether it is a clean sample (module docstring).

    ``images``: (N, 3, S, S) floating, in [−1, 1] (values outside are clamped; a non-finite
    image is low-quality), S >= 16, as :class:`ShapesDataset` makes them (any S: geometry
    is read in units of S/32). Returns :class:`ShapesClassification` ``(mode (N,) int64,
    quality (N,) bool)`` on the images' device, computed without host synchronisation
    (batches of 1024 images at a time). ``shape = mode // 6``, ``colour = mode % 6``.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a Tensor (N, 3, S, S), got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must have shape (N, 3, S, S), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating tensor in [-1, 1], got {images.dtype}")
    if images.shape[2] < _MIN_SIZE:
        raise ValueError(
            f"images must be at least {_MIN_SIZE}x{_MIN_SIZE} pixels, got {images.shape[2]}x{images.shape[3]}"
        )
    images = images.detach()
    modes, quality = [], []
    with torch.no_grad():
        for start in range(0, images.shape[0], _DETECT_CHUNK):
            m, q = _classify_chunk(images[start : start + _DETECT_CHUNK])
            modes.append(m)
            quality.append(q)
    if not modes:
        empty = torch.empty((0,), dtype=torch.int64, device=images.device)
        return ShapesClassification(empty, empty.bool())
    return ShapesClassification(torch.cat(modes), torch.cat(quality))
