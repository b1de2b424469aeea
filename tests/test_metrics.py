"""fastgan.metrics: the VEEGAN/PacGAN mode-coverage protocol against a float64 loop written
from its definition, its statistics on true and collapsed mixtures, and the shapes metrics."""

import math

import numpy as np
import pytest
import torch

from fastgan import metrics
from fastgan.data import TOY_MIXTURES, ShapesDataset, ToyMixture, toy_mixture
from fastgan.metrics import ShapesMetrics, ToyMetrics, assign_toy_modes, mode_histogram, shapes_metrics, toy_metrics

HQ_TRUE = 1 - math.exp(-4.5)  # P(‖N(0, σ²I₂)‖ < 3σ) = P(χ²₂ < 9)
N = 2500


def gen(seed):
    return torch.Generator().manual_seed(seed)


def protocol64(samples, centres, std, min_count=20, threshold=3.0):
    """The protocol, naively in float64: nearest centre, within threshold·σ, histogram, KL."""
    x = np.asarray(samples, dtype=np.float64)
    c = np.asarray(centres, dtype=np.float64)
    k = len(c)
    counts = np.zeros(k, dtype=np.int64)
    for point in x:
        distances = np.sqrt(((point - c) ** 2).sum(1))
        j = int(np.argmin(distances))
        if distances[j] < threshold * std:
            counts[j] += 1
    total = counts.sum()
    kl = float("nan") if total == 0 else sum(n / total * math.log(n / total * k) for n in counts if n > 0)
    return (int((counts > 0).sum()), int((counts >= min_count).sum()), total / len(x), kl, k), counts


def check_against_reference(got, want):
    assert got[:2] == want[:2] and got.num_modes == want[4]
    assert got.high_quality == pytest.approx(want[2], abs=1e-12)
    if math.isnan(want[3]):
        assert math.isnan(got.reverse_kl)
    else:
        assert got.reverse_kl == pytest.approx(want[3], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", TOY_MIXTURES)
def test_true_samples_cover_every_mode(name):
    mix = toy_mixture(name)
    x = mix.sample(N, generator=gen(2024))
    got = toy_metrics(x, name)
    want, counts = protocol64(x, mix.centres, mix.std)
    check_against_reference(got, want)
    k = mix.num_modes
    assert got.modes == k and got.num_modes == k
    # grid100 expects 25 per mode, so some modes fall short of 20; the others expect >= 100.
    assert got.modes_strict == (k if k <= 25 else int((counts >= 20).sum()))
    se = math.sqrt(HQ_TRUE * (1 - HQ_TRUE) / N)
    assert abs(got.high_quality - HQ_TRUE) < 4 * se
    # A multinomial histogram's KL to uniform is about χ²_{K−1}/(2n): mean (K−1)/2n.
    n_hq = got.high_quality * N
    assert 0 <= got.reverse_kl < ((k - 1) + 5 * math.sqrt(2 * (k - 1))) / (2 * n_hq)


@pytest.mark.parametrize("name", TOY_MIXTURES)
def test_collapsed_generator_covers_three_modes(name):
    mix = toy_mixture(name)
    picked = [0, mix.num_modes // 2, mix.num_modes - 1]
    collapsed = ToyMixture("collapsed", mix.centres[picked], mix.std)
    x = collapsed.sample(N, generator=gen(1))
    got = toy_metrics(x, mix)
    check_against_reference(got, protocol64(x, mix.centres, mix.std)[0])
    assert got.modes == 3 and got.modes_strict == 3
    assert abs(got.high_quality - HQ_TRUE) < 4 * math.sqrt(HQ_TRUE * (1 - HQ_TRUE) / N)
    # log(K/3) plus the near-uniform 3-mode histogram's own small KL.
    assert math.log(mix.num_modes / 3) <= got.reverse_kl < math.log(mix.num_modes / 3) + 0.01


def test_noise_is_low_quality():
    grid = toy_mixture("grid25")
    uniform = torch.rand((N, 2), generator=gen(3)) * 10 - 5  # over the whole grid
    got = toy_metrics(uniform, grid)
    check_against_reference(got, protocol64(uniform, grid.centres, grid.std)[0])
    # Expected fraction: 25 discs of radius 3σ = 0.15 in a 10 x 10 square, 1.8 %.
    assert got.high_quality < 0.05 and got.modes_strict == 0
    far = torch.randn((N, 2), generator=gen(4)) + 100
    got = toy_metrics(far, grid)
    assert (got.modes, got.modes_strict, got.high_quality, got.num_modes) == (0, 0, 0.0, 25)
    assert math.isnan(got.reverse_kl)  # no high-quality sample: the mode distribution is undefined
    blurred = toy_mixture("ring8").sample(N, generator=gen(5)) * 1.05  # radius 1.05: 5σ off
    assert toy_metrics(blurred, "ring8").high_quality < 0.05  # P(‖z + 5e₁‖ < 3) ≈ 2 %


def test_thresholds_are_exact():
    grid = toy_mixture("grid25")
    sigma = grid.std
    centre = grid.centres[7].float()
    inside = centre + torch.tensor([2.99 * sigma, 0.0])
    outside = centre + torch.tensor([0.0, -3.01 * sigma])
    mode, hq = assign_toy_modes(torch.stack([centre, inside, outside]), grid)
    assert mode.tolist() == [7, 7, 7] and hq.tolist() == [True, True, False]
    _, hq = assign_toy_modes(torch.stack([centre, inside, outside]), grid, threshold=2.0)
    assert hq.tolist() == [True, False, False]
    # modes_strict counts modes with >= min_count high-quality samples: 19 vs 20.
    points = torch.cat([grid.centres[0].expand(19, 2), grid.centres[1].expand(20, 2), grid.centres[2].expand(21, 2)])
    got = toy_metrics(points.float(), grid)
    assert (got.modes, got.modes_strict) == (3, 2)
    assert toy_metrics(points.float(), grid, min_count=21).modes_strict == 1
    p = torch.tensor([19, 20, 21], dtype=torch.float64) / 60
    assert got.reverse_kl == pytest.approx((p * torch.log(p * 25)).sum().item(), rel=1e-12)
    # A perfectly balanced histogram has zero KL.
    assert toy_metrics(grid.centres.float().repeat(4, 1), grid).reverse_kl == 0.0


def test_nan_samples_blocks_and_dtypes(monkeypatch):
    mix = toy_mixture("grid100")
    x = mix.sample(N, generator=gen(6))
    x[::7] = float("nan")
    want = protocol64(x, mix.centres, mix.std)[0]
    check_against_reference(toy_metrics(x, mix), want)
    monkeypatch.setattr(metrics, "_BLOCK", 1000)  # 10 samples per block: the blocked path
    check_against_reference(toy_metrics(x, mix), want)
    monkeypatch.undo()
    y = mix.sample(N, generator=gen(7))
    base = toy_metrics(y, mix)
    assert toy_metrics(y.double(), mix) == base
    half = toy_metrics(y.bfloat16(), mix)  # rounding moves a few samples across 3σ, no more
    assert half.modes == base.modes and abs(half.high_quality - base.high_quality) < 0.05


def test_result_types_and_errors():
    got = toy_metrics(toy_mixture("ring8").sample(100, generator=gen(0)), "ring8")
    assert isinstance(got, ToyMetrics) and isinstance(got.modes, int) and isinstance(got.reverse_kl, float)
    assert got.as_dict() == {
        "modes": got.modes,
        "modes_strict": got.modes_strict,
        "high_quality": got.high_quality,
        "reverse_kl": got.reverse_kl,
        "num_modes": 8,
    }
    with pytest.raises(ValueError, match=r"samples must have shape \(n, 2\), got \(5, 3\)"):
        toy_metrics(torch.zeros(5, 3), "ring8")
    with pytest.raises(ValueError, match="samples is empty"):
        toy_metrics(torch.zeros(0, 2), "ring8")
    with pytest.raises(TypeError, match="samples must be a floating tensor"):
        toy_metrics(torch.zeros(5, 2, dtype=torch.int64), "ring8")
    with pytest.raises(ValueError, match="min_count must be an int >= 1"):
        toy_metrics(torch.zeros(5, 2), "ring8", min_count=0)
    with pytest.raises(ValueError, match="threshold must be"):
        toy_metrics(torch.zeros(5, 2), "ring8", threshold=-1.0)
    with pytest.raises(ValueError, match="unknown toy mixture"):
        toy_metrics(torch.zeros(5, 2), "ring9")
    with pytest.raises(TypeError, match="mixture must be a ToyMixture"):
        toy_metrics(torch.zeros(5, 2), 8)


def test_mode_histogram_counts_high_quality_only():
    mode = torch.tensor([0, 2, 2, 1, 2, 0])
    hq = torch.tensor([True, True, False, False, True, True])
    assert mode_histogram(mode, hq, 4).tolist() == [2, 0, 2, 0]
    with pytest.raises(ValueError, match="same length"):
        mode_histogram(mode, hq[:3], 4)


# --------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------


def test_shapes_metrics_on_true_collapsed_and_blank_images():
    images = ShapesDataset().sample(N, generator=gen(8))
    got = shapes_metrics(images)
    assert isinstance(got, ShapesMetrics)
    assert (got.modes, got.modes_strict, got.high_quality, got.num_modes) == (24, 24, 1.0, 24)
    assert 0 <= got.reverse_kl < (23 + 5 * math.sqrt(46)) / (2 * N)
    assert set(got.as_dict()) == {"modes", "modes_strict", "high_quality", "reverse_kl", "num_modes"}

    collapsed = ShapesDataset(modes=[0, 9, 23]).sample(600, generator=gen(9))
    got = shapes_metrics(collapsed)
    assert (got.modes, got.modes_strict, got.high_quality) == (3, 3, 1.0)
    assert math.log(8) <= got.reverse_kl < math.log(8) + 0.02

    half_blank = torch.cat([collapsed[:300], -torch.ones(300, 3, 32, 32)])
    got = shapes_metrics(half_blank, min_count=90)
    assert got.modes == 3 and got.high_quality == 0.5 and got.modes_strict <= 3
    got = shapes_metrics(-torch.ones(10, 3, 32, 32))
    assert (got.modes, got.modes_strict, got.high_quality) == (0, 0, 0.0) and math.isnan(got.reverse_kl)
    with pytest.raises(ValueError, match="images is empty"):
        shapes_metrics(torch.zeros(0, 3, 32, 32))
