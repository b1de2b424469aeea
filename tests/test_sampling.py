"""Jacobian truncation (fastgan.sampling): exact and estimated Jacobian norms against
torch.func in float64, the sampler keeps exactly the smallest-norm latents in draw order,
and it removes the samples a continuous generator puts between two modes."""

import pytest
import torch
from torch import nn

from fastgan import models
from fastgan.sampling import EXACT_MAX_OUTPUTS, jacobian_norms, truncated_latents


def _mlp(latent, outputs, dtype=torch.float64):
    return nn.Sequential(nn.Linear(latent, 19), nn.Tanh(), nn.Linear(19, outputs)).to(dtype)


def _frobenius(generator, z):
    jacobians = torch.func.vmap(torch.func.jacrev(lambda v: generator(v[None])[0]))(z)
    return jacobians.flatten(1).norm(dim=1)


@pytest.mark.parametrize("latent,outputs", [(1, 1), (5, 2), (8, 3), (3, EXACT_MAX_OUTPUTS)])
def test_exact_norms_match_torch_func(latent, outputs):
    generator = _mlp(latent, outputs)
    z = torch.randn(37, latent, dtype=torch.float64) * 2 + 0.5
    torch.testing.assert_close(jacobian_norms(generator, z).double(), _frobenius(generator, z).float().double(),
                               rtol=1e-6, atol=1e-7)


def test_estimated_norms_for_large_outputs_are_unbiased():
    generator = _mlp(6, EXACT_MAX_OUTPUTS + 25)
    z = torch.randn(23, 6, dtype=torch.float64) - 0.3
    exact = _frobenius(generator, z)
    rng = torch.Generator().manual_seed(0)
    estimates = torch.stack([jacobian_norms(generator, z, probes=64, rng=rng).double() ** 2 for _ in range(8)])
    # 512 probes in all: the relative error of a squared-norm estimate is about sqrt(2/512) = 6 %.
    torch.testing.assert_close(estimates.mean(0), exact**2, rtol=0.2, atol=0)
    assert (estimates.std(0) > 0).all()  # really random probes, not the exact path


def test_truncation_keeps_the_smallest_norms_in_draw_order():
    generator = _mlp(4, 2, torch.float32)
    z = truncated_latents(generator, 50, 4, 0.7, rng=torch.Generator().manual_seed(3))
    drawn = torch.randn(72, 4, generator=torch.Generator().manual_seed(3))  # ceil(50 / 0.7) = 72
    norms = jacobian_norms(generator, drawn)
    expected = drawn[torch.sort(torch.topk(norms, 50, largest=False).indices).values]
    assert z.shape == (50, 4) and torch.equal(z, expected)
    plain = truncated_latents(generator, 50, 4, 1.0, rng=torch.Generator().manual_seed(3))
    assert torch.equal(plain, torch.randn(50, 4, generator=torch.Generator().manual_seed(3)))


class TwoModes(nn.Module):
    """Maps N(0, I) onto two modes at x = ±4 (std 0.05) with a steep linear ramp between them
    for |z_0| < 1/8 (10 % of the latent mass)."""

    latent_dim = 3

    def forward(self, z):
        return torch.stack([4 * torch.clamp(8 * z[:, 0], -1, 1) + 0.05 * z[:, 2], 0.05 * z[:, 1]], 1)


def test_truncation_removes_samples_between_modes():
    generator, rng = TwoModes(), torch.Generator().manual_seed(0)
    between = lambda x: (x[:, 0].abs() < 3.8).float().mean().item()  # noqa: E731  (beyond 4 std of a mode)
    raw = generator(torch.randn(4000, 3, generator=rng))
    truncated = generator(truncated_latents(generator, 4000, 3, 0.85, rng=rng))
    assert between(raw) > 0.07 and between(truncated) < 0.002
    assert abs((truncated[:, 0] > 0).float().mean().item() - 0.5) < 0.04  # both modes kept, balanced


def test_dcgan_generator_with_fused_blocks_gives_finite_norms():
    generator = models.DCGANGenerator(latent_dim=6, channels=3, image_size=32, width=4).eval()
    for module in generator.modules():
        if hasattr(module, "backend"):
            module.backend = "torch"
    z = torch.randn(3, 6)
    norms = jacobian_norms(generator, z, probes=4, rng=torch.Generator().manual_seed(1))
    assert norms.shape == (3,) and torch.isfinite(norms).all() and (norms > 0).all()


@pytest.mark.parametrize("keep", [0, -0.5, 1.5, True, "0.9"])
def test_bad_keep_is_named(keep):
    with pytest.raises(ValueError, match="keep must be a fraction in"):
        truncated_latents(_mlp(2, 2), 10, 2, keep)


def test_bad_probes_are_named():
    with pytest.raises(ValueError, match="probes must be a positive integer"):
        jacobian_norms(_mlp(2, 2), torch.randn(3, 2, dtype=torch.float64), probes=0)
