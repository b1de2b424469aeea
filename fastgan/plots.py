"""Figures for a run directory, drawn with matplotlib: a scatter plot of 2-D samples with
the true mode centres, a grid of images, and the training curves of a run's ``log.jsonl``.

Each function draws one ``matplotlib.figure.Figure`` on its own Agg canvas and writes it as
a PNG; pyplot and its global figure registry are never used, so figures cannot leak into
one another and no display is needed. matplotlib is imported inside the functions, so
importing fastgan stays cheap.
"""

from __future__ import annotations

import json
import math
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["image_grid_png", "read_log", "scatter_png", "training_curves_png"]

_DPI = 100
_SAMPLE_COLOUR = "#1f4e8c"
_CENTRE_COLOUR = "#d62728"


def _figure(width_inches: float, height_inches: float):
    """A figure on its own Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_inches, height_inches), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _wrap(title: str, width_pixels: float) -> str:
    """``title`` broken into lines that fit ``width_pixels`` at the small font (about 6.5 px a
    character), at its " · " separators where it has them, else at spaces."""
    import textwrap

    limit = max(20, int(width_pixels / 6.5))
    if " · " not in title:
        return textwrap.fill(title, limit)
    lines = [""]
    for part in title.split(" · "):
        candidate = f"{lines[-1]} · {part}" if lines[-1] else part
        if len(candidate) <= limit or not lines[-1]:
            lines[-1] = candidate
        else:
            lines.append(part)
    return "\n".join(lines)


def _save(figure, path: str) -> None:
    figure.savefig(path, format="png", dpi=_DPI, facecolor="white")


def scatter_png(path: str, samples: Tensor, centres: Tensor, title: Optional[str] = None, size: int = 600) -> None:
    """Samples (n, 2) as small dots and the true centres (K, 2) as red crosses, on axes that
    frame the centres with a margin, with a legend and an optional title (e.g. the metrics).

    Non-finite samples are dropped; the legend counts them and the samples outside the frame.
    ``size``: the side of the PNG in pixels.
    """
    samples = samples.detach().double().cpu().numpy()
    centres = centres.detach().double().cpu().numpy()
    if samples.ndim != 2 or samples.shape[1] != 2:
        raise ValueError(f"samples must have shape (n, 2), got {samples.shape}")
    if centres.ndim != 2 or centres.shape[1] != 2 or centres.shape[0] < 1:
        raise ValueError(f"centres must have shape (K, 2) with K >= 1, got {centres.shape}")
    low, high = centres.min(0), centres.max(0)
    span = max(float((high - low).max()), 1e-6)
    middle = (low + high) / 2
    half = span * 0.5 + max(0.2 * span, 0.5)
    finite = np.isfinite(samples).all(1)
    shown = samples[finite]
    inside = (np.abs(shown - middle) <= half).all(1)
    notes = [f"{len(samples)} samples"]
    if (~inside).any():
        notes.append(f"{int((~inside).sum())} outside the frame")
    if (~finite).any():
        notes.append(f"{int((~finite).sum())} non-finite")

    figure = _figure(size / _DPI, size / _DPI)
    axes = figure.add_subplot()
    # The centres under the samples, so a mode's samples stay visible on its cross.
    axes.scatter(centres[:, 0], centres[:, 1], s=60, marker="x", color=_CENTRE_COLOUR, linewidths=1.5,
                 label=f"true centres ({len(centres)})", zorder=2)
    axes.scatter(shown[:, 0], shown[:, 1], s=4, color=_SAMPLE_COLOUR, alpha=0.5, linewidths=0,
                 label=", ".join(notes), zorder=3)
    axes.set_xlim(middle[0] - half, middle[0] + half)
    axes.set_ylim(middle[1] - half, middle[1] + half)
    axes.set_aspect("equal")
    axes.set_xlabel("x₁")
    axes.set_ylabel("x₂")
    axes.grid(True, linewidth=0.3, alpha=0.5)
    axes.legend(loc="upper right", fontsize="small", framealpha=0.9)
    if title:
        axes.set_title(_wrap(title, size), fontsize="small")
    _save(figure, path)


def _tile(images: Tensor, columns: int, pad: int) -> np.ndarray:
    """Images (N, C, H, W) in [−1, 1] → one (rows·(H+pad)+pad, columns·(W+pad)+pad, 3) array in [0, 1]."""
    images = images.detach().float().cpu().clamp(-1, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, _, height, width = images.shape
    rows = max(1, -(-n // columns))
    grid = torch.ones(3, rows * (height + pad) + pad, columns * (width + pad) + pad)
    for index in range(n):
        r, c = divmod(index, columns)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        grid[:, top:top + height, left:left + width] = (images[index] + 1) / 2
    return grid.permute(1, 2, 0).numpy()


def image_grid_png(path: str, images: Tensor, columns: int = 8, pad: int = 2, title: Optional[str] = None,
                   scale: int = 2) -> None:
    """Images (N, C, H, W) in [−1, 1] (C = 1 or 3) tiled into a grid with ``columns`` columns,
    each image pixel drawn as ``scale`` × ``scale`` PNG pixels, under an optional title."""
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 1:
        raise ValueError(f"images must be (N >= 1, 1 or 3, H, W), got {tuple(images.shape)}")
    columns = min(columns, images.shape[0])
    grid = _tile(images, columns, pad)
    width = grid.shape[1] * scale + 20
    title = _wrap(title, width) if title else ""
    title_inches = 0.1 + 0.2 * (title.count("\n") + 1) if title else 0.1
    figure = _figure(width / _DPI, grid.shape[0] * scale / _DPI + title_inches)
    axes = figure.add_subplot()
    axes.imshow(grid, interpolation="nearest")
    axes.set_axis_off()
    if title:
        axes.set_title(title, fontsize="small")
    _save(figure, path)


def read_log(path: str) -> list[dict]:
    """The records of a run's ``log.jsonl`` (one JSON object per line; blank lines skipped).
    A line that is not a JSON object is a ``ValueError`` naming the file and the line."""
    records = []
    with open(path) as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{path}, line {number}: not a JSON record ({error})") from None
            if not isinstance(record, dict) or not isinstance(record.get("step"), (int, float)):
                raise ValueError(f"{path}, line {number}: not a log record (an object with a step)")
            records.append(record)
    return records


def _series(records: Sequence[dict], key: str) -> np.ndarray:
    """The values of ``key`` over the records, NaN (a gap in the curve) where absent or null."""
    values = []
    for record in records:
        value = record.get(key)
        values.append(float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan)
    return np.asarray(values, dtype=np.float64)


_PANELS = (
    ("losses", (("d_loss", "D loss"), ("g_loss", "G loss"))),
    ("divergence estimate", (("divergence", "divergence"),)),
    ("discriminator outputs", (("d_real", "D(real)"), ("d_fake", "D(fake)"))),
)


def training_curves_png(path: str, records: Iterable[dict], title: Optional[str] = None) -> None:
    """Three panels over the training steps from log records (``LogRecord.as_dict()``, the
    lines of ``log.jsonl``): the D and G losses; the divergence telemetry; D(real) and D(fake)
    (mean sigmoid outputs). Missing or null values are gaps."""
    records = sorted(records, key=lambda record: record["step"])
    if not records:
        raise ValueError("training_curves_png needs at least one log record")
    steps = _series(records, "step")
    marker = "o" if len(records) <= 30 else None  # a few records: show the points themselves
    figure = _figure(7.0, 7.5)
    panels = figure.subplots(len(_PANELS), 1, sharex=True)
    for axes, (name, keys) in zip(panels, _PANELS):
        for key, label in keys:
            axes.plot(steps, _series(records, key), label=label, marker=marker, markersize=3, linewidth=1.2)
        axes.set_ylabel(name)
        axes.grid(True, linewidth=0.3, alpha=0.5)
        axes.legend(loc="best", fontsize="small")
    panels[-1].set_xlabel("step")
    if title:
        figure.suptitle(title, fontsize="medium")
    _save(figure, path)

