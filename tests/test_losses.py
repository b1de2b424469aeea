"""fastgan.losses against float64 textbook formulas, and against the divergences they claim
to estimate on Gaussians with known log ratios."""

import math

import pytest
import torch

from fastgan import losses
from fastgan.losses import F_DIVERGENCES, SATURATION_THRESHOLD

LOG2 = math.log(2.0)


# --------------------------------------------------------------------------------------
# Textbook formulas, float64, written naively from the papers (moderate logits only).
# --------------------------------------------------------------------------------------


def sigmoid(v):
    return 1 / (1 + torch.exp(-v))


# f-GAN: (T = g_f(v), f*(t)) in the t domain, as in Nowozin et al.'s Table 6.
TEXTBOOK_F = {
    "kl": (lambda v: v, lambda t: torch.exp(t - 1)),
    "reverse-kl": (lambda v: -torch.exp(-v), lambda t: -1 - torch.log(-t)),
    "pearson": (lambda v: v, lambda t: t * t / 4 + t),
    "hellinger": (lambda v: 1 - torch.exp(-v), lambda t: t / (1 - t)),
    "js": (lambda v: LOG2 - torch.log(1 + torch.exp(-v)), lambda t: -torch.log(2 - torch.exp(t))),
    "gan": (lambda v: -torch.log(1 + torch.exp(-v)), lambda t: -torch.log(1 - torch.exp(t))),
}


def fgan_discriminator64(div):
    activation, conjugate = TEXTBOOK_F[div]
    return lambda real, fake: -(activation(real).mean() - conjugate(activation(fake)).mean())


def fgan_generator64(div, saturating):
    activation, conjugate = TEXTBOOK_F[div]
    if saturating:
        return lambda fake: -conjugate(activation(fake)).mean()
    return lambda fake: -activation(fake).mean()


def forward_kl64(fake):
    w = torch.exp(fake) / torch.exp(fake).sum()
    return (w * torch.log(fake.numel() * w)).sum()


def renyi64(alpha):
    def loss(fake):
        if alpha == 1.0:
            return -fake.mean()
        return (torch.log(torch.exp((1 - alpha) * fake).mean())) / (alpha - 1)

    return loss


DISCRIMINATOR_CASES = {
    "bce": lambda real, fake: -torch.log(sigmoid(real)).mean() - torch.log(1 - sigmoid(fake)).mean(),
    "hinge": lambda real, fake: torch.clamp(1 - real, min=0).mean() + torch.clamp(1 + fake, min=0).mean(),
    "lsgan": lambda real, fake: 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean(),
    "wgan": lambda real, fake: fake.mean() - real.mean(),
    **{f"fgan-{div}": fgan_discriminator64(div) for div in TEXTBOOK_F},
}

# (name, params) -> float64 formula of the fake logits
GENERATOR_CASES = {
    ("minimax", ()): lambda fake: torch.log(1 - sigmoid(fake)).mean(),
    ("nonsaturating", ()): lambda fake: -torch.log(sigmoid(fake)).mean(),
    ("reverse_kl", ()): lambda fake: -fake.mean(),
    ("forward_kl", ()): forward_kl64,
    **{("renyi", (("alpha", a),)): renyi64(a) for a in (0.0, 0.25, 0.5, 0.999999, 1.0, 1.000001, 2.0, 10.0)},
    ("hinge", ()): lambda fake: -fake.mean(),
    ("wgan", ()): lambda fake: -fake.mean(),
    ("lsgan", ()): lambda fake: 0.5 * ((fake - 1) ** 2).mean(),
    **{(f"fgan-{d}", ()): fgan_generator64(d, False) for d in TEXTBOOK_F},
    **{(f"fgan-{d}", (("saturating", True),)): fgan_generator64(d, True) for d in TEXTBOOK_F},
}


def case_id(case):
    name, params = case
    return name + "".join(f"[{k}={v}]" for k, v in params)


def logits(shape, device, dtype=torch.float32, mean=0.4, scale=1.5):
    return (torch.randn(shape, device=device, dtype=torch.float64) * scale + mean).to(dtype)


SHAPE_PAIRS = [((1,), (1,)), ((37, 1), (29,)), ((5, 3, 7), (2, 9, 1)), ((300,), (301, 1))]


def expected_generator_grad(name, fake64, formula):
    """d loss / d fake in float64. forward_kl's gradient is by design the reweighted one,
    −softmax(r), not the derivative of its value (see fastgan.losses)."""
    if name == "forward_kl":
        return -torch.softmax(fake64.reshape(-1), 0).reshape(fake64.shape)
    f = fake64.clone().requires_grad_()
    (g,) = torch.autograd.grad(formula(f), f)
    return g


# --------------------------------------------------------------------------------------
# Values and gradients against the formulas, every backend
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shapes", SHAPE_PAIRS, ids=str)
@pytest.mark.parametrize("name", sorted(DISCRIMINATOR_CASES))
def test_discriminator_losses_match_float64(backend, device, name, shapes):
    real = logits(shapes[0], device, mean=0.6).requires_grad_()
    fake = logits(shapes[1], device, mean=-0.3).requires_grad_()
    out = losses.get(name, role="discriminator", backend=backend)(real, fake)
    grads = torch.autograd.grad(out.loss, (real, fake))
    r64, f64 = (t.detach().double().requires_grad_() for t in (real, fake))
    want = DISCRIMINATOR_CASES[name](r64, f64)
    want_grads = torch.autograd.grad(want, (r64, f64))
    assert out.loss.shape == () and out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss.double(), want, rtol=2e-5, atol=2e-6)
    for got, ref in zip(grads, want_grads):
        torch.testing.assert_close(got.double(), ref, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("shapes", SHAPE_PAIRS[1:], ids=str)
@pytest.mark.parametrize("case", sorted(GENERATOR_CASES), ids=case_id)
def test_generator_losses_match_float64(backend, device, case, shapes):
    name, params = case
    fake = logits(shapes[1], device, mean=-0.3).requires_grad_()
    loss = losses.get(name, role="generator", backend=backend, **dict(params))
    out = loss(fake)
    (grad,) = torch.autograd.grad(out.loss, fake)
    f64 = fake.detach().double()
    formula = GENERATOR_CASES[case]
    want = formula(f64)
    # The float64 Rényi definition loses ~1e-16·log N/|α−1| near α = 1.
    slack = 0.0 if params != (("alpha", 0.999999),) and params != (("alpha", 1.000001),) else 1e-8
    torch.testing.assert_close(out.loss.double(), want, rtol=2e-5, atol=2e-6 + slack)
    torch.testing.assert_close(grad.double(), expected_generator_grad(name, f64, formula), rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(DISCRIMINATOR_CASES))
def test_discriminator_reference_gradcheck(name):
    real = logits((6,), "cpu", torch.float64).requires_grad_()
    fake = logits((5, 1), "cpu", torch.float64).requires_grad_()
    loss = losses.get(name, role="discriminator", backend="torch")
    assert torch.autograd.gradcheck(lambda a, b: loss(a, b, telemetry=False).loss, (real, fake))
    assert torch.autograd.gradgradcheck(lambda a, b: loss(a, b, telemetry=False).loss, (real, fake))


@pytest.mark.parametrize("case", sorted(c for c in GENERATOR_CASES if c[0] != "forward_kl"), ids=case_id)
def test_generator_reference_gradcheck(case):
    name, params = case
    fake = logits((7,), "cpu", torch.float64).requires_grad_()
    loss = losses.get(name, role="generator", backend="torch", **dict(params))
    assert torch.autograd.gradcheck(lambda f: loss(f, telemetry=False).loss, (fake,))
    assert torch.autograd.gradgradcheck(lambda f: loss(f, telemetry=False).loss, (fake,))


def test_forward_kl_value_and_reweighted_gradient_float64():
    fake = logits((11, 1), "cpu", torch.float64).requires_grad_()
    out = losses.get("forward_kl", backend="torch")(fake)
    torch.testing.assert_close(out.loss, forward_kl64(fake.detach()))
    (grad,) = torch.autograd.grad(out.loss, fake, create_graph=True)
    torch.testing.assert_close(grad, -torch.softmax(fake.detach().reshape(-1), 0).reshape(11, 1))
    # its second derivative is that of −(logsumexp r − log N)
    (hess_v,) = torch.autograd.grad(grad.sum(), fake)
    assert torch.isfinite(hess_v).all()
    # KL(w ‖ uniform) is ≥ 0 and 0 for equal logits
    assert out.loss.item() >= 0
    flat = losses.get("forward_kl", backend="torch")(torch.full((9,), 2.5, dtype=torch.float64))
    assert abs(flat.loss.item()) < 1e-15


# --------------------------------------------------------------------------------------
# Extremes, half precision
# --------------------------------------------------------------------------------------

# Losses whose mathematical value stays finite for any logits (the f-GAN KL, reverse KL,
# Pearson and Hellinger objectives contain e^v, v² or e^−v and genuinely overflow).
BOUNDED_DISCRIMINATORS = ["bce", "hinge", "lsgan", "wgan", "fgan-js", "fgan-gan"]
BOUNDED_GENERATORS = [
    ("minimax", {}),
    ("nonsaturating", {}),
    ("reverse_kl", {}),
    ("forward_kl", {}),
    ("renyi", {"alpha": 0.0}),
    ("renyi", {"alpha": 0.5}),
    ("renyi", {"alpha": 2.0}),
    ("renyi", {"alpha": 10.0}),
    ("hinge", {}),
    ("lsgan", {}),
    ("fgan-js", {}),
    ("fgan-gan", {"saturating": True}),
]
EXTREMES = [1e4, -1e4, 0.0, 3.0, -9999.0, 20.0, -16.0]


@pytest.mark.parametrize("name", BOUNDED_DISCRIMINATORS)
def test_discriminator_extreme_logits(backend, device, name):
    real = torch.tensor(EXTREMES, device=device).repeat(3).requires_grad_()
    fake = torch.tensor(EXTREMES[::-1], device=device).repeat(2).requires_grad_()
    out = losses.get(name, role="discriminator", backend=backend)(real, fake)
    grads = torch.autograd.grad(out.loss, (real, fake))
    assert torch.isfinite(out.loss) and all(torch.isfinite(g).all() for g in grads)
    r64, f64 = (t.detach().double().requires_grad_() for t in (real, fake))
    stable64 = losses.get(name, role="discriminator", backend="torch")(r64, f64).loss
    want_grads = torch.autograd.grad(stable64, (r64, f64))
    torch.testing.assert_close(out.loss.double(), stable64.detach(), rtol=1e-6, atol=1e-3)
    for got, ref in zip(grads, want_grads):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-7)
    # |logit| > 15 in 5 of 7 values of each
    torch.testing.assert_close(out.telemetry.saturated_fraction.item(), 5 / 7)


@pytest.mark.parametrize("name,params", BOUNDED_GENERATORS, ids=str)
def test_generator_extreme_logits(backend, device, name, params):
    fake = torch.tensor(EXTREMES, device=device).repeat(3).requires_grad_()
    out = losses.get(name, role="generator", backend=backend, **params)(fake)
    (grad,) = torch.autograd.grad(out.loss, fake)
    assert torch.isfinite(out.loss) and torch.isfinite(grad).all()
    f64 = fake.detach().double().requires_grad_()
    stable64 = losses.get(name, role="generator", backend="torch", **params)(f64).loss
    (want_grad,) = torch.autograd.grad(stable64, f64)
    torch.testing.assert_close(out.loss.double(), stable64.detach(), rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-5, atol=1e-7)
    if out.telemetry.divergence is not None:
        assert torch.isfinite(out.telemetry.divergence)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "role,name,params",
    [
        ("discriminator", "bce", {}),
        ("discriminator", "hinge", {}),
        ("discriminator", "fgan-pearson", {}),
        ("generator", "nonsaturating", {}),
        ("generator", "forward_kl", {}),
        ("generator", "renyi", {"alpha": 0.5}),
        ("generator", "lsgan", {}),
    ],
    ids=str,
)
def test_half_precision_within_pytorchs_own_error(backend, device, dtype, role, name, params):
    real = logits((257,), device, dtype, mean=0.6)
    fake = logits((131, 1), device, dtype, mean=-0.3).requires_grad_()
    loss = losses.get(name, role=role, backend=backend, **params)
    call = (lambda f, **kw: loss(real, f, **kw)) if role == "discriminator" else (lambda f, **kw: loss(f, **kw))
    out = call(fake)
    (grad,) = torch.autograd.grad(out.loss, fake)
    assert out.loss.dtype == dtype and grad.dtype == dtype
    # float64 truth on the same (rounded) inputs, and PyTorch's own eager error in this dtype:
    # the same formula evaluated by the float64-written textbook code run in `dtype`.
    f64 = fake.detach().double().requires_grad_()
    f_half = fake.detach().clone().requires_grad_()
    if role == "discriminator":
        formula = DISCRIMINATOR_CASES[name]
        want, theirs = formula(real.double(), f64), formula(real, f_half)
    else:
        key = (name, tuple(sorted(params.items())))
        formula = GENERATOR_CASES[key]
        want, theirs = formula(f64), formula(f_half)
    want_grad = expected_generator_grad(name, f64.detach(), formula) if name == "forward_kl" else torch.autograd.grad(want, f64)[0]
    theirs_grad = (
        expected_generator_grad(name, f_half.detach(), formula) if name == "forward_kl" else torch.autograd.grad(theirs, f_half)[0]
    )
    eps = torch.finfo(dtype).eps
    for ours, pytorch, ref in ((out.loss, theirs, want), (grad, theirs_grad, want_grad)):
        allowed = 2 * (pytorch.double() - ref).abs().max().item() + 2 * eps * ref.abs().max().item()
        assert (ours.double() - ref).abs().max().item() <= allowed


# --------------------------------------------------------------------------------------
# Telemetry
# --------------------------------------------------------------------------------------


def test_telemetry_fields(backend, device):
    real = logits((40,), device, mean=1.0)
    fake = logits((33, 1), device, mean=-1.0)
    real[3], fake[5, 0], fake[6, 0] = 16.0, -15.5, 14.9
    out = losses.get("bce", backend=backend)(real, fake)
    t = out.telemetry
    torch.testing.assert_close(t.d_real, torch.sigmoid(real).mean())
    torch.testing.assert_close(t.d_fake, torch.sigmoid(fake).mean())
    torch.testing.assert_close(t.saturated_fraction.item(), 2 / 73)
    torch.testing.assert_close(t.divergence, LOG2 - 0.5 * out.loss)
    for value in t:
        assert value.shape == () and value.dtype == torch.float32 and value.device == real.device
        assert not value.requires_grad
    gen = losses.get("renyi", alpha=0.5, backend=backend)(fake.requires_grad_())
    assert gen.telemetry.d_real is None and gen.telemetry.divergence is not None
    assert not gen.telemetry.divergence.requires_grad and gen.loss.requires_grad
    assert losses.get("hinge", role="generator")(fake).telemetry.divergence is None
    assert losses.get("hinge", role="generator")(fake, real).telemetry.divergence is not None
    assert losses.get("bce")(real, fake, telemetry=False).telemetry is None


def test_critic_telemetry_reports_raw_scores(device):
    real = logits((20,), device, mean=2.0)
    fake = logits((21,), device, mean=-3.0)
    fake[0] = -40.0
    t = losses.get("wgan", role="discriminator")(real, fake).telemetry
    torch.testing.assert_close(t.d_real, real.mean())
    torch.testing.assert_close(t.d_fake, fake.mean())
    torch.testing.assert_close(t.saturated_fraction.item(), 1 / 41)


def test_fgan_telemetry_uses_implied_log_ratio(device):
    # fgan-kl's optimal logit is r + 1, fgan-hellinger's r/2: both report D = σ(r).
    r = logits((50,), device)
    for div in ("kl", "hellinger", "pearson", "reverse-kl"):
        spec = F_DIVERGENCES[div]
        t = losses.get(f"fgan-{div}", role="discriminator")(spec.optimal_logit(r), spec.optimal_logit(r)).telemetry
        torch.testing.assert_close(t.d_fake, torch.sigmoid(r).mean(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------
# Registry and errors
# --------------------------------------------------------------------------------------


def test_registry_lists_and_builds_every_loss():
    listed = losses.available()
    assert set(listed) == {"discriminator", "generator"}
    assert {"bce", "hinge", "lsgan", "wgan"} | {f"fgan-{d}" for d in F_DIVERGENCES} == set(listed["discriminator"])
    assert {"minimax", "nonsaturating", "reverse_kl", "forward_kl", "renyi", "hinge", "wgan", "lsgan"} | {
        f"fgan-{d}" for d in F_DIVERGENCES
    } == set(listed["generator"])
    assert listed["generator"] == losses.available("generator")
    for role, names in listed.items():
        for name, summary in names.items():
            assert summary
            loss = losses.get(name, role=role, **({"alpha": 2.0} if name == "renyi" else {}))
            assert loss.name == name and loss.role == role and loss.divergence
            if role == "generator":
                assert loss.discriminator in listed["discriminator"]
    assert isinstance(losses.get("renyi", alpha=0.5), losses.GeneratorLoss)
    assert isinstance(losses.get("bce"), losses.DiscriminatorLoss)
    assert losses.get("renyi", alpha=0.5).alpha == 0.5
    assert "alpha=0.5" in repr(losses.get("renyi", alpha=0.5))


def test_registry_errors():
    with pytest.raises(ValueError, match="both a discriminator and a generator"):
        losses.get("hinge")
    with pytest.raises(ValueError, match="unknown loss 'nope'.*renyi"):
        losses.get("nope")
    with pytest.raises(ValueError, match="unknown generator loss 'bce'"):
        losses.get("bce", role="generator")
    with pytest.raises(ValueError, match="role"):
        losses.get("bce", role="critic")
    with pytest.raises(TypeError, match="needs alpha"):
        losses.get("renyi")
    with pytest.raises(TypeError, match="does not take alfa.*alpha"):
        losses.get("renyi", alfa=0.5)
    with pytest.raises(TypeError, match="does not take divergence"):
        losses.get("fgan-kl", role="generator", divergence="js")
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="alpha"):
            losses.get("renyi", alpha=bad)
    with pytest.raises(ValueError, match="divergence must be one of"):
        losses.FGANDiscriminatorLoss(divergence="tv")
    with pytest.raises(TypeError, match="saturating"):
        losses.get("fgan-kl", role="generator", saturating="yes")


def test_loss_input_errors():
    d = losses.get("bce", backend="torch")
    g = losses.get("nonsaturating", backend="torch")
    with pytest.raises(TypeError, match="real_logits must be a torch.Tensor"):
        d([1.0], torch.zeros(2))
    with pytest.raises(TypeError, match="fake_logits must be a floating-point"):
        d(torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="fake_logits is empty"):
        g(torch.zeros(0))
    with pytest.raises(ValueError, match="real_logits is empty"):
        d(torch.zeros(0), torch.zeros(3))


# --------------------------------------------------------------------------------------
# Against the divergences themselves: Gaussians with analytic log ratios
# --------------------------------------------------------------------------------------
# Data p = N(0, 1); generator q = N(mu, sigma²). r(x) = log p(x) − log q(x) exactly.


def gaussian_logpdf(x, mu, sigma):
    return -0.5 * ((x - mu) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)


def log_ratio(x, mu, sigma):
    return gaussian_logpdf(x, 0.0, 1.0) - gaussian_logpdf(x, mu, sigma)


def quadrature(integrand_of_p_q):
    """∫ integrand(p(x), q(x)) dx in float64 on a fine grid (both densities are negligible
    beyond ±16)."""

    def integrate(mu, sigma):
        x = torch.linspace(-16, 16, 320_001, dtype=torch.float64)
        p, q = torch.exp(gaussian_logpdf(x, 0.0, 1.0)), torch.exp(gaussian_logpdf(x, mu, sigma))
        return torch.trapezoid(integrand_of_p_q(p, q), x).item()

    return integrate


def _xlogy(a, b):
    return torch.where(a > 0, a * torch.log(torch.where(a > 0, a, 1.0) / torch.where(b > 0, b, 1.0)), 0.0)


JSD = quadrature(lambda p, q: 0.5 * _xlogy(p, (p + q) / 2) + 0.5 * _xlogy(q, (p + q) / 2))
TV = quadrature(lambda p, q: 0.5 * (p - q).abs())
TRIANGULAR = quadrature(lambda p, q: torch.where(p + q > 0, (p - q) ** 2 / (p + q).clamp_min(1e-300), 0.0))
TRUE_F_DIVERGENCE = {
    "kl": quadrature(lambda p, q: _xlogy(p, q)),
    "reverse-kl": quadrature(lambda p, q: _xlogy(q, p)),
    "pearson": quadrature(lambda p, q: torch.where(q > 1e-300, (p - q) ** 2 / q.clamp_min(1e-300), 0.0)),
    "hellinger": quadrature(lambda p, q: (p.sqrt() - q.sqrt()) ** 2),
    "js": lambda mu, sigma: 2 * JSD(mu, sigma),
    "gan": lambda mu, sigma: 2 * JSD(mu, sigma) - math.log(4),
}


def kl_gauss(m1, s1, m2, s2):
    """KL(N(m1, s1²) ‖ N(m2, s2²))."""
    return math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


def renyi_gauss(alpha, m1, s1, m2, s2):
    """D_α(N(m1, s1²) ‖ N(m2, s2²)) (Gil et al., 2013); α = 1 is the KL."""
    if alpha == 1.0:
        return kl_gauss(m1, s1, m2, s2)
    var = alpha * s2**2 + (1 - alpha) * s1**2
    return math.log(s2 / s1) + math.log(s2**2 / var) / (2 * (alpha - 1)) + alpha * (m1 - m2) ** 2 / (2 * var)


def monte_carlo(estimate, batches=8):
    """Mean and standard error of an estimator over independent batches."""
    values = torch.tensor([float(estimate()) for _ in range(batches)], dtype=torch.float64)
    return values.mean().item(), values.std().item() / math.sqrt(batches)


def assert_within_mc_error(estimate, truth, batches=8, floor=2e-3):
    mean, stderr = monte_carlo(estimate, batches)
    assert abs(mean - truth) <= 5 * stderr + floor, f"estimate {mean:.5f} ± {stderr:.5f}, truth {truth:.5f}"


GENERATORS = [(0.5, 0.9), (-0.8, 1.0)]  # (mu, sigma) of q; sigma ≤ 1 keeps importance weights' variance finite
N = 20_000


def gen_samples(mu, sigma, n=N):
    return mu + sigma * torch.randn(n, dtype=torch.float64)


@pytest.mark.parametrize("mu,sigma", GENERATORS)
def test_kl_generator_losses_recover_closed_forms(mu, sigma):
    reverse = losses.get("reverse_kl", backend="torch")
    forward = losses.get("forward_kl", backend="torch")
    assert_within_mc_error(lambda: reverse(log_ratio(gen_samples(mu, sigma), mu, sigma)).loss, kl_gauss(mu, sigma, 0, 1))
    assert_within_mc_error(lambda: forward(log_ratio(gen_samples(mu, sigma), mu, sigma)).loss, kl_gauss(0, 1, mu, sigma))


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.999999, 1.0, 1.000001, 2.0, 10.0])
def test_renyi_generator_loss_recovers_closed_form(alpha):
    # α = 10 weighs samples by e^{−9r}: keep the shift small so the weights' variance is finite and modest.
    mu, sigma = (0.1, 1.0) if alpha == 10.0 else (0.5, 0.9)
    loss = losses.get("renyi", alpha=alpha, backend="torch")
    assert_within_mc_error(lambda: loss(log_ratio(gen_samples(mu, sigma), mu, sigma)).loss, renyi_gauss(alpha, mu, sigma, 0, 1))


@pytest.mark.parametrize("mu,sigma", GENERATORS)
def test_optimal_discriminator_identity(mu, sigma):
    """At D* (logit = the true log ratio) the BCE discriminator loss is log 4 − 2·JSD,
    i.e. the minimax value V(D*, G) = −loss = 2·JSD − log 4; its telemetry estimates JSD."""
    loss = losses.get("bce", backend="torch")

    def run():
        real, fake = torch.randn(N, dtype=torch.float64), gen_samples(mu, sigma)
        return loss(log_ratio(real, mu, sigma), log_ratio(fake, mu, sigma))

    jsd = JSD(mu, sigma)
    assert 0.01 < jsd < LOG2
    assert_within_mc_error(lambda: run().loss, math.log(4) - 2 * jsd)
    assert_within_mc_error(lambda: run().telemetry.divergence, jsd)


@pytest.mark.parametrize("mu,sigma", GENERATORS)
def test_discriminator_bounds_are_tight_at_the_optimum(mu, sigma):
    cases = {
        "hinge": (lambda r: torch.sign(r), TV(mu, sigma)),
        "lsgan": (lambda r: torch.sigmoid(r), TRIANGULAR(mu, sigma)),
        **{f"fgan-{d}": (spec.optimal_logit, TRUE_F_DIVERGENCE[d](mu, sigma)) for d, spec in F_DIVERGENCES.items()},
    }
    for name, (optimal_logit, truth) in cases.items():
        loss = losses.get(name, role="discriminator", backend="torch")

        def run():
            real, fake = torch.randn(N, dtype=torch.float64), gen_samples(mu, sigma)
            return loss(optimal_logit(log_ratio(real, mu, sigma)), optimal_logit(log_ratio(fake, mu, sigma)))

        if name != "fgan-gan":  # 2·JSD − log 4 is ≤ 0 by construction; the others are divergences
            assert truth > 0.01
        assert_within_mc_error(lambda: run().telemetry.divergence, truth, floor=5e-3)


def test_wgan_critic_estimates_w1():
    mu = 0.7  # equal variances: W1 = |mu|, attained by the 1-Lipschitz critic −x·sign(mu)
    loss = losses.get("wgan", role="discriminator", backend="torch")
    run = lambda: loss(-torch.randn(N, dtype=torch.float64), -gen_samples(mu, 1.0)).telemetry.divergence  # noqa: E731
    assert_within_mc_error(run, mu)


def fitted_log_ratio(real, fake):
    """A crude discriminator: log ratio of Gaussians fitted to each sample set."""
    m_p, s_p = real.mean().item(), real.std().item()
    m_q, s_q = fake.mean().item(), fake.std().item()
    return lambda x: gaussian_logpdf(x, m_p, s_p) - gaussian_logpdf(x, m_q, s_q)


GENERATOR_DIVERGENCES = [
    ("reverse_kl", {}),
    ("forward_kl", {}),
    ("renyi", {"alpha": 0.5}),
    ("renyi", {"alpha": 2.0}),
    ("minimax", {}),
]


@pytest.mark.parametrize("name,params", GENERATOR_DIVERGENCES, ids=str)
def test_divergence_estimates_nonnegative_and_zero_for_same_distribution(name, params):
    loss = losses.get(name, role="generator", backend="torch", **params)

    def estimate(mu, sigma):
        real, fake = torch.randn(N, dtype=torch.float64), gen_samples(mu, sigma)
        r = fitted_log_ratio(real, fake)
        return loss(r(gen_samples(mu, sigma)), r(real)).telemetry.divergence

    same_mean, same_err = monte_carlo(lambda: estimate(0.0, 1.0))
    assert abs(same_mean) <= 5 * same_err + 1e-3
    diff_mean, diff_err = monte_carlo(lambda: estimate(0.8, 0.9))
    assert diff_mean - 5 * diff_err > 0.02


# With the discriminator frozen at the true log ratio, each generator loss's gradient with
# respect to the generator's parameter theta (q = N(theta, 1), x = theta + z) is the analytic
# gradient of its divergence (Rényi: 1/α of it; see fastgan.losses).
THETA = 0.6


def _jsd_derivative(theta, h=1e-4):
    return (JSD(theta + h, 1.0) - JSD(theta - h, 1.0)) / (2 * h)


GRADIENT_CASES = [
    ("reverse_kl", {}, lambda t: t),  # d/dθ KL(q‖p) = d/dθ θ²/2
    ("forward_kl", {}, lambda t: t),  # d/dθ KL(p‖q)
    ("renyi", {"alpha": 0.5}, lambda t: t),  # (1/α)·d/dθ αθ²/2
    ("renyi", {"alpha": 3.0}, lambda t: t),
    ("fgan-kl", {"saturating": True}, lambda t: t),
    ("fgan-reverse-kl", {"saturating": True}, lambda t: t),
    ("fgan-pearson", {"saturating": True}, lambda t: 2 * t * math.exp(t * t)),  # χ² = e^{θ²} − 1
    ("fgan-hellinger", {"saturating": True}, lambda t: 0.5 * t * math.exp(-t * t / 8)),  # H² = 2 − 2e^{−θ²/8}
    ("fgan-js", {"saturating": True}, lambda t: 2 * _jsd_derivative(t)),
    ("minimax", {}, lambda t: 2 * _jsd_derivative(t)),
    ("nonsaturating", {}, lambda t: t - 2 * _jsd_derivative(t)),  # KL(q‖p) − 2·JSD
]


@pytest.mark.parametrize("name,params,gradient", GRADIENT_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_generator_gradient_is_the_divergence_gradient(name, params, gradient):
    loss = losses.get(name, role="generator", backend="torch", **params)
    spec = F_DIVERGENCES.get(name.removeprefix("fgan-"))
    to_logit = spec.optimal_logit if spec is not None else (lambda r: r)

    def grad_theta():
        theta = torch.tensor(THETA, dtype=torch.float64, requires_grad=True)
        x = theta + torch.randn(N, dtype=torch.float64)
        fake_logits = to_logit(log_ratio(x, THETA, 1.0))  # the discriminator is frozen at θ = THETA
        (g,) = torch.autograd.grad(loss(fake_logits, telemetry=False).loss, theta)
        return g

    assert_within_mc_error(grad_theta, gradient(THETA), floor=5e-3)


def test_literal_forward_kl_gradient_would_point_the_wrong_way():
    """Why forward_kl uses the reweighted gradient: differentiating E_q[e^r·r] itself
    through a frozen discriminator moves θ away from the data (positive θ grows)."""
    theta = torch.tensor(THETA, dtype=torch.float64, requires_grad=True)
    r = log_ratio(theta + torch.randn(N, dtype=torch.float64), THETA, 1.0)
    (literal,) = torch.autograd.grad((torch.exp(r) * r).mean(), theta, retain_graph=True)
    (ours,) = torch.autograd.grad(losses.get("forward_kl", backend="torch")(r).loss, theta)
    assert literal.item() < 0 < ours.item()


def test_losses_compile_fullgraph(device):
    torch._dynamo.reset()
    d_loss = losses.get("bce")
    g_loss = losses.get("forward_kl")

    def step(real, fake):
        d = d_loss(real, fake.detach())
        g = g_loss(fake, real)
        return d.loss + g.loss, d.telemetry.divergence, g.telemetry.saturated_fraction

    real = logits((24, 1), device)
    fake = logits((24, 1), device).requires_grad_()
    compiled = torch.compile(step, fullgraph=True)
    got = compiled(real, fake)
    want = step(real, fake)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.autograd.grad(got[0], fake)[0], torch.autograd.grad(want[0], fake)[0])


@pytest.mark.parametrize("role", ["discriminator", "generator"])
def test_every_loss_compiles_once_for_a_dynamic_batch(backend, device, role):
    """Every registered loss traces with fullgraph on every backend, values as in eager, and a
    new batch size does not recompile (a loss object's float attributes, such as Rényi's α, are
    symbolic floats there)."""
    from torch._dynamo.testing import CompileCounter

    for name in losses.available(role):
        loss = losses.get(name, role, backend=backend, **({"alpha": 0.5} if name == "renyi" else {}))

        def value(real, fake):
            return (loss(real, fake) if role == "discriminator" else loss(fake, real)).loss

        torch._dynamo.reset()
        counter = CompileCounter()
        compiled = torch.compile(value, backend=counter, fullgraph=True, dynamic=True)
        for n in (40, 50, 70):
            real, fake = logits((n,), device), logits((n,), device)
            torch.testing.assert_close(compiled(real, fake), value(real, fake), msg=lambda m: f"{name}: {m}")
        assert counter.frame_count == 1, name
