"""fastgan.plots: the run-directory figures, opened as PNGs and checked for size and content."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastgan import data, plots

Image = pytest.importorskip("PIL.Image")


def _rgb(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(np.int64)


def _near(pixels: np.ndarray, colour, tolerance: int = 40) -> np.ndarray:
    """Pixels within ``tolerance`` of ``colour`` in every channel."""
    return (np.abs(pixels - np.asarray(colour)) <= tolerance).all(-1)


def _not_white(pixels: np.ndarray) -> int:
    return int((pixels < 250).any(-1).sum())


def test_scatter_draws_the_samples_the_centres_and_the_title(tmp_path):
    mixture = data.toy_mixture("grid25")
    samples = mixture.sample(2500, generator=torch.Generator().manual_seed(1))
    samples[:3] = float("nan")  # dropped, not an error
    plots.scatter_png(str(tmp_path / "with.png"), samples, mixture.centres, title="grid25 · modes 25/25")
    plots.scatter_png(str(tmp_path / "untitled.png"), samples, mixture.centres)
    plots.scatter_png(str(tmp_path / "without.png"), samples[:0], mixture.centres)
    with_samples, without = _rgb(tmp_path / "with.png"), _rgb(tmp_path / "without.png")
    assert with_samples.shape == without.shape == (600, 600, 3)
    assert _not_white(with_samples) > 2000  # axes, ticks, legend and points
    assert _near(without, (214, 39, 40)).sum() > 25 * 20, "the 25 centre crosses"
    assert _near(with_samples, (214, 39, 40)).sum() > 25 * 4, "the crosses' arms show around the samples"
    # The samples are drawn (blue) where the centres are: many more blue pixels than without them.
    blue_with = _near(with_samples, (143, 166, 197), 60).sum()  # the sample colour at half alpha on white
    blue_without = _near(without, (143, 166, 197), 60).sum()
    assert blue_with > blue_without + 500
    # The title is drawn: the top rows change when one is given.
    assert (with_samples[:25] != _rgb(tmp_path / "untitled.png")[:25]).any(-1).sum() > 200


def test_image_grid_shows_the_images(tmp_path):
    colours = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    images = colours[torch.arange(12) % 3].view(12, 3, 1, 1).expand(12, 3, 16, 16).contiguous()
    path = str(tmp_path / "grid.png")
    plots.image_grid_png(path, images, columns=4, pad=2, title="three colours", scale=2)
    pixels = _rgb(path)
    grid_height, grid_width = 3 * 18 + 2, 4 * 18 + 2
    assert pixels.shape[0] >= 2 * grid_height and pixels.shape[1] >= 2 * grid_width
    for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255)):
        count = _near(pixels, colour, 8).sum()
        assert count >= 4 * (16 * 2 - 2) ** 2, (colour, count)  # four images of each colour, 2× scaled
    gray = torch.zeros(5, 1, 8, 8)  # one channel, value 0 → mid gray
    plots.image_grid_png(str(tmp_path / "gray.png"), gray)
    assert _near(_rgb(tmp_path / "gray.png"), (128, 128, 128), 2).sum() >= 5 * (8 * 2 - 2) ** 2
    with pytest.raises(ValueError, match="images must be"):
        plots.image_grid_png(path, torch.zeros(2, 2, 8, 8))


def _records(n=40):
    return [dict(step=10 * i, d_loss=1.3 + 0.1 * math.sin(i), g_loss=0.7 + 0.1 * math.cos(i),
                 divergence=0.5 / i, d_real=0.5 + i / 400, d_fake=0.5 - i / 400) for i in range(1, n + 1)]


def test_training_curves_have_three_panels_of_lines(tmp_path):
    records = _records()
    records[5]["d_loss"] = None  # strict JSON's undefined number: a gap, not an error
    path = str(tmp_path / "training.png")
    plots.training_curves_png(path, records, title="grid25")
    pixels = _rgb(path)
    assert pixels.shape == (750, 700, 3)
    blue, orange = _near(pixels, (31, 119, 180), 30), _near(pixels, (255, 127, 14), 30)
    assert blue.sum() > 1000 and orange.sum() > 1000
    # A line in each of the three panels: blue pixels in the top, middle and bottom thirds.
    rows = np.nonzero(blue.any(1))[0]
    assert all(((rows >= a) & (rows < b)).any() for a, b in ((0, 250), (250, 500), (500, 750)))
    with pytest.raises(ValueError, match="at least one"):
        plots.training_curves_png(path, [])


def test_read_log_reads_records_and_names_a_bad_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in _records(3)) + "\n")
    assert [r["step"] for r in plots.read_log(str(log))] == [10, 20, 30]
    log.write_text(json.dumps(_records(1)[0]) + "\n{\"step\": 20, \"d_lo\n")
    with pytest.raises(ValueError, match=r"log.jsonl, line 2: not a JSON record"):
        plots.read_log(str(log))
    log.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="line 1: not a log record"):
        plots.read_log(str(log))


def test_figures_leave_no_pyplot_state_and_import_fastgan_stays_light(tmp_path):
    code = (
        "import sys, torch\n"
        "import fastgan, fastgan.cli, fastgan.plots\n"
        "assert 'matplotlib' not in sys.modules\n"
        "m = fastgan.data.toy_mixture('ring8')\n"
        f"fastgan.plots.scatter_png({str(tmp_path / 'a.png')!r}, m.sample(100), m.centres)\n"
        "assert 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
