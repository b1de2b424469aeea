"""The vectorised walks of the kernels (unmasked full blocks, tails masked in 16-element
groups, remainders, alignment specialised on strides and layouts) against float64
references, on the kernel backends, with every output allocation poisoned.

Sizes sit on and around the block (1024) and the vector group (16); operands start one
element past an aligned address; rows have strides that are and are not multiples of the
vector width; BatchNorm maps have H·W and C that are and are not multiples of 16, and an
incoming gradient in the other memory format.
"""

import math

import pytest
import torch

from fastgan.ops import _launch
from fastgan.ops.batch_norm import batch_norm_leaky_relu
from fastgan.ops.bce import bce_with_logits, gan_bce_losses
from fastgan.ops.renyi import renyi_divergence
from test_batch_norm import assert_matches, make_input, make_params, run_both
from test_bce import assert_matches_reference, logits, reference64
from test_renyi import textbook64, tolerance

BLOCK = _launch.BLOCK
# On and around the vector group and the block, a multi-block size with a tail and a
# remainder, and sizes past the single-program limit (several programs; a tail owned by a
# program other than the first).
COUNTS = [15, 16, 17, 1008, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17,
          _launch.SINGLE_PROGRAM_MAX_BLOCKS * BLOCK + 1, 21 * BLOCK + 40]


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every kernel output starts as NaN, so an element a walk skips shows."""
    real_output, real_output_like = _launch.output, _launch.output_like

    def output(like, shape, dtype=None):
        return real_output(like, shape, dtype).fill_(float("nan"))

    def output_like(like):
        return real_output_like(like).fill_(float("nan"))

    monkeypatch.setattr(_launch, "output", output)
    monkeypatch.setattr(_launch, "output_like", output_like)


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values in a view that starts one element past a 16-byte boundary."""
    base = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = base[1:].view(t.shape)
    view.copy_(t)
    assert view.data_ptr() % 16 != 0
    return view


@pytest.mark.parametrize("n", COUNTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_bce_tails_and_remainders(kernel_backend, device, n, dtype, reduction):
    x = logits((n,), device).to(dtype).requires_grad_()
    y = torch.rand(n, device=device, dtype=torch.float64).to(dtype)
    ours = bce_with_logits(x, y, reduction=reduction, backend=kernel_backend)
    (grad,) = torch.autograd.grad(ours.sum(), x)
    x64 = x.detach().double().requires_grad_()
    ref = reference64(x64, y, reduction=reduction)
    (ref_grad,) = torch.autograd.grad(ref.sum(), x64)
    torch_lowp = torch_grad = None
    if dtype != torch.float32:
        xt = x.detach().clone().requires_grad_()
        torch_lowp = torch.nn.functional.binary_cross_entropy_with_logits(xt, y, reduction=reduction)
        (torch_grad,) = torch.autograd.grad(torch_lowp.sum(), xt)
    grad_scale = torch.ones_like(ref_grad) / (n if reduction == "mean" else 1)
    assert_matches_reference(ours, torch_lowp, ref, dtype, "loss")
    assert_matches_reference(grad, torch_grad, ref_grad, dtype, "grad", scale=grad_scale)


@pytest.mark.parametrize("n", [17, BLOCK + 1, 3 * BLOCK + 17])
@pytest.mark.parametrize("which", ["input", "target", "both"])
def test_bce_misaligned_operands(kernel_backend, device, n, which):
    x64, y64 = logits((n,), device), torch.rand(n, device=device, dtype=torch.float64)
    x, y = x64.float(), y64.float()
    if which in ("input", "both"):
        x = misaligned(x)
    if which in ("target", "both"):
        y = misaligned(y)
    x.requires_grad_()
    ours = bce_with_logits(x, y, backend=kernel_backend)
    (grad,) = torch.autograd.grad(ours, x)
    x64 = x64.requires_grad_()
    ref = reference64(x64, y64)
    (ref_grad,) = torch.autograd.grad(ref, x64)
    assert_matches_reference(ours, None, ref, torch.float32, "loss")
    assert_matches_reference(grad, None, ref_grad, torch.float32, "grad", scale=torch.ones_like(ref_grad) / n)


@pytest.mark.parametrize("n_real,n_fake", [(15, 17), (16, 16), (1, BLOCK + 3), (BLOCK + 5, 100), (100, 1000),
                                           (9 * BLOCK + 7, 9 * BLOCK + 1)])
@pytest.mark.parametrize("layout", ["dense", "misaligned"])
def test_gan_bce_tails_and_shared_gradient_buffer(kernel_backend, device, n_real, n_fake, layout):
    real64, fake64 = logits((n_real,), device), logits((n_fake,), device)
    real, fake = real64.float(), fake64.float()
    if layout == "misaligned":
        real, fake = misaligned(real), misaligned(fake)
    real.requires_grad_()
    fake.requires_grad_()
    d_loss, g_loss = gan_bce_losses(real, fake, real_target=0.9, backend=kernel_backend)
    upstream_d, upstream_g = 1.5, -0.75
    grad_real, grad_fake = torch.autograd.grad([d_loss, g_loss], [real, fake],
                                               [torch.tensor(upstream_d), torch.tensor(upstream_g)])
    r, f = real64.requires_grad_(), fake64.requires_grad_()
    d64 = reference64(r, 0.9) + reference64(f, 0.0)
    g64 = reference64(f, 1.0)
    want_real, want_fake = torch.autograd.grad(upstream_d * d64 + upstream_g * g64, [r, f])
    assert_matches_reference(d_loss, None, d64, torch.float32, "d_loss")
    assert_matches_reference(g_loss, None, g64, torch.float32, "g_loss")
    for got, want, n in ((grad_real, want_real, n_real), (grad_fake, want_fake, n_fake)):
        assert_matches_reference(got, None, want, torch.float32, "grad", scale=torch.ones_like(want) * 2 / n)


@pytest.mark.parametrize("n", COUNTS)
@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_renyi_tails_and_remainders(kernel_backend, device, n, alpha):
    r = (torch.randn(n, device=device, dtype=torch.float64) * 2 + 0.8).float().requires_grad_()
    got = renyi_divergence(r, alpha, backend=kernel_backend)
    (grad,) = torch.autograd.grad(got, r, torch.tensor(1.25))
    r64 = r.detach().double().requires_grad_()
    want = textbook64(r64, alpha, 0)
    (want_grad,) = torch.autograd.grad(want, r64, torch.tensor(1.25, dtype=torch.float64))
    torch.testing.assert_close(got.double(), want, **tolerance(alpha, want))
    torch.testing.assert_close(grad.double(), want_grad, rtol=3e-5, atol=1e-6)


# Rows of n columns: row strides n (a multiple of 16, of 4, of 2 and odd), a padded row
# stride, a misaligned start and several splits per row.
@pytest.mark.parametrize("rows,n,pad", [(3, 64, 0), (3, 100, 0), (4, 34, 0), (3, 17, 0), (2, 100, 3), (3, 1041, 0),
                                        (2, 9 * BLOCK + 5, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_renyi_row_strides(kernel_backend, device, rows, n, pad, dtype):
    storage = (torch.randn(rows, n + pad, device=device, dtype=torch.float64) * 2 + 0.8).to(dtype)
    r = storage[:, :n]
    if pad:
        r = misaligned(storage)[:, pad:pad + n]
    r.requires_grad_()
    got = renyi_divergence(r, 2.0, dim=1, backend=kernel_backend)
    upstream = torch.randn(rows, device=device, dtype=torch.float64)
    (grad,) = torch.autograd.grad(got, r, upstream.to(dtype))
    r64 = r.detach().double().requires_grad_()
    want = textbook64(r64, 2.0, 1)
    (want_grad,) = torch.autograd.grad(want, r64, upstream.to(dtype).double())
    if dtype == torch.float32:
        torch.testing.assert_close(got.double(), want, **tolerance(2.0, want))
        torch.testing.assert_close(grad.double(), want_grad, rtol=3e-5, atol=1e-6)
    else:  # the inputs are bfloat16 values, exact in float64; the results are rounded once
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(got.double(), want, rtol=2 * eps, atol=2 * eps)
        torch.testing.assert_close(grad.double(), want_grad, rtol=2 * eps, atol=2 * eps * want_grad.abs().max().item())
    assert math.isfinite(got.double().sum().item())


# (shape, channels_last): H·W a multiple of 16, of 4 (6x6), of 2 (2x5) and odd (7x7, 1x1);
# C a multiple of 16, of 4, of 2 and odd in channels_last.
BN_SHAPES = [((2, 3, 4, 4), False), ((3, 2, 6, 6), False), ((3, 5, 2, 5), False), ((2, 3, 7, 7), False),
             ((5, 3, 1, 1), False), ((2, 16, 3, 3), True), ((2, 12, 3, 3), True), ((2, 6, 3, 2), True),
             ((2, 17, 2, 3), True), ((40, 24), False)]


@pytest.mark.parametrize("shape,channels_last", BN_SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_alignment_specialisations(kernel_backend, device, shape, channels_last, training):
    x = make_input(shape, channels_last, device)
    weight, bias, running_mean, running_var = make_params(shape[1], device)
    if not training:
        running_mean.copy_(x.double().mean([0] + list(range(2, x.dim()))).to(running_mean.dtype) + 0.5)
        running_var.mul_(60.0)
    ours, want = run_both(kernel_backend, x, weight, bias, running_mean, running_var, training)
    assert_matches(ours, want)


@pytest.mark.parametrize("shape", [(2, 8, 4, 4), (3, 12, 7, 5)], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_batch_norm_gradient_in_the_other_layout(kernel_backend, device, shape, channels_last, dtype):
    """The incoming gradient arrives in the other memory format: it is relaid out once, and
    the gradients match those of a gradient in x's own layout exactly."""
    x = make_input(shape, channels_last, device, dtype).requires_grad_()
    weight, bias, running_mean, running_var = make_params(shape[1], device)
    y = batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, True, 0.1, 1e-5, 0.2,
                              backend=kernel_backend)
    upstream = torch.randn(shape, device=device).to(dtype)
    other = torch.contiguous_format if channels_last else torch.channels_last
    same = torch.autograd.grad(y, [x, weight, bias], upstream.contiguous(memory_format=torch.channels_last
                                                                        if channels_last else torch.contiguous_format),
                               retain_graph=True)
    swapped = torch.autograd.grad(y, [x, weight, bias], upstream.contiguous(memory_format=other))
    for a, b in zip(same, swapped):
        assert torch.equal(a, b)
    assert same[0].stride() == x.stride()
    x64 = x.detach().double()
    ours, want = run_both(kernel_backend, x64.to(dtype), weight, bias, running_mean.clone(), running_var.clone(), True)
    assert not torch.isnan(swapped[0]).any()
    if dtype == torch.float32:
        assert_matches(ours, want)
