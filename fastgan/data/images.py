"""Images from folders, image files and arrays.

:func:`load_images` reads a folder of PNG/JPEG files, a single image file, or a ``.npy``/
``.npz`` array into one float32 tensor (N, C, size, size) in [−1, 1]; :class:`ImageDataset`
keeps such a tensor on the device and samples batches from it. Image files need Pillow
(``pip install pillow``); arrays do not.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fastgan.data._common import DeviceLike, PathLike, _check_count, _check_size, _same_device, _sample_device

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "load_images",
]


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
ARRAY_EXTENSIONS = (".npy", ".npz")
# ITU-R BT.601 luma, as Pillow's convert("L").
_LUMA = (0.299, 0.587, 0.114)
_ARRAY_CHUNK = 512  # images resized at once when loading an array


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
