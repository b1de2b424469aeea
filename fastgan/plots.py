"""PNG figures for a run directory, written without plotting libraries: a scatter plot of
2-D samples with the true mode centres, and a grid of images."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import torch
from torch import Tensor

__all__ = ["image_grid_png", "scatter_png", "write_png"]


def write_png(path: str, pixels: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as an 8-bit RGB PNG."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"pixels must be an (H, W, 3) uint8 array, got {pixels.dtype} {pixels.shape}")
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def scatter_png(path: str, samples: Tensor, centres: Tensor, size: int = 512) -> None:
    """Samples (n, 2) as dark dots, centres (K, 2) as red crosses, on a white square that
    frames the centres with a margin."""
    samples = samples.detach().double().cpu().numpy()
    centres = centres.detach().double().cpu().numpy()
    low, high = centres.min(0), centres.max(0)
    span = max(float((high - low).max()), 1e-6)
    middle = (low + high) / 2
    half = span * 0.5 + max(0.2 * span, 0.5)

    def to_pixels(points):
        unit = (points - middle) / (2 * half) + 0.5
        return np.stack([(unit[:, 0] * (size - 1)), ((1 - unit[:, 1]) * (size - 1))], 1).round().astype(np.int64)

    image = np.full((size, size, 3), 255, np.uint8)
    finite = np.isfinite(samples).all(1)
    xy = to_pixels(samples[finite])
    inside = (xy >= 0).all(1) & (xy < size).all(1)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        x, y = np.clip(xy[inside, 0] + dx, 0, size - 1), np.clip(xy[inside, 1] + dy, 0, size - 1)
        image[y, x] = (30, 60, 140)
    for cx, cy in to_pixels(centres):
        for offset in range(-5, 6):
            for x, y in ((cx + offset, cy), (cx, cy + offset)):
                if 0 <= x < size and 0 <= y < size:
                    image[y, x] = (220, 30, 30)
    write_png(path, image)


def image_grid_png(path: str, images: Tensor, columns: int = 8, pad: int = 2) -> None:
    """Images (N, C, H, W) in [−1, 1] (C = 1 or 3) tiled into a grid with ``columns`` columns."""
    images = images.detach().float().cpu().clamp(-1, 1)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, _, height, width = images.shape
    rows = max(1, -(-n // columns))
    grid = torch.ones(3, rows * (height + pad) + pad, columns * (width + pad) + pad)
    for index in range(n):
        r, c = divmod(index, columns)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        grid[:, top:top + height, left:left + width] = (images[index] + 1) / 2
    write_png(path, (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
