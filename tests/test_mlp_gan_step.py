"""fastgan.mlp_gan_step: the hand-derived MLP GAN gradients against autograd in float64, what
it refuses, and a trainer on it against a trainer on autograd."""

import pytest
import torch
from torch import nn

from fastgan import Trainer, data, losses, models
from fastgan.mlp_gan_step import MLPGANStep, adam_step, unsupported_reason

# (latent_dim, components, hidden, layers, data_dim): odd sizes, one hidden layer up to three.
SHAPES = [(8, 25, 128, 3, 2), (3, 5, 7, 1, 2), (5, 0, 13, 2, 3), (4, 9, 11, 4, 1)]


def models_for(shape, seed=0, dtype=torch.float64):
    latent_dim, components, hidden, layers, data_dim = shape
    torch.manual_seed(seed)
    generator = models.MLPGenerator(latent_dim, data_dim, hidden, layers, scale=4.15, components=components)
    discriminator = models.MLPDiscriminator(data_dim, hidden + 2, layers, scale=4.15)
    with torch.no_grad():  # biases and prior away from their initial values; varied mixture scales
        for p in (*generator.parameters(), *discriminator.parameters()):
            p.add_(0.3 * torch.randn_like(p))
    return generator.to(dtype), discriminator.to(dtype)


def fresh_inputs(generator, rows, seed):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(rows, generator.net[-1].out_features, generator=g, dtype=torch.float64) * 3 + 0.7
    noise = torch.randn(rows, generator.latent_dim, generator=g, dtype=torch.float64)
    return real, noise


def assert_telemetry_close(stats, expected):
    """The loss is float64 on both sides; the loss library computes the rest of its telemetry
    in float32 whatever the logits' dtype."""
    torch.testing.assert_close(stats[0], expected[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(stats, torch.stack(expected).double(), rtol=1e-6, atol=1e-7)


def autograd_discriminator(discriminator, real, fake, r1_weight):
    discriminator.zero_grad(set_to_none=True)
    real = real.detach().requires_grad_(True)
    real_logits = discriminator(real)
    out = losses.get("bce", role="discriminator")(real_logits, discriminator(fake))
    loss = out.loss
    if r1_weight:
        (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
        loss = loss + r1_weight * grad.square().sum(1).mean()
    loss.backward()
    telemetry = out.telemetry
    return [p.grad.clone() for p in discriminator.parameters()], [out.loss, telemetry.divergence, telemetry.d_real,
                                                                  telemetry.d_fake]


def autograd_generator(generator, discriminator, noise):
    generator.zero_grad(set_to_none=True)
    discriminator.requires_grad_(False)
    out = losses.get("nonsaturating", role="generator")(discriminator(generator(noise)))
    out.loss.backward()
    discriminator.requires_grad_(True)
    return [p.grad.clone() for p in generator.parameters()], [out.loss, out.telemetry.saturated_fraction]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("r1_weight", [0.0, 0.43, 3.44])
@pytest.mark.parametrize("rows", [1, 37])
def test_discriminator_gradients_match_autograd(shape, r1_weight, rows):
    generator, discriminator = models_for(shape, seed=rows)
    real, noise = fresh_inputs(generator, rows, seed=rows + 1)
    with torch.no_grad():
        fake = generator(noise)
    step = MLPGANStep(generator, discriminator)
    grads, stats = step.discriminator_gradients(real, fake, r1_weight)
    expected, expected_stats = autograd_discriminator(discriminator, real, fake, r1_weight)
    assert len(grads) == len(expected)
    for got, want in zip(grads, expected):
        assert got.shape == want.shape and got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert_telemetry_close(stats, expected_stats)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rows", [1, 37])
def test_generator_gradients_match_autograd(shape, rows):
    generator, discriminator = models_for(shape, seed=rows)
    _, noise = fresh_inputs(generator, rows, seed=rows + 2)
    step = MLPGANStep(generator, discriminator)
    grads, stats = step.generator_gradients(noise, losses.SATURATION_THRESHOLD)
    expected, expected_stats = autograd_generator(generator, discriminator, noise)
    assert len(grads) == len(expected)
    for got, want in zip(grads, expected):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert_telemetry_close(stats, expected_stats)
    assert all(p.grad is None for p in discriminator.parameters())


def test_saturated_logits_and_extreme_inputs_match_autograd():
    """Logits past ±15 (the saturation count, σ at its ends) and samples at ±1e4."""
    generator, discriminator = models_for(SHAPES[1], seed=3)
    with torch.no_grad():
        discriminator.net[-1].weight.mul_(40.0)
    real = torch.tensor([[1e4, -1e4], [0.0, 0.0], [-3.0, 2.5], [1e-3, 7.0]], dtype=torch.float64)
    fake = -real.flip(0)
    step = MLPGANStep(generator, discriminator)
    grads, stats = step.discriminator_gradients(real, fake, 0.43)
    expected, expected_stats = autograd_discriminator(discriminator, real, fake, 0.43)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert_telemetry_close(stats, expected_stats)
    noise = torch.randn(64, generator.latent_dim, dtype=torch.float64) * 4
    grads, stats = step.generator_gradients(noise, losses.SATURATION_THRESHOLD)
    expected, expected_stats = autograd_generator(generator, discriminator, noise)
    assert 0 < expected_stats[1] < 1  # some logits saturated, some not
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert_telemetry_close(stats, expected_stats)


def test_unsupported_reason_names_what_is_not_derived():
    generator, discriminator = models_for(SHAPES[0], dtype=torch.float32)
    bce, ns = losses.get("bce", role="discriminator"), losses.get("nonsaturating", role="generator")
    assert unsupported_reason(generator, discriminator, bce, ns) is None
    assert "loss is 'hinge'" in unsupported_reason(generator, discriminator, losses.get("hinge", role="discriminator"), ns)
    assert "'minimax'" in unsupported_reason(generator, discriminator, bce, losses.get("minimax", role="generator"))
    assert "real label" in unsupported_reason(generator, discriminator,
                                              losses.get("bce", role="discriminator", real_label=0.9), ns)
    fourier = models.MLPDiscriminator(2, 16, 2, fourier_octaves=3)
    assert "Fourier" in unsupported_reason(generator, fourier, bce, ns)
    assert "float32 or all float64" in unsupported_reason(generator.half(), discriminator, bce, ns)
    generator = generator.float()
    assert "MLPGenerator" in unsupported_reason(nn.Sequential(nn.Linear(8, 2)), discriminator, bce, ns)

    class Subclass(models.MLPGenerator):
        pass

    assert "MLPGenerator" in unsupported_reason(Subclass(8, 2, 16, 2), discriminator, bce, ns)

    def changed(edit, model="discriminator"):
        g, d = models_for(SHAPES[0], dtype=torch.float32)
        edit(g if model == "generator" else d)
        return unsupported_reason(g, d, bce, ns)

    assert "layers were changed" in changed(lambda d: d.net.__setitem__(1, nn.ReLU()))
    assert "layers were changed" in changed(lambda d: setattr(d, "net", nn.Sequential(nn.Linear(2, 1))))
    assert "not a MixtureLatent" in changed(lambda g: setattr(g, "prior", nn.Identity()), "generator")
    assert "besides their layers'" in changed(lambda d: d.register_parameter("temperature", nn.Parameter(torch.ones(()))))
    assert "frozen" in changed(lambda g: g.prior.log_scales.requires_grad_(False), "generator")
    assert "hooks" in changed(lambda d: d.net[2].register_forward_hook(lambda *args: None))
    assert "hooks" in changed(lambda g: g.net[0].weight.register_hook(lambda grad: grad * 2), "generator")
    assert "besides their layers'" in changed(lambda d: nn.utils.spectral_norm(d.net[2]))  # weight_orig, a hook
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert "hooks" in changed(lambda d: None)
    finally:
        handle.remove()
    assert changed(lambda d: None) is None


class Float64Data:
    """A toy mixture's samples in float64 (the trainer in float64 end to end)."""

    def __init__(self, mixture):
        self.mixture = mixture

    def sample(self, n, device=None, generator=None):
        return self.mixture.sample(n, device=device, generator=generator).double()


def float64_trainer(backward, **options):
    generator, discriminator = models_for((4, 7, 24, 2, 2), seed=11)
    settings = dict(lr_g=3e-3, lr_d=9e-3, lr_decay=0.5, total_steps=6, d_steps=2, r1_gamma=0.86, r1_every=3,
                    ema_decay=0.9, seed=5, backward=backward)
    settings.update(options)
    return Trainer(generator, discriminator, **settings)


@pytest.fixture
def float64_default():
    """The trainer's own noise draws in float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("options", [{}, {"r1_gamma": 0.0, "d_steps": 1, "ema_decay": None}])
@pytest.mark.parametrize("fixed_noise", [False, True])
def test_trainer_on_derived_gradients_matches_autograd_in_float64(options, fixed_noise, float64_default):
    """Six steps of the whole update (draws, D updates with and without R1, Adam, EMA,
    telemetry): the two trainers agree to float64 rounding."""
    trainers = [float64_trainer(backward, **options) for backward in ("autograd", "derived")]
    assert [t.backward for t in trainers] == ["autograd", "derived"]
    mixture = Float64Data(data.toy_mixture("grid25"))
    noise = torch.randn(33, trainers[0].latent_dim, generator=torch.Generator().manual_seed(2)) if fixed_noise else None
    records = [t.train(mixture, 6, 33, log_every=3, noise=noise) for t in trainers]
    for module in ("generator", "discriminator", "ema"):
        if getattr(trainers[0], module) is None:
            continue
        pairs = zip(getattr(trainers[0], module).parameters(), getattr(trainers[1], module).parameters())
        for want, got in pairs:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    for optimizer in ("opt_g", "opt_d"):
        want, got = (getattr(t, optimizer).state_dict()["state"] for t in trainers)
        for index in want:
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(got[index][key], want[index][key], rtol=1e-9, atol=1e-15)
    for want, got in zip(*records):
        assert got.step == want.step
        for field in ("d_loss", "g_loss"):
            assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-12)
        for field in ("divergence", "d_real", "d_fake", "saturated_fraction"):
            assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-6, abs=1e-7)


def test_trainer_chooses_derived_on_the_cpu_where_it_applies_and_says_why_not():
    assert float64_trainer("auto").backward == "derived"
    assert float64_trainer("auto", d_loss="hinge", g_loss="hinge").backward == "autograd"
    with pytest.raises(ValueError, match="backward='derived' cannot train this: the discriminator loss is 'hinge'"):
        float64_trainer("derived", d_loss="hinge", g_loss="hinge")
    with pytest.raises(ValueError, match="precision is 'bf16'"):
        float64_trainer("derived", precision="bf16")
    with pytest.raises(ValueError, match="backward must be one of"):
        float64_trainer("manual")


def test_adam_step_is_torch_adam_bit_for_bit_and_defers_what_it_does_not_cover(monkeypatch):
    torch.manual_seed(0)
    params = [torch.randn(13, 7, requires_grad=True), torch.randn(7, requires_grad=True)]
    twins = [p.detach().clone().requires_grad_(True) for p in params]
    ours = torch.optim.Adam(params, lr=3e-3, betas=(0.5, 0.99), fused=True)
    torchs = torch.optim.Adam(twins, lr=3e-3, betas=(0.5, 0.99), fused=True)
    deferred = []
    original_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: (deferred.append(self is ours),
                                                                          original_step(self, *a, **k))[1])
    for step in range(5):
        grads = [torch.randn_like(p) * 10.0 ** -step for p in params]  # shrinking: eps matters late
        for p, t, g in zip(params, twins, grads):
            p.grad, t.grad = g.clone(), g.clone()
        ours.param_groups[0]["lr"] = torchs.param_groups[0]["lr"] = 3e-3 * 0.7 ** step
        adam_step(ours)
        torchs.step()
        for p, t in zip(params, twins):
            assert torch.equal(p, t)
    for p, t in zip(params, twins):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(ours.state[p][key], torchs.state[t][key])
    # Only the first step, which creates the state, went through Adam.step; the rest were direct.
    assert deferred.count(True) == 1
    # What it does not cover goes through optimizer.step(): hooks run, a missing grad is skipped.
    calls = []
    ours.register_step_post_hook(lambda optimizer, args, kwargs: calls.append(1))
    adam_step(ours)
    assert calls == [1]
    params[1].grad = None
    before = params[1].detach().clone()
    adam_step(ours)
    assert torch.equal(params[1], before) and calls == [1, 1]


@pytest.mark.parametrize("settings", [dict(amsgrad=True), dict(weight_decay=0.1), dict(maximize=True),
                                      dict(lr=torch.tensor(1e-3)), dict(fused=False), dict(scheduler=True)])
def test_adam_step_defers_settings_it_does_not_cover(settings, monkeypatch):
    settings = dict(settings)
    scheduler = settings.pop("scheduler", False)
    options = dict(lr=3e-3, betas=(0.5, 0.99), fused=True)
    options.update(settings)
    torch.manual_seed(1)
    params = [torch.randn(5, 3, requires_grad=True)]
    twins = [params[0].detach().clone().requires_grad_(True)]
    ours, torchs = torch.optim.Adam(params, **options), torch.optim.Adam(twins, **options)
    if scheduler:
        torch.optim.lr_scheduler.StepLR(ours, 1)
        torch.optim.lr_scheduler.StepLR(torchs, 1)
    for step in range(3):
        grad = torch.randn(5, 3)
        params[0].grad, twins[0].grad = grad.clone(), grad.clone()
        adam_step(ours)
        torchs.step()
    assert torch.equal(params[0], twins[0])


def test_trainer_on_derived_gradients_stays_within_float32_rounding_of_autograd():
    """The production dtype: three steps of each on the same float32 models and draws."""
    trainers = []
    for backward in ("autograd", "derived"):
        generator, discriminator = models_for((8, 25, 64, 3, 2), seed=4, dtype=torch.float32)
        trainers.append(Trainer(generator, discriminator, lr_g=3e-3, lr_d=9e-3, r1_gamma=0.86, seed=2,
                                backward=backward, total_steps=3))
    for trainer in trainers:
        trainer.train(data.toy_mixture("grid25"), 3, 256)
    for module in ("generator", "discriminator", "ema"):
        pairs = zip(getattr(trainers[0], module).parameters(), getattr(trainers[1], module).parameters())
        for want, got in pairs:
            # Adam's update is lr·m/(√v + eps), near ±lr for the first steps wherever |g| ≫
            # eps: float32 rounding moves a parameter by a small fraction of lr, a wrong
            # gradient (a sign, a factor that changes across steps) by a large one.
            torch.testing.assert_close(got, want, rtol=0, atol=9e-3 * 0.05)
