"""Benchmarks of the Rényi-α divergence reduction against the eager logsumexp code a user writes
(``pytest bench --benchmark-only``): forward+backward per call at 256 logits and, on a GPU, 2^26.
On a CPU-only machine only the CPU-meaningful providers run; the others skip with the reason.
"""

import math

import pytest
import torch

from fastgan.ops import renyi_divergence

SIZES = [256, 2**26] if torch.cuda.is_available() else [256]
ALPHA = 0.5


def eager_renyi(r, alpha):
    """The plain PyTorch a user writes today (from the reading): logsumexp, then the scaling."""
    return (torch.logsumexp((1 - alpha) * r, dim=0) - math.log(r.shape[0])) / (alpha - 1)


@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"n={n}")
def bench_renyi_divergence_fwd_bwd(benchmark, provider, device, synchronize, n):
    benchmark.group = f"renyi_divergence fwd+bwd n={n}"
    r = torch.randn(n, device=device, requires_grad=True)

    def step():
        value = eager_renyi(r, ALPHA) if provider == "eager" else renyi_divergence(r, ALPHA, backend=provider)
        value.backward()
        synchronize()

    benchmark(step)
