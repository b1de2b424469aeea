"""Training-step benchmarks: one GAN step (a D update and a G update) per call.

* toy MLP GAN on grid25, batch 512: a plain eager PyTorch loop, that loop with the models
  under ``torch.compile`` (default, and ``mode="reduce-overhead"`` on a GPU), fastgan's
  Trainer without and (on a GPU) with CUDA graphs;
* DCGAN-64, batch 128, bf16 autocast (GPU only: a CPU step takes seconds).

``extra_info``: it/s (and images/s) from the median step time, peak memory on a GPU.
"""

import pytest
import torch
import torch.nn.functional as F
from benchutil import DEVICE, GPU

from fastgan import Trainer, data, models

GRID = data.toy_mixture("grid25")
PROVIDERS = [
    pytest.param("eager-loop", id="eager-loop"),
    pytest.param("compile", id="compile"),
    pytest.param("compile-reduce-overhead", id="compile-reduce-overhead",
                 marks=pytest.mark.skipif(not GPU, reason="reduce-overhead is CUDA graphs: needs a GPU")),
    pytest.param("fastgan", id="fastgan"),
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
                          total_steps=10**9)
        target = [0]

        def call():
            target[0] += 1
            trainer.train(data_source, target[0], batch, log_every=10**9)
    else:
        generator, discriminator = generator.to(DEVICE), discriminator.to(DEVICE)
        if provider.startswith("compile"):
            mode = "reduce-overhead" if provider == "compile-reduce-overhead" else None
            generator, discriminator = torch.compile(generator, mode=mode), torch.compile(discriminator, mode=mode)
        opt_g = torch.optim.Adam(generator.parameters(), 2e-4, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(discriminator.parameters(), 2e-4, betas=(0.5, 0.999))
        call = _eager_loop_step(generator, discriminator, opt_g, opt_d, sample_real, batch, latent_dim, autocast)

    def step():
        call()
        synchronize()

    for _ in range(5):  # warm-up (compilation, graph capture after the trainer's warm-up steps)
        step()
    measure(step, unsynchronised=call, group=group)
    median = measure.benchmark.stats.stats.median
    measure.benchmark.extra_info["it_per_s"] = 1 / median
    if per_image:
        measure.benchmark.extra_info["images_per_s"] = batch / median


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
