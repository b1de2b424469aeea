"""Kernel launches per op call, counted on the CPU (fastgan.ops._launch.count_launches).

In the latency regime (up to 16,384 logits, the batch sizes of GAN training) the BCE losses
and the Rényi forward must cost one launch per direction: launch overhead, not bandwidth,
is their whole cost there. Triton launches are counted under the interpreter, CUDA launches
under emulation (FASTGAN_CUDA_EMULATE=1), and the ATen operators an autograd backward runs
count as launches too. Beyond the latency regime the reductions take a second, finishing
launch; the counts below say so exactly, so that a change adding a launch fails here.
"""

import pytest
import torch

from fastgan.ops import _launch, batch_norm_leaky_relu, bce_with_logits, gan_bce_losses, renyi_divergence

LATENCY_LIMIT = _launch.SINGLE_PROGRAM_MAX_BLOCKS * _launch.BLOCK  # 16,384 logits


def logits(n, device, dtype=torch.float32):
    return (torch.randn(n, device=device) * 3 + 0.5).to(dtype).requires_grad_()


def launches(fn):
    """The kernel launches of ``fn()`` (after a first call that may do one-time work)."""
    fn()
    with _launch.count_launches() as count:
        fn()
    return count


def directions(forward, inputs):
    """(forward launches, backward launches) of one op call; the backward is
    ``torch.autograd.grad`` of the outputs with respect to ``inputs``."""
    forward()  # one-time work (the emulated extension's first load, Triton's first launch)
    with _launch.count_launches() as forward_count:
        outputs = forward()
    grads = [torch.ones_like(o) for o in outputs]
    with _launch.count_launches() as backward_count:
        torch.autograd.grad(outputs, inputs, grads)
    return forward_count, backward_count


def test_latency_limit_is_16384_logits():
    assert LATENCY_LIMIT == 16384


@pytest.mark.parametrize("n", [1, 100, 1000, 1024, 16383, LATENCY_LIMIT])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bce_one_launch_per_direction(kernel_backend, device, n, dtype):
    x, y = logits(n, device, dtype), torch.rand(n, device=device).to(dtype)
    forward, backward = directions(lambda: (bce_with_logits(x, y, backend=kernel_backend),), [x])
    assert forward.total == 1, forward.names
    assert backward.total == 1, backward.names


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_bce_other_reductions_one_launch_per_direction(kernel_backend, device, reduction):
    x, y = logits(777, device), torch.rand(777, device=device)
    forward, backward = directions(lambda: (bce_with_logits(x, y, reduction=reduction, backend=kernel_backend),), [x])
    assert (forward.total, backward.total) == (1, 1), (forward.names, backward.names)


@pytest.mark.parametrize("n_real,n_fake", [(1, 1), (64, 64), (100, 37), (8192, 8192), (8000, 8384)])
def test_gan_bce_one_launch_per_direction(kernel_backend, device, n_real, n_fake):
    """Both inputs' logits together within the latency limit: one launch forward, one
    multiply backward for d_loss (the discriminator step), one for g_loss (the generator's)."""
    real, fake = logits(n_real, device), logits(n_fake, device)
    forward, d_backward = directions(lambda: (gan_bce_losses(real, fake, backend=kernel_backend).d_loss,),
                                     [real, fake])
    assert forward.total == 1, forward.names
    assert d_backward.total == 1, d_backward.names
    _, g_backward = directions(lambda: (gan_bce_losses(real, fake, backend=kernel_backend).g_loss,), [fake])
    assert g_backward.total == 1, g_backward.names


def test_gan_bce_both_losses_backward_is_two_launches(kernel_backend, device):
    """Differentiating d_loss and g_loss together adds the generator term to the fake
    gradient: a multiply and an addcmul."""
    real, fake = logits(64, device), logits(64, device)
    forward, backward = directions(lambda: tuple(gan_bce_losses(real, fake, backend=kernel_backend)), [real, fake])
    assert (forward.total, backward.total) == (1, 2), (forward.names, backward.names)


@pytest.mark.parametrize("n", [1, 100, 1000, LATENCY_LIMIT])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_renyi_one_launch_per_direction(kernel_backend, device, n, alpha):
    r = logits(n, device)
    forward, backward = directions(lambda: (renyi_divergence(r, alpha, backend=kernel_backend),), [r])
    assert (forward.total, backward.total) == (1, 1), (forward.names, backward.names)


def test_beyond_the_latency_regime_a_finishing_launch(kernel_backend, device):
    """One more logit than the limit: the reductions split over programs and a second,
    finishing kernel sums their partials, in both BCE forms and in Rényi."""
    n = LATENCY_LIMIT + 1
    x, y = logits(n, device), torch.rand(n, device=device)
    assert launches(lambda: bce_with_logits(x, y, backend=kernel_backend)).total == 2
    assert launches(lambda: gan_bce_losses(x, y, backend=kernel_backend)).total == 2
    assert launches(lambda: renyi_divergence(x, 0.5, backend=kernel_backend)).total == 2


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_batch_norm_launches(kernel_backend, device, memory_format):
    """Training: statistics, finalize, normalise forward; reduce, finalize, dx backward.
    Eval: one pass each way. An incoming gradient in the other memory format costs one copy."""
    c = 8
    x = (torch.randn(2, c, 5, 3, device=device) + 1).contiguous(memory_format=memory_format).requires_grad_()
    weight = (torch.rand(c, device=device) + 0.5).requires_grad_()
    bias = torch.randn(c, device=device).requires_grad_()
    running_mean, running_var = torch.zeros(c, device=device), torch.ones(c, device=device)

    def call(training):
        return (batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, training, 0.1, 1e-5, 0.2,
                                      backend=kernel_backend),)

    forward, backward = directions(lambda: call(True), [x, weight, bias])
    assert (forward.total, backward.total) == (3, 3), (forward.names, backward.names)
    forward, backward = directions(lambda: call(False), [x, weight, bias])
    assert (forward.total, backward.total) == (1, 3), (forward.names, backward.names)
    other = torch.channels_last if memory_format == torch.contiguous_format else torch.contiguous_format
    y = call(True)[0]
    grad = torch.ones_like(y).contiguous(memory_format=other)
    with _launch.count_launches() as count:
        torch.autograd.grad(y, [x], grad)
    assert count.total == 4 and count.torch == 1, count.names
