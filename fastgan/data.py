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
        indices_differ = gen.index is not None and device.index is not None and gen.index != device.index
        if gen.type != device.type or indices_differ:
            raise ValueError(
                f"generator is on {gen} but samples were asked for on {device}; use a generator on {device}"
            )
    return device


def _canonical(device: torch.device) -> torch.device:
    """``cuda`` -> ``cuda:<current>``, so that device caches have one key per device."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
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


# --------------------------------------------------------------------------------------
# Images: folders and arrays
# --------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
ARRAY_EXTENSIONS = (".npy", ".npz")
# ITU-R BT.601 luma, as Pillow's convert("L").
_LUMA = (0.299, 0.587, 0.114)
_ARRAY_CHUNK = 512  # images resized at once when loading an array


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    return int(size)


def _check_channels(channels) -> int:
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    return int(channels)


def _to_channels(x: Tensor, channels: int) -> Tensor:
    """(N, C, H, W) with C in {1, 3, 4} -> (N, channels, H, W): alpha dropped, RGB -> luma,
    gray replicated (replication is left to the caller's final expand)."""
    c = x.shape[1]
    if c == 4:
        x, c = x[:, :3], 3
    if channels == 1 and c == 3:
        w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * w).sum(1, keepdim=True)
    return x


def _finish(x01: Tensor, size: int, channels: int, center_crop: bool) -> Tensor:
    """(N, C, H, W) float32 in [0, 1] -> (N, channels, size, size) float32 in [−1, 1]."""
    x01 = _to_channels(x01, channels)
    if center_crop:
        h, w = x01.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x01 = x01[..., top : top + side, left : left + side]
    if tuple(x01.shape[-2:]) != (size, size):
        x01 = F.interpolate(x01, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = x01.clamp_(0, 1).mul_(2).sub_(1)
    if x.shape[1] != channels:  # gray -> RGB
        x = x.expand(-1, channels, -1, -1)
    return x.contiguous()


def _import_pil():
    try:
        from PIL import Image, ImageOps
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading PNG/JPEG files needs Pillow, which is not installed: pip install pillow "
            "(or give load_images a .npy/.npz array instead)"
        ) from err
    return Image, ImageOps


def _read_image_file(file: Path, size: int, channels: int, center_crop: bool) -> Tensor:
    """One image file -> (channels, size, size) float32 in [−1, 1]; ValueError naming the file."""
    Image, ImageOps = _import_pil()
    try:
        with Image.open(file) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit grayscale PNG
                arr = np.asarray(im, dtype=np.float32) / 65535.0
                arr = arr[..., None]
            else:
                if im.mode == "P":  # palette (possibly with transparency): via RGBA
                    im = im.convert("RGBA")
                im = im.convert("L" if channels == 1 else "RGB")
                arr = np.asarray(im, dtype=np.float32) / 255.0
                if arr.ndim == 2:
                    arr = arr[..., None]
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ValueError(f"cannot read image file {file}: {type(err).__name__}: {err}") from err
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"image file {file} is empty ({arr.shape[1]}x{arr.shape[0]} pixels)")
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).unsqueeze(0)
    return _finish(x, size, channels, center_crop)[0]


def _list_images(folder: Path, recursive: bool) -> list[Path]:
    walk = folder.rglob("*") if recursive else folder.iterdir()
    files = [
        p
        for p in walk
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    ]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _array_from_file(file: Path, key: Optional[str]) -> np.ndarray:
    try:
        if file.suffix.lower() == ".npy":
            if key is not None:
                raise ValueError(f"key={key!r} is only for .npz files")
            return np.load(file, mmap_mode="r", allow_pickle=False)  # read chunk by chunk
        with np.load(file, allow_pickle=False) as archive:
            names = list(archive.files)
            if key is None:
                if len(names) != 1:
                    listed = ", ".join(names) or "none"
                    raise ValueError(f"it holds {len(names)} arrays ({listed}); pass key= to pick one")
                key = names[0]
            elif key not in names:
                raise ValueError(f"it has no array {key!r}; it holds: {', '.join(names) or 'none'}")
            return archive[key]
    except Exception as err:
        raise ValueError(f"cannot read array file {file}: {type(err).__name__}: {err}") from err


def _array_to_images(arr: np.ndarray, file: Path, size: int, channels: int, center_crop: bool) -> Tensor:
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"array in {file} must have shape (N, H, W) or (N, H, W, C), got {arr.shape}")
    n, h, w, c = arr.shape
    if c not in (1, 3, 4):
        hint = "; it looks channels-first: transpose it to (N, H, W, C)" if arr.shape[1] in (1, 3, 4) else ""
        raise ValueError(f"array in {file} has shape {arr.shape}: the last axis must hold 1, 3 or 4 channels{hint}")
    if n == 0 or h == 0 or w == 0:
        raise ValueError(f"array in {file} holds no images (shape {arr.shape})")
    if arr.dtype == np.uint8:
        scale = 1.0 / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        scale = 1.0
        lo, hi = float(np.min(arr)), float(np.max(arr))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"array in {file} holds NaN or infinite values")
        if lo < -1e-6 or hi > 1 + 1e-6:
            hint = ""
            if lo >= -1 - 1e-6 and hi <= 1 + 1e-6:
                hint = " (it looks like [-1, 1] data: map it with (x + 1) / 2)"
            elif hi > 1.5 and lo >= 0:
                hint = " (it looks like [0, 255] data: convert it to uint8 or divide by 255)"
            raise ValueError(f"float array in {file} must hold values in [0, 1], got [{lo:.4g}, {hi:.4g}]{hint}")
    else:
        raise ValueError(f"array in {file} has dtype {arr.dtype}: expected uint8 in [0, 255] or float in [0, 1]")
    out = torch.empty((n, channels, size, size), dtype=torch.float32)
    for start in range(0, n, _ARRAY_CHUNK):
        chunk = torch.from_numpy(np.array(arr[start : start + _ARRAY_CHUNK]))  # a copy: arr may be a read-only memmap
        x = chunk.permute(0, 3, 1, 2).to(torch.float32)
        if scale != 1.0:
            x = x.mul_(scale)
        out[start : start + _ARRAY_CHUNK] = _finish(x, size, channels, center_crop)
    return out


def load_images(
    path: PathLike,
    size: int,
    channels: int = 3,
    *,
    recursive: bool = False,
    center_crop: bool = False,
    key: Optional[str] = None,
    workers: Optional[int] = None,
) -> Tensor:
    """Images from ``path`` as one tensor (N, channels, size, size), float32 in [−1, 1], on the CPU.

    ``path`` is one of:

    - a folder: its ``.png``/``.jpg``/``.jpeg`` files (any case) in sorted order of their
      relative paths; other files and hidden files are skipped; ``recursive=True`` walks
      subfolders too. Needs Pillow.
    - a single PNG/JPEG file (N = 1). Needs Pillow.
    - a ``.npy`` file, or a ``.npz`` file holding one array (or pass ``key``): shape (N, H, W)
      or (N, H, W, C), C in {1, 3, 4}, dtype uint8 with values in [0, 255] or float with
      values in [0, 1].

    Each image is converted to ``channels`` (1 or 3): an alpha channel is dropped (RGBA ->
    RGB), grayscale is replicated to RGB, RGB becomes luma 0.299R + 0.587G + 0.114B for
    ``channels=1``; 16-bit PNGs are scaled by 1/65535. With ``center_crop=True`` the
    largest centred square is cut out first (no distortion); otherwise non-square images
    are stretched. Then each is resized to ``size`` × ``size`` with
    ``F.interpolate(mode="bilinear", antialias=True)`` (an area-weighted triangle filter
    when shrinking) and mapped from [0, 1] to [−1, 1]. Image files of different sizes are
    fine. ``workers`` threads decode files (default: up to 8).

    Raises FileNotFoundError naming ``path`` if it does not exist; ValueError naming the
    folder if it holds no image files, and naming the file for a corrupt, unreadable or
    malformed file (bad shape, dtype or value range).
    """
    size = _check_size(size)
    channels = _check_channels(channels)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"image path {str(root)!r} does not exist")
    if root.is_dir():
        files = _list_images(root, recursive)
        if not files:
            nested = not recursive and any(
                p.suffix.lower() in IMAGE_EXTENSIONS for p in root.rglob("*") if p.is_file()
            )
            hint = "; its subfolders have some: pass recursive=True" if nested else ""
            raise ValueError(
                f"image folder {str(root)!r} holds no {'/'.join(e[1:].upper() for e in IMAGE_EXTENSIONS)} files{hint}"
            )
        if workers is None:
            workers = min(8, os.cpu_count() or 1)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1 or None, got {workers!r}")
        _import_pil()  # fail once, clearly, before any thread starts
        read = lambda f: _read_image_file(f, size, channels, center_crop)  # noqa: E731
        if workers > 1 and len(files) > 16:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                images = list(pool.map(read, files))
        else:
            images = [read(f) for f in files]
        return torch.stack(images)
    suffix = root.suffix.lower()
    if suffix in ARRAY_EXTENSIONS:
        return _array_to_images(_array_from_file(root, key), root, size, channels, center_crop)
    if suffix in IMAGE_EXTENSIONS:
        return _read_image_file(root, size, channels, center_crop).unsqueeze(0)
    raise ValueError(
        f"cannot load images from {str(root)!r}: expected a folder, a PNG/JPEG file or a .npy/.npz array"
    )


class ImageDataset:
    """A tensor of images (N, C, H, W) kept on one device, sampled in random batches.

    ``images`` should be a floating tensor in [−1, 1] (not checked: that would synchronise),
    such as :func:`load_images` returns; it is moved to ``device`` (default: where it is).
    ``sample`` indexes it with ``torch.randint`` on that device: no copy from the host.
    """

    def __init__(self, images: Tensor, device: DeviceLike = None) -> None:
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a Tensor (N, C, H, W), got {type(images).__name__}")
        if images.dim() != 4 or images.shape[0] < 1:
            raise ValueError(f"images must have shape (N, C, H, W) with N >= 1, got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be a floating tensor in [-1, 1], got {images.dtype}")
        self.images = images.detach().to(device) if device is not None else images.detach()

    @classmethod
    def from_path(
        cls,
        path: PathLike,
        size: int,
        channels: int = 3,
        *,
        device: DeviceLike = None,
        **kwargs,
    ) -> "ImageDataset":
        """:func:`load_images` (same arguments) then moved to ``device``."""
        return cls(load_images(path, size, channels, **kwargs), device)

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def shape(self) -> torch.Size:
        """(C, H, W) of one image."""
        return self.images.shape[1:]

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: DeviceLike) -> "ImageDataset":
        """Moves the images to ``device`` (in place) and returns self."""
        self.images = self.images.to(device)
        return self

    def shard(self, rank: int, world_size: int) -> "ImageDataset":
        """The images ``rank, rank + world_size, ...`` (every ``world_size``-th, a view): one
        process's disjoint share under data-parallel training. Every rank keeps at least one
        image, so ``world_size`` may not exceed ``len(self)``."""
        for value, name in ((world_size, "world_size"), (rank, "rank")):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size) and world_size >= 1, got rank={rank}, world_size={world_size}")
        if world_size > len(self):
            raise ValueError(f"cannot shard {len(self)} images over world_size={world_size} processes")
        return ImageDataset(self.images[rank::world_size])

    def sample(self, n: int, device: DeviceLike = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """``n`` images (n, C, H, W) drawn uniformly with replacement. A ``device`` (or a
        generator's device) other than the dataset's moves the dataset there first, once."""
        n = _check_count(n)
        device = _sample_device(device, generator, self.images.device)
        if not _same_device(device, self.images.device):
            self.to(device)
        index = torch.randint(len(self), (n,), device=self.images.device, generator=generator)
        return torch.index_select(self.images, 0, index)

    def __repr__(self) -> str:
        return f"ImageDataset({len(self)} images of shape {tuple(self.shape)}, device={self.device})"


# --------------------------------------------------------------------------------------
# The embedded "shapes" image set
# --------------------------------------------------------------------------------------

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
