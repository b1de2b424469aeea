"""Benchmarks of the BCE-with-logits family (``pytest bench --benchmark-only``).

Forward and forward+backward of the mean loss per call, float32 and bfloat16, at latency
sizes GANs use (256 and 1024 logits) and, on a GPU, a bandwidth size (2^26 logits, inputs
rotated so they do not sit in L2), against eager PyTorch and torch.compile. Compulsory bytes:
read x and the target, write the gradient (fwd+bwd), or read both (fwd).
"""

import pytest
import torch
import torch.nn.functional as F
from benchutil import DTYPES, GPU, Rotating, implementation

from fastgan.ops import bce_with_logits, gan_bce_losses

SIZES = [256, 1024, 2**26] if GPU else [256, 65536, 2**20]


def _inputs(n, dtype, device, requires_grad):
    return (torch.randn(n, device=device, dtype=dtype, requires_grad=requires_grad),
            torch.rand(n, device=device, dtype=dtype))


@pytest.mark.parametrize("backward", [True, False], ids=["fwd+bwd", "fwd"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n={n}")
def bench_bce_with_logits(measure, provider, device, synchronize, n, dtype, backward):
    dtype_name = str(dtype).removeprefix("torch.")
    benchmark_group = f"bce_with_logits {'fwd+bwd' if backward else 'fwd'} {dtype_name} n={n}"
    inputs = Rotating(lambda: _inputs(n, dtype, device, backward), 4 if n >= 2**20 else 1)
    loss = implementation(provider, lambda x, y: F.binary_cross_entropy_with_logits(x, y),
                          lambda backend: lambda x, y: bce_with_logits(x, y, backend=backend))

    def call():
        x, y = inputs.next()
        value = loss(x, y)
        if backward:
            value.backward()
        return value

    def step():
        call()
        synchronize()

    element = torch.finfo(dtype).bits // 8
    measure(step, unsynchronised=call, compulsory_bytes=n * element * (3 if backward else 2), group=benchmark_group)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n={n}")
def bench_gan_bce_losses_fwd_bwd(measure, provider, device, synchronize, n, dtype):
    dtype_name = str(dtype).removeprefix("torch.")
    real = torch.randn(n, 1, device=device, dtype=dtype, requires_grad=True)
    fake = torch.randn(n, 1, device=device, dtype=dtype, requires_grad=True)

    def eager(real, fake):
        d_loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + \
            F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        return d_loss, F.softplus(-fake).mean()

    losses = implementation(provider, eager, lambda backend: lambda r, f: tuple(gan_bce_losses(r, f, backend=backend)))

    def call():
        d_loss, g_loss = losses(real, fake)
        (d_loss + g_loss).backward()

    def step():
        call()
        synchronize()

    element = torch.finfo(dtype).bits // 8
    measure(step, unsynchronised=call, compulsory_bytes=4 * n * element, group=f"gan_bce_losses fwd+bwd {dtype_name} n={n}")
