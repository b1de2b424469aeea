"""fastgan.Trainer and fastgan.models on the CPU: training improves, resume is exact,
Ctrl-C saves, NaN stops, checkpoints cannot run code; CUDA graphs against eager on a GPU."""

import math
import pickle

import pytest
import torch

from fastgan import Trainer, TrainingDiverged, data, metrics, models
from fastgan.checkpoint import CheckpointError
from fastgan.trainer import load_checkpoint, save_checkpoint

GRID = data.toy_mixture("grid25")


def toy_trainer(seed=0, **kwargs):
    torch.manual_seed(seed)
    generator = models.MLPGenerator(8, 2, 64, 2, scale=4.15)
    discriminator = models.MLPDiscriminator(2, 64, 2, scale=4.15)
    options = dict(lr_g=5e-3, lr_d=5e-3, lr_decay=0.05, total_steps=60, seed=seed)
    options.update(kwargs)
    return Trainer(generator, discriminator, **options)


def parameters(trainer):
    return [p.detach().clone() for p in list(trainer.generator.parameters()) + list(trainer.discriminator.parameters())]


def test_short_grid25_run_improves_metrics():
    trainer = toy_trainer(total_steps=1500)
    before = metrics.toy_metrics(trainer.sample(2500, generator=torch.Generator().manual_seed(1)), GRID)
    records = trainer.train(GRID, 1500, 256, log_every=500)
    after = metrics.toy_metrics(trainer.sample(2500, generator=torch.Generator().manual_seed(1)), GRID)
    assert [r.step for r in records] == [500, 1000, 1500]
    assert after.modes >= before.modes + 3 and after.reverse_kl < before.reverse_kl - 0.5
    assert all(math.isfinite(r.d_loss) and math.isfinite(r.g_loss) and r.it_per_s > 0 for r in records)
    assert 0 < records[-1].d_real < 1 and 0 < records[-1].d_fake < 1


# On the CPU these toy models train on the derived backward by default (fastgan.mlp_gan_step);
# the tests of resume, Ctrl-C and NaN run both backwards.
BACKWARDS = ["auto", "autograd"]


@pytest.mark.parametrize("backward", BACKWARDS)
def test_resume_equals_uninterrupted(tmp_path, backward):
    straight = toy_trainer(backward=backward)
    assert straight.backward == ("derived" if backward == "auto" else "autograd")
    straight.train(GRID, 60, 64, log_every=20)
    first = toy_trainer(backward=backward)
    first.train(GRID, 25, 64, log_every=5, checkpoint_path=str(tmp_path / "ckpt.pt"))
    resumed = toy_trainer(seed=0, backward=backward)
    torch.manual_seed(123)  # the resumed process's global RNG differs; the checkpoint restores it
    resumed.resume(str(tmp_path / "ckpt.pt"))
    assert resumed.step == 25
    resumed.train(GRID, 60, 64, log_every=5)
    for a, b in zip(parameters(straight), parameters(resumed)):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backward", BACKWARDS)
def test_ctrl_c_saves_a_checkpoint_and_resumes_exactly(tmp_path, backward):
    path = str(tmp_path / "ckpt.pt")
    trainer = toy_trainer(backward=backward)

    def interrupt(record):
        if record.step == 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.train(GRID, 60, 64, log_every=10, on_log=interrupt, checkpoint_path=path, config={"note": "x"})
    state = load_checkpoint(path)
    assert state["step"] == 30 and state["config"] == {"note": "x"}
    resumed = toy_trainer(backward=backward)
    resumed.resume(path)
    resumed.train(GRID, 60, 64, log_every=10)
    straight = toy_trainer(backward=backward)
    straight.train(GRID, 60, 64, log_every=10)
    for a, b in zip(parameters(straight), parameters(resumed)):
        assert torch.equal(a, b)


class PoisonedAfter:
    """grid25 samples, NaN from the given call on."""

    def __init__(self, calls):
        self.calls, self.count = calls, 0

    def sample(self, n, device=None, generator=None):
        self.count += 1
        x = GRID.sample(n, device=device, generator=generator)
        return x * math.nan if self.count > self.calls else x


@pytest.mark.parametrize("backward", BACKWARDS)
def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, backward):
    path = str(tmp_path / "ckpt.pt")
    trainer = toy_trainer(backward=backward)
    with pytest.raises(TrainingDiverged, match="at step 23"):
        trainer.train(PoisonedAfter(22), 60, 32, log_every=10, checkpoint_path=path, checkpoint_every=10)
    good = load_checkpoint(path)
    assert good["step"] == 20
    assert all(torch.isfinite(v).all() for v in good["generator"].values())


def test_checkpoints_are_atomic_and_cannot_run_code(tmp_path, capfd):
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, {"step": 3, "w": torch.ones(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left behind
    assert load_checkpoint(path)["step"] == 3

    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"payload": Exploit()}, path)
    with pytest.raises(CheckpointError, match="ckpt.pt: not a readable checkpoint") as refused:
        load_checkpoint(path)
    assert isinstance(refused.value.__cause__, pickle.UnpicklingError)
    assert "this must never run" not in capfd.readouterr().out
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not a dict", "not a trainer's", "another model"])
def test_resume_from_a_damaged_checkpoint_names_the_file(tmp_path, damage):
    path = str(tmp_path / "checkpoint.pt")
    trainer = toy_trainer()
    trainer.train(data.toy_mixture("grid25"), 2, 32, checkpoint_path=path)
    blob = open(path, "rb").read()
    if damage == "truncated":
        open(path, "wb").write(blob[: len(blob) - 100])
    elif damage == "garbage":
        open(path, "wb").write(bytes(range(256)) * 8)
    elif damage == "empty":
        open(path, "wb").close()
    elif damage == "not a dict":
        torch.save([1, 2, 3], path)
    elif damage == "not a trainer's":
        save_checkpoint(path, {"step": 2, "generator": {}})
    fresh = toy_trainer()
    if damage == "another model":
        torch.manual_seed(0)
        fresh = Trainer(models.MLPGenerator(8, 2, 32, 2), models.MLPDiscriminator(2, 32, 2), total_steps=60)
    expected = {"not a dict": "not a checkpoint", "not a trainer's": "no discriminator, opt_g, opt_d",
                "another model": "does not fit this trainer"}.get(damage, "truncated or damaged")
    with pytest.raises(CheckpointError, match=expected) as error:
        fresh.resume(path)
    assert str(error.value).startswith(path) and "\n" not in str(error.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown generator loss 'nope'"):
        toy_trainer(g_loss="nope")
    with pytest.raises(TypeError, match="needs alpha"):
        toy_trainer(g_loss="renyi")
    with pytest.raises(ValueError, match="precision"):
        toy_trainer(precision="fp16")
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        toy_trainer(cuda_graphs=True)
    with pytest.raises(ValueError, match="lr_g"):
        toy_trainer(lr_g=-1.0)
    with pytest.raises(ValueError, match="d_steps"):
        toy_trainer(d_steps=0)
    trainer = toy_trainer()
    with pytest.raises(ValueError, match="batch_size"):
        trainer.train(GRID, 10, 0)
    with pytest.raises(TypeError, match="sample"):
        trainer.train([1, 2], 10, 8)


def test_bf16_and_d_steps_and_renyi_run():
    trainer = toy_trainer(precision="bf16", d_steps=2, g_loss="renyi", g_loss_params={"alpha": 0.5}, ema_decay=None)
    records = trainer.train(GRID, 20, 64, log_every=10)
    assert math.isfinite(records[-1].g_loss) and trainer.ema is None


@pytest.mark.parametrize("image_size", [32, 64])
def test_dcgan_models_shapes_and_fused_blocks(image_size):
    from fastgan.nn import BatchNormLeakyReLU2d

    generator = models.DCGANGenerator(16, 3, image_size, width=8)
    discriminator = models.DCGANDiscriminator(3, image_size, width=8)
    images = generator(torch.randn(4, 16))
    assert images.shape == (4, 3, image_size, image_size) and images.abs().max() <= 1
    assert discriminator(images).shape == (4,)
    assert any(isinstance(m, BatchNormLeakyReLU2d) for m in generator.modules())
    assert {m.negative_slope for m in discriminator.modules() if isinstance(m, BatchNormLeakyReLU2d)} == {0.2}
    with pytest.raises(ValueError, match="image_size must be 32 or 64"):
        models.DCGANGenerator(16, 3, 48)


def test_trainer_on_the_shapes_images():
    torch.manual_seed(0)
    trainer = Trainer(models.DCGANGenerator(16, 3, 32, width=8), models.DCGANDiscriminator(3, 32, width=8),
                      total_steps=3)
    records = trainer.train(data.ShapesDataset(32), 3, 8, log_every=3)
    assert records[-1].step == 3 and math.isfinite(records[-1].d_loss)
    assert trainer.sample(5).shape == (5, 3, 32, 32)


def test_layered_models_train_and_checkpoint_their_mixture_latent(tmp_path):
    """The shapes preset's models (a mixture-latent LayeredGenerator and a ConvDiscriminator, Adam
    (0, 0.99), R1) train; the mixture's means and scales learn, and a checkpoint restores them."""

    def build(seed):
        torch.manual_seed(seed)
        return Trainer(models.LayeredGenerator(8, 3, 32, width=4, components=6), models.ConvDiscriminator(3, 32, 4),
                       lr_g=2e-3, lr_d=2e-3, betas=(0.0, 0.99), r1_gamma=0.2, r1_every=1, ema_decay=0.99,
                       total_steps=3, seed=seed)

    trainer = build(0)
    means, scales = trainer.generator.prior.means.detach().clone(), trainer.generator.prior.log_scales.detach().clone()
    records = trainer.train(data.ShapesDataset(32), 3, 8, log_every=3)
    assert math.isfinite(records[-1].d_loss) and math.isfinite(records[-1].g_loss)
    assert not torch.equal(trainer.generator.prior.means, means)
    assert not torch.equal(trainer.generator.prior.log_scales, scales)
    assert trainer.opt_g.param_groups[0]["betas"] == (0.0, 0.99)
    path = str(tmp_path / "layered.pt")
    trainer.save(path)
    restored = build(1)  # other initial weights and mixture
    assert not torch.equal(restored.generator.prior.means, trainer.generator.prior.means)
    restored.resume(path)
    for name in ("means", "log_scales"):
        assert torch.equal(getattr(restored.generator.prior, name), getattr(trainer.generator.prior, name))
        assert torch.equal(getattr(restored.ema.prior, name), getattr(trainer.ema.prior, name))
    draw = lambda t: t.sample(9, generator=torch.Generator().manual_seed(5))  # noqa: E731
    torch.testing.assert_close(draw(restored), draw(trainer), rtol=0, atol=0)


class FixedBatch:
    """The same real batch every step (a static buffer for the graph-vs-eager comparison)."""

    def __init__(self, batch):
        self.batch = batch

    def sample(self, n, device=None, generator=None):
        return self.batch[:n]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graphs_match_eager_after_20_steps():
    noise = torch.randn(128, 8, device="cuda")
    real = FixedBatch(GRID.sample(128, device="cuda", generator=torch.Generator("cuda").manual_seed(3)))
    results = []
    for graphs in (False, True):
        trainer = toy_trainer(device="cuda", cuda_graphs=graphs, total_steps=20)
        trainer.train(real, 20, 128, log_every=10, noise=noise)
        assert trainer.step == 20
        assert trainer._step_graphs.captured == graphs, trainer.messages
        results.append(parameters(trainer) + [p.detach().clone() for p in trainer.ema.parameters()])
    for eager, graphed in zip(*results):
        torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graphs_with_on_device_noise_and_data_resume(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    trainer = toy_trainer(device="cuda", total_steps=40)
    trainer.train(GRID, 20, 128, log_every=10, checkpoint_path=path)
    assert trainer._step_graphs.captured, trainer.messages
    resumed = toy_trainer(device="cuda", total_steps=40)
    resumed.resume(path)
    resumed.train(GRID, 40, 64, log_every=10)  # another batch size: captured again
    assert resumed.step == 40 and resumed._step_graphs.captured
    assert all(torch.isfinite(p).all() for p in parameters(resumed))


def test_sigint_stops_between_steps_and_saves(tmp_path):
    import os
    import signal

    path = str(tmp_path / "ckpt.pt")
    trainer = toy_trainer()

    def send_sigint(record):
        if record.step == 10:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        trainer.train(GRID, 60, 32, log_every=5, on_log=send_sigint, checkpoint_path=path)
    assert load_checkpoint(path)["step"] == 10  # stopped before step 11 began
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_learning_rates_hold_their_final_value_past_total_steps():
    """The schedules span total_steps; train() may run past it (fastgan train --final-hold),
    and the learning rates then hold lr_decay × their start instead of decaying further."""
    trainer = toy_trainer(total_steps=20)
    for target in (10, 20, 30, 40):
        trainer.train(GRID, target, 16, log_every=10)
        last_step = target - 1  # the rates are set at the start of each step
        fraction = 0.05 ** min(1.0, last_step / 20)
        for optimizer, start in ((trainer.opt_g, 5e-3), (trainer.opt_d, 5e-3)):
            assert float(optimizer.param_groups[0]["lr"]) == pytest.approx(start * fraction, rel=1e-12)


def test_r1_penalty_gradient_and_lazy_schedule():
    trainer = toy_trainer(r1_gamma=0.7, r1_every=3)
    batch = FixedBatch(GRID.sample(16, generator=torch.Generator().manual_seed(5)))
    noise = torch.randn(16, 8)
    trainer.opt_d.step = lambda: None  # keep the parameters: compare gradients only
    trainer._discriminator_step(batch, 16, noise, r1=True)
    got = [p.grad.clone() for p in trainer.discriminator.parameters()]
    real = batch.batch.clone().requires_grad_()
    real_logits = trainer.discriminator(real)
    fake_logits = trainer.discriminator(trainer.generator(noise).detach())
    loss = trainer.d_loss(real_logits, fake_logits).loss
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    loss = loss + 0.5 * 0.7 * 3 * grad.square().sum(1).mean()
    want = torch.autograd.grad(loss, list(trainer.discriminator.parameters()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    trainer.d_steps = 2
    due = []
    for step in range(4):
        trainer.step = step
        due += [trainer._r1_due(i) for i in range(2)]
    assert due == [True, False, False, True, False, False, True, False]


def test_frozen_parameters_stay_frozen():
    """A frozen parameter in D or G is neither updated nor unfrozen by the steps (the G step
    freezes D for its backward and gives D back its own flags)."""
    trainer = toy_trainer()
    frozen = [trainer.discriminator.net[0].bias, trainer.generator.net[0].weight]
    for parameter in frozen:
        parameter.requires_grad_(False)
    trainer = Trainer(trainer.generator, trainer.discriminator, lr_g=5e-3, lr_d=5e-3, r1_gamma=0.5, seed=0)
    assert trainer.backward == "autograd"  # the derived backward trains every parameter: refused
    before = [p.detach().clone() for p in frozen]
    trainer.train(GRID, 5, 64)
    for parameter, value in zip(frozen, before):
        assert not parameter.requires_grad and torch.equal(parameter, value)
    assert all(p.requires_grad for p in trainer.discriminator.net[2].parameters())
