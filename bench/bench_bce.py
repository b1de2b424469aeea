"""Benchmarks of the BCE-with-logits family against eager PyTorch (``pytest bench --benchmark-only``).

Forward+backward of the mean loss per call, at a latency size GANs use (256 logits) and, on a
GPU, at a bandwidth size (2^26 logits). On a CPU-only machine only the CPU-meaningful
providers run (eager PyTorch and fastgan's torch backend, whose cost there is host overhead);
the others are skipped with the reason. The full suite (GB/s, launches, peak memory,
torch.compile) is built on this file.
"""

import pytest
import torch
import torch.nn.functional as F

from fastgan.ops import bce_with_logits, gan_bce_losses

SIZES = [256, 2**26] if torch.cuda.is_available() else [256]


@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n={n}")
def bench_bce_with_logits_fwd_bwd(benchmark, provider, device, synchronize, n):
    benchmark.group = f"bce_with_logits fwd+bwd n={n}"
    x = torch.randn(n, device=device, requires_grad=True)
    y = torch.rand(n, device=device)

    def step():
        if provider == "eager":
            loss = F.binary_cross_entropy_with_logits(x, y)
        else:
            loss = bce_with_logits(x, y, backend=provider)
        loss.backward()
        synchronize()

    benchmark(step)


@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n={n}")
def bench_gan_bce_losses_fwd_bwd(benchmark, provider, device, synchronize, n):
    benchmark.group = f"gan_bce_losses fwd+bwd n={n}"
    real = torch.randn(n, 1, device=device, requires_grad=True)
    fake = torch.randn(n, 1, device=device, requires_grad=True)
    ones = torch.ones_like(real)
    zeros = torch.zeros_like(fake)

    def step():
        if provider == "eager":
            d_loss = F.binary_cross_entropy_with_logits(real, ones) + F.binary_cross_entropy_with_logits(fake, zeros)
            g_loss = F.softplus(-fake).mean()
        else:
            d_loss, g_loss = gan_bce_losses(real, fake, backend=provider)
        (d_loss + g_loss).backward()
        synchronize()

    benchmark(step)


@pytest.mark.parametrize("path", ["eager", "fastgan-host-path"])
def bench_bce_with_logits_host_overhead(benchmark, path, monkeypatch):
    """Host time per fwd+bwd call at 256 logits with fastgan's kernel launch stubbed out:
    the Python cost of validation, backend selection, planning, allocation and autograd that
    every kernel-backed call pays before its launch (eager: the whole CPU op, for scale)."""
    from fastgan.ops import bce as bce_module

    benchmark.group = "bce_with_logits host overhead n=256"
    x = torch.randn(256, requires_grad=True)
    y = torch.rand(256)
    if path == "eager":
        benchmark(lambda: F.binary_cross_entropy_with_logits(x, y).backward())
        return
    monkeypatch.setattr(bce_module, "_launcher", lambda backend, name: lambda *args, **kwargs: None)
    monkeypatch.setattr(bce_module._backend, "select_backend", lambda *args: "triton")
    benchmark(lambda: bce_with_logits(x, y).backward())
