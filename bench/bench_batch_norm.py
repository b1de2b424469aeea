"""Benchmarks of fused BatchNorm + LeakyReLU against eager ``F.leaky_relu(F.batch_norm(...))``
(cuDNN on a GPU) and torch.compile: training forward+backward and eval forward per call,
NCHW and channels_last, float32 and bfloat16, at (64, 128, 16, 16) and, on a GPU,
(128, 256, 32, 32) (a small shape on a CPU). ``extra_info["saved_activation_bytes"]``
records the activation-sized tensors autograd keeps for the backward, the memory the fusion
halves. Compulsory bytes: training fwd+bwd reads x twice and writes y, then reads x and dy
twice and writes dx (8 activation passes); eval reads x and writes y (2 passes).
"""

import pytest
import torch
import torch.nn.functional as F
from benchutil import DTYPES, GPU, implementation

from fastgan.ops import batch_norm_leaky_relu

SHAPES = [(64, 128, 16, 16), (128, 256, 32, 32)] if GPU else [(8, 32, 16, 16), (32, 64, 16, 16)]
SLOPE = 0.2


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


@pytest.mark.parametrize("training", [True, False], ids=["train-fwd+bwd", "eval-fwd"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def bench_batch_norm_leaky_relu(measure, provider, device, synchronize, shape, channels_last, dtype, training):
    x = torch.randn(shape, device=device, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(training)
    channels = shape[1]
    weight = torch.ones(channels, device=device, requires_grad=training)
    bias = torch.zeros(channels, device=device, requires_grad=training)
    running_mean, running_var = torch.zeros(channels, device=device), torch.ones(channels, device=device)

    def eager(x, weight, bias):
        return F.leaky_relu(F.batch_norm(x, running_mean, running_var, weight, bias, training, 0.1, 1e-5), SLOPE)

    block = implementation(
        provider, eager,
        lambda backend: lambda x, w, b: batch_norm_leaky_relu(x, w, b, running_mean, running_var, training, 0.1, 1e-5,
                                                              SLOPE, backend=backend),
    )
    grad = torch.randn_like(x)

    def call():
        y = block(x, weight, bias)
        if training:
            torch.autograd.grad(y, (x, weight, bias), grad)

    def step():
        call()
        synchronize()

    element = torch.finfo(dtype).bits // 8
    mode = "train fwd+bwd" if training else "eval fwd"
    fmt = "channels_last" if channels_last else "nchw"
    measure(step, unsynchronised=call, compulsory_bytes=x.numel() * element * (8 if training else 2),
            group=f"batch_norm_leaky_relu {mode} {fmt} {str(dtype).removeprefix('torch.')} {'x'.join(map(str, shape))}",
            saved_activation_bytes=saved_activation_bytes(lambda: block(x, weight, bias), x) if training else 0)
