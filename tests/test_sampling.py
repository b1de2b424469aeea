"""fastgan.sampling. Jacobian truncation: exact and estimated Jacobian norms against
torch.func in float64, the sampler keeps exactly the smallest-norm latents in draw order,
and it removes the samples a continuous generator puts between two modes. The density-ratio
samplers (rejection, Metropolis–Hastings, SIR): on two Gaussians whose log-ratio is known
exactly, their output is p_data (moments, a KS or energy two-sample test that rejects the
generator alone) and their acceptance rates match the closed forms."""

import math

import pytest
import torch
from torch import nn

from fastgan import models
from fastgan.sampling import EXACT_MAX_OUTPUTS, jacobian_norms, sample, sample_models, truncated_latents


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


# --------------------------------------------------------------------------------------
# Density-ratio samplers, where the log-ratio is known exactly: p_g and p_data are Gaussians
# and the "discriminator" is log N(x; data) − log N(x; generator) in float64.
# --------------------------------------------------------------------------------------

class GaussianPair:
    """p_data = N(mean_data, cov_data), p_g = N(mean_g, cov_g) pushed from z ~ N(0, I), with
    cov_g − cov_data positive definite so r = log p_data/p_g is bounded above (a concave
    quadratic) and its maximum M is known in closed form."""

    def __init__(self, mean_data, cov_data, mean_g, cov_g):
        as64 = lambda v: torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
        self.data = torch.distributions.MultivariateNormal(as64(mean_data), as64(cov_data))
        self.model = torch.distributions.MultivariateNormal(as64(mean_g), as64(cov_g))
        self.latent_dim = self.data.mean.shape[0]
        precision_gap = torch.linalg.inv(self.data.covariance_matrix) - torch.linalg.inv(self.model.covariance_matrix)
        peak = torch.linalg.solve(precision_gap, torch.linalg.solve(self.data.covariance_matrix, self.data.mean)
                                  - torch.linalg.solve(self.model.covariance_matrix, self.model.mean))
        self.log_ratio_max = self.log_ratio(peak[None]).item()

    def generator(self, z):
        return self.model.mean + z.double() @ self.model.scale_tril.T

    def log_ratio(self, x):
        return self.data.log_prob(x) - self.model.log_prob(x)

    def data_samples(self, n, seed):
        z = torch.randn(n, self.latent_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        return self.data.mean + z @ self.data.scale_tril.T


ONE_D = GaussianPair([1.0], [[0.8**2]], [0.2], [[1.3**2]])
TWO_D = GaussianPair([0.5, -0.3], [[0.6, 0.25], [0.25, 0.4]], [0.0, 0.0], [[1.21, 0.0], [0.0, 1.21]])


def _grid_1d(points=20001):
    """A float64 quadrature grid over ±12 standard deviations of both 1-d Gaussians."""
    x = torch.linspace(-14.0, 16.0, points, dtype=torch.float64)[:, None]
    return x, x[1, 0] - x[0, 0]


def ks_pvalue(samples, cdf):
    """One-sample Kolmogorov–Smirnov test of 1-d samples against a continuous CDF: the
    asymptotic p-value with Stephens' small-sample correction."""
    x = samples.flatten().double().sort().values
    n = x.numel()
    F = cdf(x)
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    statistic = torch.maximum(ranks / n - F, F - (ranks - 1) / n).max().item()
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * statistic
    terms = [(-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, 101)]
    return min(1.0, max(0.0, 2 * sum(terms)))


def energy_pvalue(a, b, permutations=300, seed=0):
    """Energy-distance two-sample permutation test (Székely & Rizzo): the p-value of
    2E|A−B| − E|A−A'| − E|B−B'| among relabellings of the pooled samples."""
    pooled = torch.cat([a, b]).double()
    distances = torch.cdist(pooled, pooled)
    n, total = a.shape[0], pooled.shape[0]
    rng = torch.Generator().manual_seed(seed)
    labels = [torch.arange(total)] + [torch.randperm(total, generator=rng) for _ in range(permutations)]
    first = torch.zeros(total, len(labels), dtype=torch.float64)
    for column, order in enumerate(labels):
        first[order[:n], column] = 1.0
    second = 1.0 - first
    cross = (first * (distances @ second)).sum(0) / (n * (total - n))
    within_first = (first * (distances @ first)).sum(0) / (n * n)
    within_second = (second * (distances @ second)).sum(0) / ((total - n) ** 2)
    statistics = 2 * cross - within_first - within_second
    return ((statistics[1:] >= statistics[0]).sum().item() + 1) / (permutations + 1)


def _draw(pair, sampler, n, seed, **options):
    rng = torch.Generator().manual_seed(seed)
    return sample(pair.generator, pair.log_ratio, n, sampler=sampler, latent_dim=pair.latent_dim,
                  rng=rng, batch=1024, **options)


def _assert_moments(samples, pair, slack=1.0):
    """Mean and covariance within 4.5 standard errors of p_data's (slack > 1 widens them for
    SIR's resampling noise)."""
    n = samples.shape[0]
    cov = pair.data.covariance_matrix
    mean_error = (samples.mean(0) - pair.data.mean).abs()
    assert (mean_error < 4.5 * slack * (cov.diagonal() / n).sqrt()).all(), mean_error
    # Var of a sample covariance entry (Gaussian): (Σ_ij² + Σ_ii Σ_jj) / n.
    cov_error = (torch.cov(samples.T).reshape(cov.shape) - cov).abs()
    cov_se = ((cov**2 + torch.outer(cov.diagonal(), cov.diagonal())) / n).sqrt()
    assert (cov_error < 4.5 * slack * cov_se).all(), cov_error


SAMPLER_OPTIONS = {"rejection": {}, "mh": {"steps": 30}, "sir": {"pool": 40}}


@pytest.mark.parametrize("sampler", sorted(SAMPLER_OPTIONS))
def test_samplers_turn_1d_generator_into_the_data(sampler):
    pair = ONE_D
    result = _draw(pair, sampler, 4000, seed=11, **SAMPLER_OPTIONS[sampler])
    assert result.samples.shape == (4000, 1) and result.samples.dtype == torch.float64
    data_cdf = lambda x: torch.special.ndtr((x - pair.data.mean[0]) / pair.data.stddev[0])  # noqa: E731
    assert ks_pvalue(result.samples, data_cdf) > 0.01
    _assert_moments(result.samples, pair, slack=1.5 if sampler == "sir" else 1.0)
    # The test has the power to tell: the generator alone is rejected.
    raw = pair.generator(torch.randn(4000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(11)))
    assert ks_pvalue(raw, data_cdf) < 1e-6


@pytest.mark.parametrize("sampler", sorted(SAMPLER_OPTIONS))
def test_samplers_turn_2d_generator_into_the_data(sampler):
    pair = TWO_D
    result = _draw(pair, sampler, 1000, seed=5, **SAMPLER_OPTIONS[sampler])
    assert result.samples.shape == (1000, 2)
    reference = pair.data_samples(1000, seed=99)
    assert energy_pvalue(result.samples, reference) > 0.01
    _assert_moments(result.samples, pair, slack=1.5 if sampler == "sir" else 1.0)
    raw = pair.generator(torch.randn(1000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5)))
    assert energy_pvalue(raw, reference) < 0.01


@pytest.mark.parametrize("pair", [ONE_D, TWO_D], ids=["1d", "2d"])
def test_rejection_acceptance_rate_is_exp_minus_max_log_ratio(pair):
    # E_pg[exp(r − M)] = exp(−M) ∫ p_data = exp(−M).
    result = _draw(pair, "rejection", 6000, seed=3)
    assert pair.log_ratio_max - 1e-3 < result.log_ratio_max <= pair.log_ratio_max + 1e-12  # burn-in estimate of M
    examined = result.proposals - 10_000
    expected = math.exp(-pair.log_ratio_max)
    assert abs(result.acceptance - expected) < 4 * math.sqrt(expected * (1 - expected) / examined)
    assert 0.2 < expected < 0.9  # a rate that the check can tell from 0 or 1


def test_rejection_gamma_shift_matches_its_formula():
    pair = ONE_D
    x, dx = _grid_1d()
    shifted = pair.log_ratio(x) - pair.log_ratio_max
    exact = _draw(pair, "rejection", 3000, seed=4)
    assert torch.equal(_draw(pair, "rejection", 3000, seed=4, gamma=0.0).samples, exact.samples)
    for gamma in (0.7, -0.7):
        # acceptance = E_pg[σ(logit(exp(r − M)) − γ)], by quadrature.
        probability = torch.sigmoid(shifted - torch.log(-torch.expm1(shifted)) - gamma)
        expected = (pair.model.log_prob(x).exp() * probability).sum().item() * dx.item()
        result = _draw(pair, "rejection", 3000, seed=4, gamma=gamma)
        examined = result.proposals - 10_000
        assert abs(result.acceptance - expected) < 4 * math.sqrt(expected * (1 - expected) / examined)
    assert _draw(pair, "rejection", 3000, seed=4, gamma=0.7).acceptance < exact.acceptance


def test_mh_acceptance_rate_at_stationarity_matches_its_formula():
    # Chains started at p_data are stationary, so every step accepts with probability
    # E_{x~p_data, x'~p_g}[min(1, exp(r(x') − r(x)))] (2-d quadrature on a coarser grid).
    pair = ONE_D
    x, dx = _grid_1d(3001)
    r = pair.log_ratio(x)
    p_data, p_g = pair.data.log_prob(x).exp(), pair.model.log_prob(x).exp()
    move = torch.clamp((r[None, :] - r[:, None]).exp(), max=1.0)  # [current, proposal]
    expected = (p_data[:, None] * p_g[None, :] * move).sum().item() * dx.item() ** 2
    chains = 20_000
    result = _draw(pair, "mh", chains, seed=8, steps=5, initial=pair.data_samples(chains, seed=21))
    assert result.proposals == chains * 5
    # Each chain's mean acceptance over its steps has variance at most p(1 − p).
    assert abs(result.acceptance - expected) < 4 * math.sqrt(expected * (1 - expected) / chains)
    assert 0.2 < expected < 0.95


def test_mh_forgets_a_bad_start():
    pair = ONE_D
    start = torch.full((3000, 1), 6.0, dtype=torch.float64)  # 6 standard deviations out
    result = _draw(pair, "mh", 3000, seed=2, steps=40, initial=start)
    data_cdf = lambda x: torch.special.ndtr((x - pair.data.mean[0]) / pair.data.stddev[0])  # noqa: E731
    assert ks_pvalue(result.samples, data_cdf) > 0.01


def test_sir_effective_sample_fraction_matches_its_formula():
    # (Σw)² / (m Σw²) → (E_pg w)² / E_pg w² = 1 / E_pg[exp(2r)], E_pg[exp(2r)] = ∫ p_data² / p_g.
    pair = ONE_D
    x, dx = _grid_1d()
    expected = 1.0 / ((2 * pair.data.log_prob(x) - pair.model.log_prob(x)).exp().sum().item() * dx.item())
    result = _draw(pair, "sir", 2000, seed=6, pool=40)
    assert result.proposals == 80_000
    # Delta-method standard error of the ratio estimator, from an independent pool of the same size.
    w = pair.log_ratio(pair.generator(torch.randn(80_000, 1, dtype=torch.float64,
                                                   generator=torch.Generator().manual_seed(7)))).exp()
    first, second = w.mean(), (w**2).mean()
    influence = 2 * first / second * w - first**2 / second**2 * w**2
    standard_error = (influence.var() / w.numel()).sqrt().item()
    assert abs(result.acceptance - expected) < 4 * standard_error
    assert 0.2 < expected < 0.95


def test_sampler_none_and_jacobian_go_through_the_common_interface():
    generator = TwoModes()
    rng = lambda: torch.Generator().manual_seed(12)  # noqa: E731
    plain = sample(generator, None, 500, sampler="none", rng=rng())
    assert torch.equal(plain.samples, generator(torch.randn(500, 3, generator=rng()))) and plain.acceptance == 1.0
    truncated = sample(generator, None, 500, sampler="jacobian", keep=0.8, rng=rng())
    assert torch.equal(truncated.samples, generator(truncated_latents(generator, 500, 3, 0.8, rng=rng())))
    assert truncated.proposals == 625 and truncated.acceptance == 0.8


def test_samplers_accept_column_logits_and_keep_shapes():
    pair = TWO_D
    column = lambda x: pair.log_ratio(x)[:, None]  # noqa: E731  (a discriminator returning (N, 1))
    for sampler, options in SAMPLER_OPTIONS.items():
        result = sample(pair.generator, column, 37, sampler=sampler, latent_dim=2, batch=16, **options)
        assert result.samples.shape == (37, 2) and torch.isfinite(result.samples).all()
        assert sample(pair.generator, column, 0, sampler=sampler, latent_dim=2, **options).samples.shape == (0, 2)


def test_rejection_gives_up_with_a_clear_error():
    pair = ONE_D
    spiky = lambda x: torch.where(x[:, 0] > 5, 30.0, 0.0).double()  # noqa: E731  (M = 30: accepts ~1e-13)
    with pytest.raises(RuntimeError, match="rejection sampling accepted .* use the 'mh' or 'sir' sampler"):
        sample(pair.generator, spiky, 10, sampler="rejection", latent_dim=1, burn_in=100_000, max_proposals=5000)


@pytest.mark.parametrize("call,match", [
    (lambda p: sample(p.generator, p.log_ratio, 5, sampler="gibbs", latent_dim=1), "sampler must be one of"),
    (lambda p: sample(p.generator, None, 5, sampler="mh", latent_dim=1), "needs discriminator_log_ratio"),
    (lambda p: sample(p.generator, p.log_ratio, -1, sampler="sir", latent_dim=1), "n must be a non-negative"),
    (lambda p: sample(p.generator, p.log_ratio, 5, sampler="mh", latent_dim=1, steps=0), "steps must be"),
    (lambda p: sample(p.generator, p.log_ratio, 5, sampler="sir", latent_dim=1, pool=0), "pool must be"),
    (lambda p: sample(p.generator, p.log_ratio, 5, sampler="rejection", latent_dim=1, gamma=math.inf), "gamma must"),
    (lambda p: sample(p.generator, p.log_ratio, 5, sampler="mh", latent_dim=1, initial=torch.zeros(4, 1)),
     "initial must hold one starting sample per chain"),
    (lambda p: sample(p.generator, lambda x: torch.zeros(3), 5, sampler="sir", latent_dim=1),
     "discriminator_log_ratio must return shape"),
    (lambda p: sample(p.generator, lambda x: torch.full((x.shape[0],), math.nan), 5, sampler="mh", latent_dim=1),
     "discriminator_log_ratio returned NaN"),
    (lambda p: sample(p.generator, p.log_ratio, 5, sampler="rejection"), "latent_dim"),
    (lambda p: sample(p.generator, None, 5, sampler="none", latent_dim=1, pool=3), "takes no option"),
])
def test_bad_sampler_arguments_are_named(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(ONE_D)


def test_sample_models_uses_eval_mode_and_restores_it():
    generator = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    discriminator = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Linear(8, 1)).eval()
    generator.latent_dim = 3
    seen = []
    generator.register_forward_hook(lambda module, inputs, output: seen.append(module.training))
    result = sample_models(generator, discriminator, 40, sampler="sir", pool=3, rng=torch.Generator().manual_seed(0))
    assert result.samples.shape == (40, 2) and result.samples.dtype == torch.float32
    assert seen and not any(seen)  # every pass in eval mode: BatchNorm did not mix the samples
    assert generator.training and not discriminator.training  # modes restored
