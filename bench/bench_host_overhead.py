"""Host time per fwd+bwd call at 256 logits, and of the fused BatchNorm block at 8×32×16×16
(``pytest bench --benchmark-only -k host``).

What every kernel-backed call pays in Python before and after its launches, measured with the
launch stubbed out (``fastgan-host-path``), against two yardsticks timed in the same run:
``eager``, PyTorch's whole CPU op (its host time plus its arithmetic, for scale), and
``floor``, a do-nothing ``torch.autograd.Function`` with the same tensor inputs, outputs and
saved tensors, called and backpropagated the same way: the cost of the autograd engine alone,
which no Python op can go below. The goal: fastgan's host path ≤ eager's time and ≤ 1.25×
the floor. On a GPU eager pays a launch per kernel on top (about 9 for BCE fwd+bwd), fastgan
one or two, so this is where a loss over 64-1024 logits is won or lost.

``fastgan-cuda-host-path`` stubs one layer further down: the cuda backend's launchers run, and
only the extension's functions are no-ops, so their Python (addresses, dtype codes, strides,
the incoming gradient's layout) counts too; what the compiled binding spends parsing its
arguments (about 0.6 µs a call) and a GPU's current-stream lookup do not.
"""

import pytest
import torch
import torch.nn.functional as F

from fastgan import _backend
from fastgan.ops import batch_norm as batch_norm_module
from fastgan.ops import batch_norm_leaky_relu, bce_with_logits, gan_bce_losses, renyi_divergence
from fastgan.ops import bce as bce_module
from fastgan.ops import renyi as renyi_module

N = 256
PATHS = ["eager", "floor", "fastgan-host-path", "fastgan-cuda-host-path"]


class _BCEFloor(torch.autograd.Function):
    """bce_with_logits' shape of call: (x, y) in, a loss and a saved gradient out."""

    @staticmethod
    def forward(ctx, x, y):
        loss, grad = x.new_empty(()), x.new_empty(x.shape)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return grad_loss * grad, None


class _GanFloor(torch.autograd.Function):
    """gan_bce_losses' shape of call: two logit vectors in, two losses and their saved gradients."""

    @staticmethod
    def forward(ctx, real, fake):
        d_loss, g_loss = real.new_empty(()), fake.new_empty(())
        grad_d, grad_fake_g = real.new_empty((real.numel() + fake.numel(),)), fake.new_empty(fake.shape)
        ctx.save_for_backward(grad_d, grad_fake_g)
        return d_loss, g_loss

    @staticmethod
    def backward(ctx, grad_d_loss, grad_g_loss):
        grad_d, grad_fake_g = ctx.saved_tensors
        both = grad_d_loss * grad_d
        return both[: N], torch.addcmul(both[N:], grad_g_loss, grad_fake_g)


class _RenyiFloor(torch.autograd.Function):
    """renyi_divergence's shape of call: r in, the divergence out, r and two row statistics saved."""

    @staticmethod
    def forward(ctx, r):
        out, shift, expsum = r.new_empty(()), r.new_empty((1,)), r.new_empty((1,))
        ctx.save_for_backward(r, shift, expsum)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        r, _, _ = ctx.saved_tensors
        return r.new_empty(r.shape)


class _BatchNormFloor(torch.autograd.Function):
    """batch_norm_leaky_relu's shape of call: x, weight, bias and the running statistics in; y
    out; x, weight, bias and three vectors of C saved (the batch mean, its float32 rounding
    residual and invstd)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var):
        y = torch.empty_like(x)
        mean, residual, invstd = (x.new_empty(x.shape[1]) for _ in range(3))
        ctx.save_for_backward(x, weight, bias, mean, invstd, residual)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, _, _, _, _ = ctx.saved_tensors
        return torch.empty_like(x), weight.new_empty(weight.shape), weight.new_empty(weight.shape), None, None


def _timed(benchmark, fn) -> None:
    """``benchmark(fn)`` after one untimed call, as bench/conftest.py's ``measure`` does: the
    first call's one-off costs (imports, plans, caches) otherwise enter pytest-benchmark's
    calibration, and the first case of a session ran 5 rounds with them inside (the block's
    host path read 104-147 µs instead of 41 when its case came first)."""
    fn()
    benchmark(fn)


@pytest.fixture(autouse=True)
def _one_thread():
    """Host overhead is single-threaded; one intra-op thread keeps eager's 256-element op off
    the thread pool, whose wake-ups on a busy machine would dominate it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _stub_launches(monkeypatch):
    """fastgan's kernel path with every launch a no-op (and the triton backend chosen on any device)."""
    for module in (bce_module, renyi_module, batch_norm_module):
        monkeypatch.setattr(module, "_launcher", lambda backend, name: lambda *args, **kwargs: None)
    monkeypatch.setattr(bce_module._backend, "select_backend", lambda *args: "triton")


class _NoOpExtension:
    """The CUDA extension with every function a no-op."""

    def __getattr__(self, name):
        return lambda *args: None


def _stub_extension(monkeypatch):
    """fastgan's cuda backend on any device, its launchers run and the extension's calls no-ops."""
    extension = _NoOpExtension()
    monkeypatch.setattr(_backend, "extension", lambda: extension)
    monkeypatch.setattr(_backend, "select_backend", lambda *args: "cuda")


def _stub(monkeypatch, path):
    if path == "fastgan-host-path":
        _stub_launches(monkeypatch)
    else:
        _stub_extension(monkeypatch)


@pytest.mark.parametrize("path", PATHS)
def bench_bce_with_logits_host_overhead(benchmark, path, monkeypatch):
    benchmark.group = f"bce_with_logits host overhead fwd+bwd n={N}"
    x = torch.randn(N, requires_grad=True)
    y = torch.rand(N)
    if path == "eager":
        _timed(benchmark, lambda: F.binary_cross_entropy_with_logits(x, y).backward())
    elif path == "floor":
        _timed(benchmark, lambda: _BCEFloor.apply(x, y).backward())
    else:
        _stub(monkeypatch, path)
        _timed(benchmark, lambda: bce_with_logits(x, y).backward())


@pytest.mark.parametrize("path", PATHS)
def bench_gan_bce_losses_host_overhead(benchmark, path, monkeypatch):
    benchmark.group = f"gan_bce_losses host overhead fwd+bwd n={N}+{N}"
    real = torch.randn(N, requires_grad=True)
    fake = torch.randn(N, requires_grad=True)
    ones, zeros = torch.ones(N), torch.zeros(N)

    def eager():
        d_loss = F.binary_cross_entropy_with_logits(real, ones) + F.binary_cross_entropy_with_logits(fake, zeros)
        g_loss = F.binary_cross_entropy_with_logits(fake, ones)
        (d_loss + g_loss).backward()

    if path == "eager":
        _timed(benchmark, eager)
    elif path == "floor":
        _timed(benchmark, lambda: sum(_GanFloor.apply(real, fake)).backward())
    else:
        _stub(monkeypatch, path)
        _timed(benchmark, lambda: sum(gan_bce_losses(real, fake)).backward())


@pytest.mark.parametrize("path", PATHS)
def bench_renyi_divergence_host_overhead(benchmark, path, monkeypatch):
    benchmark.group = f"renyi_divergence host overhead fwd+bwd n={N}"
    r = torch.randn(N, requires_grad=True)
    alpha = 0.5
    log_n = torch.log(torch.tensor(float(N)))

    def eager():
        ((torch.logsumexp((1 - alpha) * r, 0) - log_n) / (alpha - 1)).backward()

    if path == "eager":
        _timed(benchmark, eager)
    elif path == "floor":
        _timed(benchmark, lambda: _RenyiFloor.apply(r).backward())
    else:
        _stub(monkeypatch, path)
        _timed(benchmark, lambda: renyi_divergence(r, alpha).backward())


@pytest.mark.parametrize("path", PATHS)
def bench_batch_norm_leaky_relu_host_overhead(benchmark, path, monkeypatch):
    benchmark.group = "batch_norm_leaky_relu host overhead train fwd+bwd 8x32x16x16"
    x = torch.randn(8, 32, 16, 16, requires_grad=True)
    grad = torch.randn_like(x)
    eager_block = torch.nn.Sequential(torch.nn.BatchNorm2d(32), torch.nn.LeakyReLU(0.2))
    weight = torch.ones(32, requires_grad=True)
    bias = torch.zeros(32, requires_grad=True)
    running_mean, running_var = torch.zeros(32), torch.ones(32)
    if path == "eager":
        _timed(benchmark, lambda: eager_block(x).backward(grad))
    elif path == "floor":
        _timed(benchmark, lambda: _BatchNormFloor.apply(x, weight, bias, running_mean, running_var).backward(grad))
    else:
        _stub(monkeypatch, path)
        _timed(benchmark, lambda: batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, True, 0.1, 1e-5, 0.2)
                  .backward(grad))
