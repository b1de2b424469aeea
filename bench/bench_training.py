"""Training-step benchmarks: one GAN step (a D update and a G update) per call.

* toy MLP GAN on grid25, batch 512: a plain eager PyTorch loop, that loop with the models
  under ``torch.compile`` (default, and ``mode="reduce-overhead"`` on a GPU), fastgan's
  Trainer without and (on a GPU) with CUDA graphs; on the CPU its default step is the MLP
  GAN's hand-derived backward (``fastgan.mlp_gan_step``), and ``fastgan-autograd`` is the same
  trainer on autograd;
* DCGAN-64, batch 128, bf16 autocast (GPU only: a CPU step takes seconds);
* fastgan dropped into a third-party DCGAN-64 loop (the PyTorch examples', fp32, batch 32;
  every device): ``fuse`` and fastgan's BCE module against the loop as written.

``extra_info``: it/s (and images/s) from the median step time, peak memory on a GPU.

The toy and DCGAN-64 cases time STEPS_PER_CALL steps per call, as a training run makes them:
fastgan's ``Trainer.train`` reads its accumulated log (a host synchronisation) and checks the
parameters for NaN/Inf once per call, which a run does once per ``log_every`` steps, not
every step. Times, host µs and launches are reported per step.
"""

import pytest
import torch
import torch.nn.functional as F
from benchutil import DEVICE, GPU

import fastgan
from fastgan import Trainer, data, models

GRID = data.toy_mixture("grid25")
STEPS_PER_CALL = 10
PROVIDERS = [
    pytest.param("eager-loop", id="eager-loop"),
    pytest.param("compile", id="compile"),
    pytest.param("compile-reduce-overhead", id="compile-reduce-overhead",
                 marks=pytest.mark.skipif(not GPU, reason="reduce-overhead is CUDA graphs: needs a GPU")),
    pytest.param("fastgan", id="fastgan"),
    pytest.param("fastgan-autograd", id="fastgan-autograd"),
    pytest.param("fastgan-graphs", id="fastgan-graphs",
                 marks=pytest.mark.skipif(not GPU, reason="CUDA graphs need a GPU")),
]


def _eager_loop_step(generator, discriminator, opt_g, opt_d, sample_real, batch, latent_dim, autocast):
    """The GAN step a user writes in plain PyTorch (non-saturating loss, BCE discriminator)."""

    def step():
        real = sample_real(batch)
        z = torch.randn(batch, latent_dim, device=DEVICE)
        with autocast():
            with torch.no_grad():
                fake = generator(z)
            real_logits, fake_logits = discriminator(real), discriminator(fake)
            d_loss = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + \
                F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        opt_d.zero_grad(set_to_none=True)
        d_loss.float().backward()
        opt_d.step()
        with autocast():
            g_logits = discriminator(generator(torch.randn(batch, latent_dim, device=DEVICE)))
            g_loss = F.softplus(-g_logits.float()).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

    return step


def _run(measure, provider, make_models, sample_real, data_source, batch, latent_dim, bf16, group, per_image):
    torch.manual_seed(0)
    generator, discriminator = make_models()
    autocast = lambda: torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    synchronize = torch.cuda.synchronize if GPU else (lambda: None)
    if provider.startswith("fastgan"):
        trainer = Trainer(generator, discriminator, device=DEVICE, lr_g=2e-4, lr_d=2e-4, ema_decay=None,
                          precision="bf16" if bf16 else "fp32", cuda_graphs=provider == "fastgan-graphs",
                          total_steps=10**9, backward="autograd" if provider == "fastgan-autograd" else "auto")
        target = [0]

        def call():
            target[0] += STEPS_PER_CALL
            trainer.train(data_source, target[0], batch, log_every=10**9)
    else:
        generator, discriminator = generator.to(DEVICE), discriminator.to(DEVICE)
        if provider.startswith("compile"):
            mode = "reduce-overhead" if provider == "compile-reduce-overhead" else None
            generator, discriminator = torch.compile(generator, mode=mode), torch.compile(discriminator, mode=mode)
        opt_g = torch.optim.Adam(generator.parameters(), 2e-4, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(discriminator.parameters(), 2e-4, betas=(0.5, 0.999))
        one_step = _eager_loop_step(generator, discriminator, opt_g, opt_d, sample_real, batch, latent_dim, autocast)

        def call():
            for _ in range(STEPS_PER_CALL):
                one_step()

    def step():
        call()
        synchronize()

    step()  # warm-up (compilation, graph capture after the trainer's warm-up steps)
    measure(step, unsynchronised=call, group=group)
    median = measure.benchmark.stats.stats.median / STEPS_PER_CALL
    info = measure.benchmark.extra_info
    info["steps_per_call"] = STEPS_PER_CALL
    info["it_per_s"] = 1 / median
    info["host_us"] /= STEPS_PER_CALL
    if info["launches"] is not None:
        info["launches"] /= STEPS_PER_CALL
    if per_image:
        info["images_per_s"] = batch / median


@pytest.mark.parametrize("provider", PROVIDERS)
def bench_toy_mlp_gan_step(measure, provider):
    def make_models():
        return models.MLPGenerator(8, 2, 128, 3, scale=4.15), models.MLPDiscriminator(2, 128, 3, scale=4.15)

    _run(measure, provider, make_models, lambda n: GRID.sample(n, device=DEVICE), GRID, 512, 8, False,
         "training step toy-mlp grid25 batch=512", per_image=False)


@pytest.mark.skipif(not GPU, reason="DCGAN-64 steps take seconds on a CPU")
@pytest.mark.parametrize("provider", PROVIDERS)
def bench_dcgan64_step(measure, provider):
    shapes = data.ShapesDataset(size=64)

    def make_models():
        return models.DCGANGenerator(100, 3, 64, 64), models.DCGANDiscriminator(3, 64, 64)

    _run(measure, provider, make_models, lambda n: shapes.sample(n, device=DEVICE), shapes, 128, 100, True,
         "training step dcgan64 bf16 batch=128", per_image=True)


def _examples_dcgan64(width: int = 64, latent: int = 100, channels: int = 3):
    """The PyTorch examples' DCGAN (examples/dcgan/main.py) as third-party code writes it:
    ``nn.Sequential`` BatchNorm2d + ReLU/LeakyReLU pairs; D ends in a logit (the BCE-with-logits form)."""
    nn = torch.nn
    up = [nn.ConvTranspose2d(latent, width * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(width * 8), nn.ReLU(True)]
    for scale in (8, 4, 2):
        up += [nn.ConvTranspose2d(width * scale, width * scale // 2, 4, 2, 1, bias=False),
               nn.BatchNorm2d(width * scale // 2), nn.ReLU(True)]
    generator = nn.Sequential(*up, nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh())
    down = [nn.Conv2d(channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    for scale in (1, 2, 4):
        down += [nn.Conv2d(width * scale, width * scale * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * scale * 2),
                 nn.LeakyReLU(0.2, inplace=True)]
    discriminator = nn.Sequential(*down, nn.Conv2d(width * 8, 1, 4, 1, 0, bias=False), nn.Flatten(0))
    return generator, discriminator


@pytest.mark.parametrize("provider", ["eager", "fastgan-drop-in"])
def bench_drop_in_dcgan64_step(measure, provider):
    """A third-party DCGAN training step (the PyTorch examples' loop, fp32, batch 32) as written
    (``eager``), and with fastgan dropped in (``fastgan-drop-in``: ``fastgan.fuse`` on both
    networks and ``fastgan.nn.BCEWithLogitsLoss``): the block and BCE kernels inside a real
    network, with convolutions keeping PyTorch's thread pool busy around them."""
    torch.manual_seed(0)
    generator, discriminator = (m.to(DEVICE) for m in _examples_dcgan64())
    criterion = torch.nn.BCEWithLogitsLoss()
    if provider == "fastgan-drop-in":
        generator, discriminator = fastgan.fuse(generator), fastgan.fuse(discriminator)
        criterion = fastgan.nn.BCEWithLogitsLoss()
    opt_g = torch.optim.Adam(generator.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), 2e-4, betas=(0.5, 0.999))
    batch = 32
    real = torch.rand(batch, 3, 64, 64, device=DEVICE) * 2 - 1
    ones, zeros = torch.ones(batch, device=DEVICE), torch.zeros(batch, device=DEVICE)
    synchronize = torch.cuda.synchronize if GPU else (lambda: None)

    def step():
        discriminator.zero_grad()
        fake = generator(torch.randn(batch, 100, 1, 1, device=DEVICE))
        (criterion(discriminator(real), ones) + criterion(discriminator(fake.detach()), zeros)).backward()
        opt_d.step()
        generator.zero_grad()
        criterion(discriminator(fake), ones).backward()
        opt_g.step()
        synchronize()

    for _ in range(2):
        step()
    measure(step, group="training step drop-in dcgan64 fp32 batch=32")
    median = measure.benchmark.stats.stats.median
    measure.benchmark.extra_info["it_per_s"] = 1 / median
    measure.benchmark.extra_info["images_per_s"] = batch / median
