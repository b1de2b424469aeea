"""Benchmarks of the Rényi-α divergence reduction against the eager logsumexp code a user
writes (``pytest bench --benchmark-only``): forward and forward+backward per call, float32
and bfloat16, at 256 logits and, on a GPU, 2^26 (inputs rotated so they do not sit in L2).
Compulsory bytes: read r (fwd); read r, read r again and write the gradient (fwd+bwd).
"""

import math

import pytest
import torch
from benchutil import DTYPES, GPU, Rotating, implementation

from fastgan.ops import renyi_divergence

SIZES = [256, 2**26] if GPU else [256, 65536, 2**20]
ALPHA = 0.5


def eager_renyi(r):
    """The plain PyTorch a user writes today (from the reading): logsumexp, then the scaling."""
    return (torch.logsumexp((1 - ALPHA) * r, dim=0) - math.log(r.shape[0])) / (ALPHA - 1)


@pytest.mark.parametrize("backward", [True, False], ids=["fwd+bwd", "fwd"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n={n}")
def bench_renyi_divergence(measure, provider, device, synchronize, n, dtype, backward):
    inputs = Rotating(lambda: torch.randn(n, device=device, dtype=dtype, requires_grad=backward), 4 if n >= 2**20 else 1)
    divergence = implementation(provider, eager_renyi, lambda backend: lambda r: renyi_divergence(r, ALPHA, backend=backend))

    def call():
        value = divergence(inputs.next())
        if backward:
            value.backward()

    def step():
        call()
        synchronize()

    element = torch.finfo(dtype).bits // 8
    measure(step, unsynchronised=call, compulsory_bytes=n * element * (3 if backward else 1),
            group=f"renyi_divergence {'fwd+bwd' if backward else 'fwd'} {str(dtype).removeprefix('torch.')} n={n}")


# G estimates at once: the columns of an (N, G) input reduced over dim 0.
COLUMN_SHAPES = [(256, 4), (2**22, 16)] if GPU else [(256, 4), (4096, 64)]


@pytest.mark.parametrize("backward", [True, False], ids=["fwd+bwd", "fwd"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", COLUMN_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def bench_renyi_divergence_columns(measure, provider, device, synchronize, shape, dtype, backward):
    n, g = shape
    inputs = Rotating(lambda: torch.randn(n, g, device=device, dtype=dtype, requires_grad=backward),
                      4 if n * g >= 2**20 else 1)
    divergence = implementation(provider, eager_renyi, lambda backend: lambda r: renyi_divergence(r, ALPHA, backend=backend))

    def call():
        value = divergence(inputs.next())
        if backward:
            value.sum().backward()

    def step():
        call()
        synchronize()

    element = torch.finfo(dtype).bits // 8
    measure(step, unsynchronised=call, compulsory_bytes=n * g * element * (3 if backward else 1),
            group=f"renyi_divergence columns {'fwd+bwd' if backward else 'fwd'} {str(dtype).removeprefix('torch.')} {n}x{g}")
