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

from fastgan import _backend
from fastgan.ops import bce_with_logits, gan_bce_losses

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")
SIZES = [256, 2**26] if GPU else [256]


def _provider_params():
    params = [pytest.param("eager", id="eager")]
    for name in ("torch", "triton", "cuda"):
        reason = "" if name == "torch" else _backend._why_not(name, DEVICE, torch.float32)
        if name == "triton" and not GPU:
            reason = "timing the Triton interpreter measures nothing"
        marks = [pytest.mark.skip(reason=f"fastgan {name}: {reason}")] if reason else []
        params.append(pytest.param(name, id=f"fastgan-{name}", marks=marks))
    return params


def _sync():
    if GPU:
        torch.cuda.synchronize()


@pytest.mark.parametrize("provider", _provider_params())
@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n={n}")
def bench_bce_with_logits_fwd_bwd(benchmark, provider, n):
    benchmark.group = f"bce_with_logits fwd+bwd n={n}"
    x = torch.randn(n, device=DEVICE, requires_grad=True)
    y = torch.rand(n, device=DEVICE)

    def step():
        if provider == "eager":
            loss = F.binary_cross_entropy_with_logits(x, y)
        else:
            loss = bce_with_logits(x, y, backend=provider)
        loss.backward()
        _sync()

    benchmark(step)


@pytest.mark.parametrize("provider", _provider_params())
@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n={n}")
def bench_gan_bce_losses_fwd_bwd(benchmark, provider, n):
    benchmark.group = f"gan_bce_losses fwd+bwd n={n}"
    real = torch.randn(n, 1, device=DEVICE, requires_grad=True)
    fake = torch.randn(n, 1, device=DEVICE, requires_grad=True)
    ones = torch.ones_like(real)
    zeros = torch.zeros_like(fake)

    def step():
        if provider == "eager":
            d_loss = F.binary_cross_entropy_with_logits(real, ones) + F.binary_cross_entropy_with_logits(fake, zeros)
            g_loss = F.softplus(-fake).mean()
        else:
            d_loss, g_loss = gan_bce_losses(real, fake, backend=provider)
        (d_loss + g_loss).backward()
        _sync()

    benchmark(step)


@pytest.mark.parametrize("provider", ["eager", "fastgan-host-path"])
def bench_bce_with_logits_host_overhead(benchmark, provider, monkeypatch):
    """Host time per fwd+bwd call at 256 logits with fastgan's kernel launch stubbed out:
    the Python cost of validation, backend selection, planning, allocation and autograd that
    every kernel-backed call pays before its launch (eager: the whole CPU op, for scale)."""
    from fastgan.ops import bce as bce_module

    benchmark.group = "bce_with_logits host overhead n=256"
    x = torch.randn(256, requires_grad=True)
    y = torch.rand(256)
    if provider == "eager":
        benchmark(lambda: F.binary_cross_entropy_with_logits(x, y).backward())
        return
    monkeypatch.setattr(bce_module, "_launcher", lambda backend, name: lambda *args, **kwargs: None)
    monkeypatch.setattr(bce_module._backend, "select_backend", lambda *args: "triton")
    benchmark(lambda: bce_with_logits(x, y).backward())
