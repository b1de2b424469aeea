"""Benchmarks of fused BatchNorm + LeakyReLU against eager ``F.leaky_relu(F.batch_norm(...))``
(cuDNN on a GPU): training forward+backward per call, both memory formats, at the DCGAN
shapes (N, C, H, W) = (128, 256, 16, 16) and (64, 64, 64, 64) on a GPU (a small shape on a
CPU). ``extra_info["saved_activation_bytes"]`` records the activation-sized tensors autograd
keeps for the backward, the memory the fusion is meant to halve.
"""

import pytest
import torch
import torch.nn.functional as F

from fastgan.ops import batch_norm_leaky_relu

SHAPES = [(128, 256, 16, 16), (64, 64, 64, 64)] if torch.cuda.is_available() else [(8, 32, 16, 16)]
SLOPE = 0.2


def eager_block(x, weight, bias, running_mean, running_var):
    return F.leaky_relu(F.batch_norm(x, running_mean, running_var, weight, bias, True, 0.1, 1e-5), SLOPE)


def saved_activation_bytes(fn, x):
    """Bytes of the activation-sized tensors autograd saves for one call of ``fn``."""
    sizes = []

    def pack(t):
        if t.numel() == x.numel():
            sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(sizes)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def bench_batch_norm_leaky_relu_fwd_bwd(benchmark, provider, device, synchronize, shape, channels_last):
    benchmark.group = f"batch_norm_leaky_relu fwd+bwd {'x'.join(map(str, shape))} {'channels_last' if channels_last else 'nchw'}"
    x = torch.randn(shape, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    channels = shape[1]
    weight = torch.ones(channels, device=device, requires_grad=True)
    bias = torch.zeros(channels, device=device, requires_grad=True)
    running_mean, running_var = torch.zeros(channels, device=device), torch.ones(channels, device=device)

    def forward():
        if provider == "eager":
            return eager_block(x, weight, bias, running_mean, running_var)
        return batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, True, 0.1, 1e-5, SLOPE,
                                     backend=provider)

    grad = torch.randn_like(x)
    benchmark.extra_info["saved_activation_bytes"] = saved_activation_bytes(forward, x)

    def step():
        torch.autograd.grad(forward(), (x, weight, bias), grad)
        synchronize()

    benchmark(step)
