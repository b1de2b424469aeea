"""fastgan.ops.bce_with_logits and gan_bce_losses against float64 references, on every backend."""

import math
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan import _backend, _native
from fastgan.ops import _launch, bce as bce_module
from fastgan.ops.bce import bce_with_logits, bce_with_logits_reference, gan_bce_losses, gan_bce_losses_reference

# (dtype, rtol, atol) for float32; half-precision tolerances come from PyTorch's own error.
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Odd sizes: 1, primes, 2^k +- 1, a size past the single-program limit (several programs
# and the finishing kernel), and multi-dimensional shapes; and multiples of the 16-byte pack
# width (8 halves, 4 floats), walked in packs with no tail.
SHAPES = [(1,), (7,), (1023,), (1025,), (3, 17), (5, 1, 13), (_launch.BLOCK * _launch.SINGLE_PROGRAM_MAX_BLOCKS + 3,),
          (16,), (4, 64)]
REDUCTIONS = ["mean", "sum", "none"]


def logits(shape, device, scale=4.0, mean=0.7):
    """Non-zero-mean logits with a spread that reaches the saturated regions."""
    return torch.randn(shape, device=device, dtype=torch.float64) * scale + mean


def reference64(input, target, weight=None, pos_weight=None, reduction="mean"):
    """The float64 reference on float64 copies (leaves that require grad are kept as they are)."""

    def up(t):
        return t if not isinstance(t, torch.Tensor) else t.double() if t.requires_grad else t.detach().double()

    return bce_with_logits_reference(up(input), up(target), up(weight), up(pos_weight), reduction)


def assert_matches_reference(ours, torch_lowp, ref64, dtype, what="", scale=None):
    """Without ``torch_lowp``: a tight float32 tolerance. With it (PyTorch's own result in
    ``dtype``): at most twice PyTorch's worst error against the float64 reference, plus two
    units in the last place of ``scale`` (the magnitude of the terms the value is made of;
    default the value itself), since on a few elements PyTorch may be exact by luck."""
    ours64 = ours.detach().double()
    ref64 = ref64.detach().double()
    assert ours.shape == ref64.shape, what
    finite = torch.isfinite(ref64)
    assert torch.equal(torch.isfinite(ours64), finite), f"{what}: non-finite pattern differs"
    assert torch.equal(torch.isnan(ours64), torch.isnan(ref64)), f"{what}: NaN pattern differs"
    if torch_lowp is None:
        torch.testing.assert_close(ours64[finite], ref64[finite], rtol=2e-5, atol=1e-6, msg=lambda m: f"{what}: {m}")
        return
    eps = torch.finfo(dtype).eps
    torch_error = (torch_lowp.detach().double() - ref64)[finite].abs()
    allowed = 2 * (torch_error.max().item() if torch_error.numel() else 0.0)
    magnitude = (ref64 if scale is None else scale.double()).abs()[finite]
    allowed += 2 * eps * magnitude.max().item() if magnitude.numel() else 0.0
    our_error = (ours64 - ref64)[finite].abs()
    assert our_error.numel() == 0 or our_error.max().item() <= allowed + 1e-12, (
        f"{what}: error {our_error.max().item():.3e} > allowed {allowed:.3e} (PyTorch's own error x2 + 1 ulp)"
    )


# ---------------------------------------------------------------------------------------
# The reference itself.
# ---------------------------------------------------------------------------------------


def test_reference_matches_textbook_formula_in_float64():
    x = logits((257,), "cpu", scale=3.0)
    y = torch.rand(257, dtype=torch.float64)
    pw = torch.rand(257, dtype=torch.float64) * 3
    w = torch.rand(257, dtype=torch.float64)
    p = torch.sigmoid(x)
    textbook = -w * (pw * y * torch.log(p) + (1 - y) * torch.log1p(-p))
    ours = bce_with_logits_reference(x, y, w, pw, reduction="none")
    torch.testing.assert_close(ours, textbook, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(x, y, w, pos_weight=pw, reduction="none"))


def test_reference_gradcheck_float64():
    x = logits((6, 5), "cpu").requires_grad_()
    y = torch.rand(6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.rand(5, dtype=torch.float64, requires_grad=True)
    pw = (torch.rand(1, 5, dtype=torch.float64) + 0.5).requires_grad_()
    for reduction in REDUCTIONS:
        fn = lambda *a: bce_with_logits_reference(*a, reduction=reduction)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, y, w, pw))
        assert torch.autograd.gradgradcheck(fn, (x, y, w, pw))
    real = logits((9,), "cpu").requires_grad_()
    fake = logits((4, 3), "cpu").requires_grad_()
    assert torch.autograd.gradcheck(lambda r, f: tuple(gan_bce_losses_reference(r, f, 0.9, 0.05)), (real, fake))


def test_closed_form_gradients_match_autograd_float64():
    x = logits((4, 6), "cpu").requires_grad_()
    y = torch.rand(4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.rand(6, dtype=torch.float64, requires_grad=True)
    pw = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()
    loss = bce_with_logits_reference(x, y, w, pw, reduction="none")
    expected = torch.autograd.grad(loss.sum(), (x, y, w, pw))
    grads = bce_module.bce_with_logits_grads(x, y, w, pw, (True, True, True, True))
    for grad, want, like in zip(grads, expected, (x, y, w, pw)):
        torch.testing.assert_close(grad.sum_to_size(like.shape), want)


# ---------------------------------------------------------------------------------------
# bce_with_logits on every backend.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_bce_matches_reference(backend, device, shape, reduction, dtype):
    x64 = logits(shape, device)
    y64 = torch.rand(shape, device=device, dtype=torch.float64)
    x = x64.to(dtype).requires_grad_()
    y = y64.to(dtype)
    ours = bce_with_logits(x, y, reduction=reduction, backend=backend)
    (our_grad,) = torch.autograd.grad(ours.sum(), x)

    xr = x.detach().double().requires_grad_()
    ref = reference64(xr, y, reduction=reduction)
    (ref_grad,) = torch.autograd.grad(ref.sum(), xr)
    xt = x.detach().clone().requires_grad_()
    torch_lowp = F.binary_cross_entropy_with_logits(xt, y, reduction=reduction)
    (torch_grad,) = torch.autograd.grad(torch_lowp.sum(), xt)

    assert ours.dtype == dtype and our_grad.dtype == dtype
    if dtype == torch.float32:
        torch_lowp = torch_grad = None  # tight float32 tolerance
    # The gradient sigmoid(x) - y is a difference of terms of size up to 1 (over N for a mean).
    grad_scale = torch.ones_like(ref_grad) / (x.numel() if reduction == "mean" else 1)
    assert_matches_reference(ours, torch_lowp, ref, dtype, "loss")
    assert_matches_reference(our_grad, torch_grad, ref_grad, dtype, "grad", scale=grad_scale)


WEIGHT_SHAPES = {
    "full": lambda shape: shape,
    "last_dim": lambda shape: shape[-1:],
    "scalar": lambda shape: (),
    "leading_one": lambda shape: (1,) + shape[1:],
}


@pytest.mark.parametrize("shape", [(7,), (3, 17), (5, 2, 9)], ids=str)
@pytest.mark.parametrize("weight_kind", [None, "full", "last_dim", "scalar"])
@pytest.mark.parametrize("pos_weight_kind", [None, "last_dim", "leading_one"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_weight_and_pos_weight_broadcasting(backend, device, shape, weight_kind, pos_weight_kind, reduction):
    x = logits(shape, device).float().requires_grad_()
    y = torch.rand(shape, device=device)
    w = None if weight_kind is None else torch.rand(WEIGHT_SHAPES[weight_kind](shape), device=device) + 0.1
    pw = None
    if pos_weight_kind is not None:
        pw = torch.rand(WEIGHT_SHAPES[pos_weight_kind](shape), device=device) * 3 + 0.2
    ours = bce_with_logits(x, y, w, pw, reduction=reduction, backend=backend)
    (our_grad,) = torch.autograd.grad(ours.sum(), x)
    xr = x.detach().double().requires_grad_()
    ref = reference64(xr, y, w, pw, reduction)
    (ref_grad,) = torch.autograd.grad(ref.sum(), xr)
    assert_matches_reference(ours, None, ref, torch.float32, "loss")
    assert_matches_reference(our_grad, None, ref_grad, torch.float32, "grad")
    torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(x, y, w, reduction=reduction, pos_weight=pw))


# Dense operands the cuda kernels walk in 16-byte packs (aligned; n = 64, or 67 with a
# 3-element tail), and dense ones they walk element by element (one operand starting one
# element into its storage, as x[1:] does), with every optional operand present.
PACK_LAYOUTS = ["aligned_64", "aligned_67", "input_offset_by_one", "target_offset_by_one", "weight_offset_by_one"]


def dense(values, offset_by_one):
    """A dense copy of ``values``, starting one element into its storage when asked."""
    if not offset_by_one:
        return values.clone()
    storage = torch.empty(values.numel() + 1, dtype=values.dtype, device=values.device)
    view = storage[1:].view(values.shape)
    view.copy_(values)
    return view


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", PACK_LAYOUTS)
def test_bce_packed_and_element_walks(backend, device, layout, reduction, dtype):
    n = 67 if layout == "aligned_67" else 64
    x = dense(logits((n,), device).to(dtype), layout == "input_offset_by_one").requires_grad_()
    y = dense(torch.rand(n, device=device).to(dtype), layout == "target_offset_by_one")
    w = dense((torch.rand(n, device=device) + 0.1).to(dtype), layout == "weight_offset_by_one")
    pw = dense((torch.rand(n, device=device) * 3 + 0.2).to(dtype), False)
    ours = bce_with_logits(x, y, w, pw, reduction=reduction, backend=backend)
    (our_grad,) = torch.autograd.grad(ours.sum(), x)
    xr = x.detach().double().requires_grad_()
    ref = reference64(xr, y, w, pw, reduction)
    (ref_grad,) = torch.autograd.grad(ref.sum(), xr)
    xt = x.detach().clone().requires_grad_()
    torch_lowp = F.binary_cross_entropy_with_logits(xt, y, w, reduction=reduction, pos_weight=pw)
    (torch_grad,) = torch.autograd.grad(torch_lowp.sum(), xt)
    if dtype == torch.float32:
        torch_lowp = torch_grad = None
    assert_matches_reference(ours, torch_lowp, ref, dtype, "loss", scale=ref.abs().max().expand_as(ref))
    grad_scale = ref_grad.abs().max().expand_as(ref_grad)
    assert_matches_reference(our_grad, torch_grad, ref_grad, dtype, "grad", scale=grad_scale)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_mixed_operand_dtypes(backend, device, reduction):
    """bfloat16 logits with float32 targets and float16 weights: the loss in the promoted
    float32 (tight), the bfloat16 gradient within PyTorch's own error."""
    x = logits((3, 40), device).to(torch.bfloat16).requires_grad_()
    y = torch.rand(3, 40, device=device)
    w = (torch.rand(40, device=device) + 0.1).to(torch.float16)
    ours = bce_with_logits(x, y, w, reduction=reduction, backend=backend)
    (our_grad,) = torch.autograd.grad(ours.sum(), x)
    assert ours.dtype == torch.float32 and our_grad.dtype == torch.bfloat16
    xr = x.detach().double().requires_grad_()
    ref = reference64(xr, y, w, None, reduction)
    (ref_grad,) = torch.autograd.grad(ref.sum(), xr)
    xt = x.detach().clone().requires_grad_()
    (torch_grad,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(xt, y, w, reduction=reduction).sum(), xt)
    assert_matches_reference(ours, None, ref, torch.float32, "loss")
    assert_matches_reference(our_grad, torch_grad, ref_grad, torch.bfloat16, "grad")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_gradients_for_target_weight_pos_weight(backend, device, reduction):
    x = logits((5, 6), device).float().requires_grad_()
    y = torch.rand(5, 6, device=device, requires_grad=True)
    w = (torch.rand(6, device=device) + 0.1).requires_grad_()
    pw = (torch.rand(1, 6, device=device) + 0.5).requires_grad_()
    ours = bce_with_logits(x, y, w, pw, reduction=reduction, backend=backend)
    upstream = torch.randn_like(ours)
    got = torch.autograd.grad(ours, (x, y, w, pw), upstream)
    inputs64 = [t.detach().double().requires_grad_() for t in (x, y, w, pw)]
    ref = bce_with_logits_reference(*inputs64, reduction=reduction)
    want = torch.autograd.grad(ref, inputs64, upstream.double())
    for name, g, r in zip(("input", "target", "weight", "pos_weight"), got, want):
        assert g.shape == r.shape, name
        torch.testing.assert_close(g.double(), r, rtol=2e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_float_target_equals_tensor_target(backend, device, reduction):
    x = logits((3, 11), device).float().requires_grad_()
    for value in (1.0, 0.9, 0.0, 1):
        ours = bce_with_logits(x, value, reduction=reduction, backend=backend)
        target = torch.full_like(x, float(value))
        want = F.binary_cross_entropy_with_logits(x, target, reduction=reduction)
        torch.testing.assert_close(ours, want, rtol=2e-5, atol=1e-6)
        g1, = torch.autograd.grad(ours.sum(), x)
        g2, = torch.autograd.grad(want.sum(), x)
        torch.testing.assert_close(g1, g2, rtol=2e-5, atol=1e-7)


NON_CONTIGUOUS = {
    "transposed": lambda t: t.t(),
    "strided_slice": lambda t: t[:, ::3],
    "offset_slice": lambda t: t[1:, 2:],
    "expanded_rows": lambda t: t[:1].expand(t.shape[0], -1),  # stride 0: one row read 9 times
}


@pytest.mark.parametrize("weighted", [True, False], ids=["weighted", "labels-only"])
@pytest.mark.parametrize("layout", list(NON_CONTIGUOUS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_non_contiguous(backend, device, layout, reduction, weighted):
    """Strided logits and labels, with a strided weight or (the commonest call's own path) none."""
    view = NON_CONTIGUOUS[layout]
    base = logits((9, 31), device).float().requires_grad_()
    x = view(base)
    y = view(torch.rand(9, 31, device=device))
    w = torch.rand(x.shape[-1] * 2, device=device)[::2] if weighted else None
    assert not x.is_contiguous() and (w is None or not w.is_contiguous())
    for _ in range(2):  # the second call takes the cached plan
        ours = bce_with_logits(x, y, w, reduction=reduction, backend=backend)
    (grad,) = torch.autograd.grad(ours.sum(), base)
    base64 = base.detach().double().requires_grad_()
    want = bce_with_logits_reference(view(base64), y.double(), None if w is None else w.double(), reduction=reduction)
    (want_grad,) = torch.autograd.grad(want.sum(), base64)
    torch.testing.assert_close(ours.double(), want, rtol=2e-5, atol=1e-6)
    # An expanded row's gradient sums 9 float32 terms of size up to 1.
    torch.testing.assert_close(grad.double(), want_grad, rtol=2e-5, atol=1e-6)


def test_bce_high_rank_operands_are_copied_with_a_warning(kernel_backend, device):
    base = logits((2, 3, 4, 5, 6, 7), device).float()
    x = base.permute(5, 3, 1, 4, 2, 0)[::1, ::2]  # six dimensions no coalescing can merge
    y = torch.rand(x.shape, device=device)
    with pytest.warns(UserWarning, match="copied to contiguous"):
        bce_module._backend._warned.discard("bce_with_logits:rank")
        ours = bce_with_logits(x, y, reduction="none", backend=kernel_backend)
    torch.testing.assert_close(ours, F.binary_cross_entropy_with_logits(x, y, reduction="none"))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_extreme_logits(backend, device, reduction):
    magnitudes = torch.tensor([1e4, -1e4, 88.0, -88.0, 30.0, -30.0, 17.0, -17.0, 1e-8, 0.0], device=device)
    x = magnitudes.repeat(3).requires_grad_()
    y = torch.tensor([0.0, 1.0, 0.5], device=device).repeat_interleave(10)
    ours = bce_with_logits(x, y, reduction=reduction, backend=backend)
    (grad,) = torch.autograd.grad(ours.sum(), x)
    assert torch.isfinite(ours).all() and torch.isfinite(grad).all()
    xr = x.detach().double().requires_grad_()
    ref = bce_with_logits_reference(xr, y.double(), reduction=reduction)
    (ref_grad,) = torch.autograd.grad(ref.sum(), xr)
    torch.testing.assert_close(ours.double(), ref, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=2e-6, atol=1e-7)


def test_bce_small_losses_keep_relative_precision(kernel_backend, device):
    # softplus(-x) ~ exp(-x) for large x: a log(1 + e) that rounds 1 + e to 1 would give 0.
    x = torch.tensor([20.0, 25.0, 40.0, 80.0], device=device)
    ours = bce_with_logits(x, 1.0, reduction="none", backend=kernel_backend)
    want = bce_with_logits_reference(x.double(), 1.0, reduction="none")
    torch.testing.assert_close(ours.double(), want, rtol=1e-5, atol=0)


def test_bce_infinities_and_nan_follow_pytorch(backend, device):
    special = torch.tensor([math.inf, -math.inf, math.nan, 0.0, 3.0], device=device)
    x = special.repeat(3).requires_grad_()
    y = torch.tensor([0.0, 1.0, 0.5], device=device).repeat_interleave(5)
    pw = torch.full((15,), 2.0, device=device)
    for kwargs in ({}, {"pos_weight": pw}):
        ours = bce_with_logits(x, y, reduction="none", backend=backend, **kwargs)
        (grad,) = torch.autograd.grad(ours.sum(), x)
        xt = x.detach().clone().requires_grad_()
        want = F.binary_cross_entropy_with_logits(xt, y, reduction="none", **kwargs)
        (want_grad,) = torch.autograd.grad(want.sum(), xt)
        torch.testing.assert_close(ours, want, equal_nan=True)
        torch.testing.assert_close(grad, want_grad, equal_nan=True)
    mean = bce_with_logits(torch.tensor([1.0, math.nan], device=device), 1.0, backend=backend)
    assert torch.isnan(mean)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_empty_input(backend, device, reduction):
    x = torch.empty(0, 3, device=device, requires_grad=True)
    y = torch.empty(0, 3, device=device)
    ours = bce_with_logits(x, y, reduction=reduction, backend=backend)
    want = F.binary_cross_entropy_with_logits(x, y, reduction=reduction)
    torch.testing.assert_close(ours, want, equal_nan=True)
    (grad,) = torch.autograd.grad(ours.sum(), x)
    assert grad.shape == x.shape


def test_bce_writes_every_output_element(kernel_backend, device, monkeypatch):
    def poisoned(like, shape, dtype=None):
        return torch.full(shape, math.nan, dtype=dtype or like.dtype, device=like.device)

    monkeypatch.setattr(_launch, "output", poisoned)
    # The reduced losses are allocated like a 0-d template the call's plan holds.
    monkeypatch.setattr(_launch, "output_like", lambda like: torch.full_like(like, math.nan))
    n = _launch.BLOCK * 3 + 5
    x = logits((n,), device).float().requires_grad_()
    y = torch.rand(n, device=device)
    for reduction in REDUCTIONS:
        loss = bce_with_logits(x, y, reduction=reduction, backend=kernel_backend)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        assert not torch.isnan(loss).any() and not torch.isnan(grad).any(), reduction
    real = logits((2 * _launch.BLOCK * _launch.SINGLE_PROGRAM_MAX_BLOCKS + 1,), device).float().requires_grad_()
    fake = logits((33,), device).float().requires_grad_()
    d_loss, g_loss = gan_bce_losses(real, fake, backend=kernel_backend)
    grads = torch.autograd.grad(d_loss + g_loss, (real, fake))
    assert not any(torch.isnan(t).any() for t in (d_loss, g_loss, *grads))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_double_backward_matches_reference(backend, device, reduction):
    x = logits((4, 9), device).float().requires_grad_()
    y = torch.rand(4, 9, device=device)
    w = torch.rand(9, device=device) + 0.5
    v = torch.randn(4, 9, device=device)

    def second_order(fn, x):
        loss = fn(x)
        (g,) = torch.autograd.grad(loss.sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), x)
        return g, h

    g, h = second_order(lambda t: bce_with_logits(t, y, w, reduction=reduction, backend=backend), x)
    xr = x.detach().double().requires_grad_()
    gr, hr = second_order(lambda t: bce_with_logits_reference(t, y.double(), w.double(), reduction=reduction), xr)
    xt = x.detach().clone().requires_grad_()
    gt, ht = second_order(lambda t: F.binary_cross_entropy_with_logits(t, y, w, reduction=reduction), xt)
    # float32 second derivatives carry PyTorch's own cancellation (1 - sigmoid): judge against it,
    # with terms of size |w| (first order) and |w * v| (second order).
    n = x.numel() if reduction == "mean" else 1
    assert_matches_reference(g, gt, gr, torch.float32, "grad", scale=w.expand_as(x) / n)
    assert_matches_reference(h, ht, hr, torch.float32, "second-order grad", scale=(w * v).abs() / n)


class _TaggedTensor(torch.Tensor):
    """A tensor subclass with torch's default __torch_function__: results keep the class."""


def test_losses_keep_the_input_class_whatever_call_came_first(kernel_backend, device):
    """Eager kernel calls allocate a reduced loss from a 0-d template their cached plan holds;
    a subclass's loss must still be that subclass, before or after a plain call of the same
    layout (and a plain call's loss a plain tensor)."""
    x = logits((40,), device).float().requires_grad_()
    y = torch.rand(40, device=device)
    for first, second in ((torch.Tensor, _TaggedTensor), (_TaggedTensor, torch.Tensor)):
        for cls in (first, second):
            xs, ys = x.detach().as_subclass(cls).requires_grad_(), y.as_subclass(cls)
            loss = bce_with_logits(xs, ys, backend=kernel_backend)
            assert type(loss) is cls, (first, cls)
            d_loss, g_loss = gan_bce_losses(xs, ys - 0.5, backend=kernel_backend)
            assert type(d_loss) is cls and type(g_loss) is cls, (first, cls)


def test_library_op_plans_keep_no_loss_template(kernel_backend, device, monkeypatch):
    """The torch.library ops (what torch.compile runs, inside CUDA-graph trees) make no 0-d
    templates: every allocation there must be the call's own. The eager path's plans do."""
    monkeypatch.setattr(bce_module, "_BCE_CALLS", bce_module.BoundedCache(16))
    bce_module._gan_launch_plan.cache_clear()
    x = logits((33,), device).float().requires_grad_()
    y = torch.rand(33, device=device)
    loss, _ = bce_module._bce_with_logits_op(x, y, 0.0, None, None, 1, True, kernel_backend)
    d_loss, g_loss, *_ = bce_module._gan_bce_losses_op(x, y - 0.5, 1.0, 0.0, True, kernel_backend)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(x, y))
    assert [call.loss_template for call in bce_module._BCE_CALLS.values()] == [None]
    assert bce_module._gan_launch_plan.cache_info().currsize == 1
    bce_with_logits(x, y, backend=kernel_backend)
    gan_bce_losses(x, y - 0.5, backend=kernel_backend)
    assert sum(call.loss_template is not None for call in bce_module._BCE_CALLS.values()) == 1
    assert bce_module._gan_launch_plan.cache_info().currsize == 2
    bce_module._gan_launch_plan.cache_clear()


def test_no_loss_template_during_cuda_graph_capture(monkeypatch):
    """A plan made while a CUDA graph is captured keeps no template: it would stay behind in
    the graph's private pool (checked before anything is allocated, so it runs without a GPU)."""
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert _launch.loss_template(torch.device("cuda", 0), torch.float32) is None
    assert _launch.loss_template(torch.device("cpu"), torch.bfloat16).dtype == torch.bfloat16


def test_bce_no_grad_writes_no_gradient(kernel_backend, device, monkeypatch):
    shapes = []
    real_output = _launch.output

    def recording(like, shape, dtype=None):
        shapes.append(tuple(shape))
        return real_output(like, shape, dtype)

    monkeypatch.setattr(_launch, "output", recording)
    x = logits((50,), device).float().requires_grad_()
    with torch.no_grad():
        bce_with_logits(x, 1.0, backend=kernel_backend)
    assert (50,) not in shapes


def test_bce_module_is_a_drop_in(backend, device):
    w = torch.rand(5, device=device)
    pw = torch.rand(5, device=device) + 0.5
    ours = fastgan.nn.BCEWithLogitsLoss(weight=w, pos_weight=pw, reduction="sum", backend=backend)
    theirs = torch.nn.BCEWithLogitsLoss(weight=w, pos_weight=pw, reduction="sum")
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = logits((8, 5), device).float()
    y = torch.rand(8, 5, device=device)
    torch.testing.assert_close(ours(x, y), theirs(x, y))
    with pytest.raises(ValueError, match="reduction"):
        fastgan.nn.BCEWithLogitsLoss(reduction="avg")


# ---------------------------------------------------------------------------------------
# Errors: PyTorch's exception types, messages naming the argument.
# ---------------------------------------------------------------------------------------


def test_bce_errors_name_the_argument(device):
    x = torch.randn(4, 3, device=device)
    y = torch.rand(4, 3, device=device)
    with pytest.raises(ValueError, match=r"Target size .* must be the same as input size"):
        bce_with_logits(x, torch.rand(4, 2, device=device))
    with pytest.raises(ValueError, match=r"Target size .* must be the same as input size"):
        F.binary_cross_entropy_with_logits(x, torch.rand(4, 2, device=device))
    with pytest.raises(RuntimeError, match="weight of size"):
        bce_with_logits(x, y, weight=torch.rand(4, device=device))
    with pytest.raises(RuntimeError, match="pos_weight of size"):
        bce_with_logits(x, y, pos_weight=torch.rand(2, device=device))
    with pytest.raises(RuntimeError, match="weight of size"):
        bce_with_logits(x, y, weight=torch.rand(2, 4, 3, device=device))
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        bce_with_logits(x, y, reduction="avg")
    with pytest.raises(TypeError, match="input must be a floating-point"):
        bce_with_logits(torch.ones(3, dtype=torch.long, device=device), 1.0)
    with pytest.raises(TypeError, match="target must be"):
        bce_with_logits(x, "1")
    with pytest.raises(TypeError, match="target must be"):
        bce_with_logits(x, True)
    with pytest.raises(ValueError, match="backend must be one of"):
        bce_with_logits(x, y, backend="fast")
    with pytest.raises(TypeError, match="real_logits must be a torch.Tensor"):
        gan_bce_losses([1.0], x)
    with pytest.raises(TypeError, match="fake_target"):
        gan_bce_losses(x, x, fake_target=None)


# ---------------------------------------------------------------------------------------
# The torch backend's native CPU kernel (csrc/cpu/bce.cpp): contiguous float32/bfloat16
# (logits, labels) of one dtype. The parametrized tests above run it at small sizes on the
# torch backend; these add the threaded sizes, the backward's shortcuts and the fallbacks.
# ---------------------------------------------------------------------------------------

NATIVE_DTYPES = [torch.float32, torch.bfloat16]
# Past twice the thread grain (the kernel uses a second thread), not a multiple of its block.
THREADED_N = 2 * _native.THREAD_GRAIN + 1029


@pytest.fixture
def native_kernels():
    if _native.module() is None:
        pytest.skip(f"the native CPU kernels are not used here: {_native.status()}")
    return _native.module()


def native_logits(n, dtype):
    """Non-zero-mean logits with the extremes placed throughout, and labels in [0, 1] with exact 0s and 1s."""
    x = logits((n,), "cpu")
    extremes = torch.tensor([1e4, -1e4, 88.0, -88.0, 30.0, -30.0, 1e-8, 0.0], dtype=torch.float64)
    places = torch.randperm(n)[: min(n, 8 * 16)]
    x[places] = extremes.repeat(16)[: places.numel()]
    y = torch.rand(n, dtype=torch.float64)
    y[torch.randperm(n)[: n // 10]] = torch.randint(0, 2, (n // 10,), dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def test_native_kernel_grain_matches_python(native_kernels):
    assert native_kernels.thread_grain() == _native.THREAD_GRAIN


@pytest.mark.parametrize("dtype", NATIVE_DTYPES, ids=str)
def test_native_kernel_is_what_the_cpu_torch_backend_runs(native_kernels, dtype):
    x, y = native_logits(1001, dtype)
    loss = bce_with_logits(x.requires_grad_(), y, backend="torch")
    assert type(loss.grad_fn).__name__ == "_NativeBCEFunctionBackward"


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", NATIVE_DTYPES, ids=str)
def test_native_kernel_threaded_size_matches_reference(native_kernels, dtype, reduction):
    x, y = native_logits(THREADED_N, dtype)
    x.requires_grad_()
    ours = bce_with_logits(x, y, reduction=reduction, backend="torch")
    v = torch.randn_like(ours)  # a non-trivial incoming gradient
    (grad,) = torch.autograd.grad(ours, x, v)
    xt = x.detach().clone().requires_grad_()
    theirs = F.binary_cross_entropy_with_logits(xt, y, reduction=reduction)
    (their_grad,) = torch.autograd.grad(theirs, xt, v)
    xr = x.detach().double().requires_grad_()
    ref = bce_with_logits_reference(xr, y.double(), reduction=reduction)
    (ref_grad,) = torch.autograd.grad(ref, xr, v.double())
    assert_matches_reference(ours, theirs, ref, dtype, "loss")
    assert_matches_reference(grad, their_grad, ref_grad, dtype, "grad", scale=(v.double() / (
        THREADED_N if reduction == "mean" else 1)).expand_as(ref_grad))


@pytest.mark.parametrize("dtype", NATIVE_DTYPES, ids=str)
def test_native_kernel_result_does_not_depend_on_the_thread_count(native_kernels, dtype):
    x, y = native_logits(THREADED_N, dtype)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            xi = x.clone().requires_grad_()
            loss = bce_with_logits(xi, y, backend="torch")
            loss.backward()
            results.append((loss, xi.grad))
    finally:
        torch.set_num_threads(threads)
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.parametrize("n", [1, 15, 1025, THREADED_N])
def test_native_kernel_writes_every_output_element(native_kernels, monkeypatch, n):
    def poisoned(like, shape, dtype=None):
        return torch.full(shape, math.nan, dtype=dtype or like.dtype, device=like.device)

    monkeypatch.setattr(_launch, "output", poisoned)
    monkeypatch.setattr(_launch, "output_like", lambda like: torch.full_like(like, math.nan))
    for dtype in NATIVE_DTYPES:
        x, y = native_logits(max(n, 128), dtype)
        x, y = x[:n].clone().requires_grad_(), y[:n].clone()
        for reduction in REDUCTIONS:
            loss = bce_with_logits(x, y, reduction=reduction, backend="torch")
            (grad,) = torch.autograd.grad(loss.sum(), x)
            assert not torch.isnan(loss).any() and not torch.isnan(grad).any(), (dtype, reduction)


def test_native_kernel_small_losses_keep_relative_precision(native_kernels):
    # As test_bce_small_losses_keep_relative_precision, with labels as a tensor (the native path).
    x = torch.tensor([20.0, 25.0, 40.0, 80.0])
    y = torch.ones(4)
    ours = bce_with_logits(x, y, reduction="none", backend="torch")
    want = bce_with_logits_reference(x.double(), y.double(), reduction="none")
    torch.testing.assert_close(ours.double(), want, rtol=1e-5, atol=0)


def test_native_kernel_rounds_bfloat16_once(native_kernels):
    # Computed in float32 and rounded once, each bfloat16 loss is within half a bfloat16 ulp of
    # the exact value where the float32 terms do not cancel: label 1 with any logit, label 0
    # with a non-negative one (PyTorch's bfloat16 op rounds after every step).
    x = torch.cat([logits((3000,), "cpu", scale=8.0), logits((3000,), "cpu", scale=8.0).abs()]).bfloat16()
    y = torch.cat([torch.ones(3000), torch.zeros(3000)]).bfloat16()
    ours = bce_with_logits(x, y, reduction="none", backend="torch").double()
    exact = bce_with_logits_reference(x.double(), y.double(), reduction="none")
    _, exponent = torch.frexp(exact)
    half_ulp = torch.ldexp(torch.full_like(exact, 0.5), exponent - 8)  # bfloat16 keeps 8 significant bits
    assert ((ours - exact).abs() <= half_ulp * 1.01).all()


def test_native_kernel_backward_shortcuts(native_kernels):
    x, y = native_logits(257, torch.float32)
    want = F.binary_cross_entropy_with_logits(x.double().requires_grad_(), y.double())
    (want_grad,) = torch.autograd.grad(want, want.grad_fn.next_functions[0][0].variable)
    x.requires_grad_()
    # loss.backward(): the saved gradient is returned as it is.
    bce_with_logits(x, y, backend="torch").backward()
    torch.testing.assert_close(x.grad.double(), want_grad, rtol=1e-5, atol=1e-9)
    # A retained graph run twice, and a scaled loss: autograd must not accumulate into the saved buffer.
    x.grad = None
    loss = bce_with_logits(x, y, backend="torch")
    loss.backward(retain_graph=True)
    loss.backward(retain_graph=True)
    (3 * loss).backward()
    torch.testing.assert_close(x.grad.double(), 5 * want_grad, rtol=1e-5, atol=1e-9)
    # A gradient for the labels (PyTorch gives one) and second order take the closed forms.
    labels = y.clone().requires_grad_()
    grads = torch.autograd.grad(bce_with_logits(x, labels, backend="torch"), (x, labels), create_graph=True)
    their = torch.autograd.grad(F.binary_cross_entropy_with_logits(x, labels), (x, labels), create_graph=True)
    for ours, theirs in zip(grads, their):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-9)
    (second,) = torch.autograd.grad(grads[0].sum(), x)
    (their_second,) = torch.autograd.grad(their[0].sum(), x)
    torch.testing.assert_close(second, their_second, rtol=1e-5, atol=1e-9)


def test_native_kernel_steps_aside_for_torch_func(native_kernels):
    x, y = native_logits(33, torch.float32)
    ours = torch.func.grad(lambda t: bce_with_logits(t, y, backend="torch"))(x)
    theirs = torch.func.grad(lambda t: F.binary_cross_entropy_with_logits(t, y))(x)
    torch.testing.assert_close(ours, theirs)
    batched = torch.func.vmap(lambda t: bce_with_logits(t, y[:11], backend="torch"))(x.view(3, 11))
    torch.testing.assert_close(batched, F.binary_cross_entropy_with_logits(
        x.view(3, 11), y[:11].expand(3, 11), reduction="none").mean(1))


@pytest.mark.parametrize("sanitize", ["address", "thread"])
def test_native_kernels_under_sanitizers(sanitize, tmp_path):
    # csrc/testing/cpu_driver.cpp: exactly sized buffers, NaN-filled outputs, 1/2/4 threads.
    csrc = Path(__file__).resolve().parents[1] / "csrc"
    try:
        program = _native.build_driver(tmp_path / f"cpu_driver_{sanitize}", csrc, sanitize)
    except _native.NativeBuildError as error:
        if "no host C++ compiler" in str(error) or "cannot find -l" in str(error) or "libtsan" in str(error):
            pytest.skip(str(error).splitlines()[0])
        raise
    result = subprocess.run([str(program)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "checks passed" in result.stdout, result.stdout + result.stderr
    assert "Sanitizer" not in result.stderr, result.stderr


def test_native_kernels_off_or_missing_run_pytorchs_op(monkeypatch):
    x, y = native_logits(65, torch.float32)
    x.requires_grad_()
    monkeypatch.setenv(_native.ENV_SWITCH, "0")
    _native.reset()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # turned off on purpose: nothing to say
            loss = bce_with_logits(x, y, backend="torch")
        assert type(loss.grad_fn).__name__ == "BinaryCrossEntropyWithLogitsBackward0"
        assert _native.status().startswith("off")
        monkeypatch.delenv(_native.ENV_SWITCH)
        monkeypatch.setattr(_native, "module", lambda: None)
        monkeypatch.setattr(_native, "status", lambda: "off: fastgan._C_cpu is not built (test)")
        monkeypatch.setattr(_backend, "_warned", set())
        with pytest.warns(UserWarning, match="native CPU kernels are not used .*not built"):
            loss = bce_with_logits(x, y, backend="torch")
        assert type(loss.grad_fn).__name__ == "BinaryCrossEntropyWithLogitsBackward0"
    finally:
        _native.reset()


def test_explicit_unavailable_backend_raises(device, monkeypatch):
    x = torch.randn(3, dtype=torch.float64, device=device)
    with pytest.raises(fastgan.BackendUnavailableError, match="float64"):
        bce_with_logits(x, 1.0, backend="triton")
    monkeypatch.delenv("FASTGAN_CUDA_EMULATE", raising=False)  # without emulation, CPU tensors cannot run cuda
    with pytest.raises(fastgan.BackendUnavailableError, match="cuda"):
        bce_with_logits(x.cpu().float(), 1.0, backend="cuda")


# ---------------------------------------------------------------------------------------
# gan_bce_losses.
# ---------------------------------------------------------------------------------------

GAN_SIZES = [(1, 1), (64, 64), (127, 33), (_launch.BLOCK * _launch.SINGLE_PROGRAM_MAX_BLOCKS + 7, 5)]


@pytest.mark.parametrize("sizes", GAN_SIZES, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("targets", [(1.0, 0.0), (0.9, 0.1)], ids=str)
def test_gan_bce_losses_match_reference(backend, device, sizes, dtype, targets):
    real = logits((sizes[0], 1), device).to(dtype).requires_grad_()
    fake = logits((sizes[1],), device, mean=-1.3).to(dtype).requires_grad_()
    real_target, fake_target = targets
    ours = gan_bce_losses(real, fake, real_target=real_target, fake_target=fake_target, backend=backend)
    a, b = torch.randn(2, dtype=torch.float64).tolist()
    ours_grads = torch.autograd.grad(a * ours.d_loss + b * ours.g_loss, (real, fake))

    inputs64 = [t.detach().double().requires_grad_() for t in (real, fake)]
    ref = gan_bce_losses_reference(*inputs64, real_target, fake_target)
    ref_grads = torch.autograd.grad(a * ref.d_loss + b * ref.g_loss, inputs64)
    lowp = [t.detach().clone().requires_grad_() for t in (real, fake)]
    torch_d = F.binary_cross_entropy_with_logits(lowp[0], torch.full_like(lowp[0], real_target))
    torch_d = torch_d + F.binary_cross_entropy_with_logits(lowp[1], torch.full_like(lowp[1], fake_target))
    torch_g = F.softplus(-lowp[1]).mean()
    torch_grads = torch.autograd.grad(a * torch_d + b * torch_g, lowp)

    assert ours.d_loss.dtype == dtype and ours.g_loss.dtype == dtype
    if dtype == torch.float32:
        torch_d = torch_g = None  # tight float32 tolerance
        torch_grads = (None, None)
    assert_matches_reference(ours.d_loss, torch_d, ref.d_loss, dtype, "d_loss")
    assert_matches_reference(ours.g_loss, torch_g, ref.g_loss, dtype, "g_loss")
    # Each gradient is a sum of terms of size up to |a|/n (+ |b|/n for fake).
    scales = (abs(a) / real.numel(), (abs(a) + abs(b)) / fake.numel())
    for name, g, t, r, sc in zip(("real", "fake"), ours_grads, torch_grads, ref_grads, scales):
        assert_matches_reference(g, t, r, dtype, f"grad {name}", scale=torch.full_like(r, sc))


@pytest.mark.parametrize("layout", ["column_slice", "every_other_row", "transposed_2d", "offset_by_one"])
def test_gan_bce_losses_strided_logits(backend, device, layout):
    """Logits sliced out of a wider output (d_out[:, 0]) are read in place, not as if dense."""
    base_real = logits((40, 3), device).float().requires_grad_()
    base_fake = logits((30, 3), device, mean=-1.0).float().requires_grad_()
    view = {
        "column_slice": lambda t: t[:, 1],
        "every_other_row": lambda t: t[::2, 0],
        "transposed_2d": lambda t: t.t(),
        "offset_by_one": lambda t: t.reshape(-1)[1:],  # dense, one element into the storage
    }[layout]
    ours = gan_bce_losses(view(base_real), view(base_fake), real_target=0.9, backend=backend)
    ref = gan_bce_losses_reference(view(base_real).double(), view(base_fake).double(), 0.9)
    torch.testing.assert_close(ours.d_loss.double(), ref.d_loss, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(ours.g_loss.double(), ref.g_loss, rtol=2e-5, atol=1e-6)
    got = torch.autograd.grad(ours.d_loss + ours.g_loss, (base_real, base_fake))
    want = torch.autograd.grad(ref.d_loss + ref.g_loss, (base_real, base_fake))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=2e-5, atol=1e-7)


def test_gan_bce_losses_single_loss_backward(backend, device):
    real = logits((17,), device).float().requires_grad_()
    fake = logits((17,), device).float().requires_grad_()
    ours = gan_bce_losses(real, fake, backend=backend)
    ref = gan_bce_losses_reference(real, fake)
    (g_only,) = torch.autograd.grad(ours.g_loss, fake, retain_graph=True)
    torch.testing.assert_close(g_only, torch.autograd.grad(ref.g_loss, fake)[0])
    d_grads = torch.autograd.grad(ours.d_loss, (real, fake))
    for got, want in zip(d_grads, torch.autograd.grad(ref.d_loss, (real, fake))):
        torch.testing.assert_close(got, want)


def test_gan_bce_losses_double_backward(backend, device):
    real = logits((12,), device).float().requires_grad_()
    fake = logits((7, 2), device).float().requires_grad_()

    def penalty(fn, real, fake):
        d_loss, g_loss = fn(real, fake)
        gr, gf = torch.autograd.grad(d_loss + 0.5 * g_loss, (real, fake), create_graph=True)
        return torch.autograd.grad(gr.square().sum() + gf.pow(3).sum(), (real, fake))

    got = penalty(lambda r, f: gan_bce_losses(r, f, real_target=0.9, backend=backend), real, fake)
    ref_inputs = [t.detach().double().requires_grad_() for t in (real, fake)]
    want = penalty(lambda r, f: gan_bce_losses_reference(r, f, 0.9), *ref_inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=2e-5, atol=1e-9)


def test_gan_bce_losses_extremes_and_empty(backend, device):
    real = torch.tensor([1e4, -1e4, 0.0], device=device, requires_grad=True)
    fake = torch.tensor([-1e4, 1e4, 5.0], device=device, requires_grad=True)
    d_loss, g_loss = gan_bce_losses(real, fake, backend=backend)
    grads = torch.autograd.grad(d_loss + g_loss, (real, fake))
    ref = gan_bce_losses_reference(real.double(), fake.double())
    torch.testing.assert_close(d_loss.double(), ref.d_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_loss.double(), ref.g_loss, rtol=1e-6, atol=1e-6)
    assert all(torch.isfinite(g).all() for g in grads)
    empty = gan_bce_losses(torch.empty(0, device=device), torch.randn(4, device=device), backend=backend)
    assert torch.isnan(empty.d_loss) and torch.isfinite(empty.g_loss)


# ---------------------------------------------------------------------------------------
# torch.library registration, torch.compile.
# ---------------------------------------------------------------------------------------


def test_opcheck_bce_with_logits(kernel_backend, device):
    x = logits((5, 3), device).float().requires_grad_()
    y = torch.rand(5, 3, device=device)
    w = torch.rand(3, device=device)
    for args in (
        (x, y, 0.0, w, None, 1, True, kernel_backend),
        (x, None, 0.9, None, w, 0, True, kernel_backend),
        (x.detach(), y, 0.0, None, None, 2, False, kernel_backend),
    ):
        torch.library.opcheck(torch.ops.fastgan.bce_with_logits.default, args)


def test_opcheck_gan_bce_losses(kernel_backend, device):
    real = logits((6,), device).float().requires_grad_()
    fake = logits((4, 2), device).float().requires_grad_()
    torch.library.opcheck(torch.ops.fastgan.gan_bce_losses.default, (real, fake, 1.0, 0.0, True, kernel_backend))
    torch.library.opcheck(
        torch.ops.fastgan.gan_bce_losses.default, (real.detach(), fake.detach(), 0.9, 0.0, False, kernel_backend)
    )


def test_torch_compile_fullgraph(kernel_backend, device):
    torch._dynamo.reset()

    def step(x, y, real, fake):
        loss = bce_with_logits(x, y, pos_weight=y[0] + 1, backend=kernel_backend)
        d_loss, g_loss = gan_bce_losses(real, fake, backend=kernel_backend)
        return loss + d_loss + g_loss

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    x = logits((6, 4), device).float().requires_grad_()
    y = torch.rand(6, 4, device=device)
    real = logits((5,), device).float().requires_grad_()
    fake = logits((5,), device).float().requires_grad_()
    got = compiled(x, y, real, fake)
    got_grads = torch.autograd.grad(got, (x, real, fake))
    want = step(x, y, real, fake)
    want_grads = torch.autograd.grad(want, (x, real, fake))
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("target", ["labels", "float"])
def test_torch_compile_dynamic_batch_is_one_graph(backend, device, target):
    """Validation caches stay out of traced code: a dynamic batch size compiles once, with eager
    calls of other sizes filling the caches in between."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()

    def losses(x):
        loss = bce_with_logits(x, torch.ones_like(x) if target == "labels" else 0.9, backend=backend)
        d_loss, g_loss = gan_bce_losses(x, 2 * x, backend=backend)
        return loss + d_loss + g_loss

    counter = CompileCounter()
    compiled = torch.compile(losses, backend=counter, fullgraph=True, dynamic=True)
    for n in (40, 50, 70):
        x = logits((n,), device).float()
        losses(x)
        torch.testing.assert_close(compiled(x), losses(x))
    assert counter.frame_count == 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA GPU")
def test_cuda_graph_capture(kernel_backend, capture_cuda_graph):
    x = torch.randn(1000, device="cuda", requires_grad=True)
    y = torch.rand(1000, device="cuda")
    real = torch.randn(64, device="cuda", requires_grad=True)
    fake = torch.randn(64, device="cuda", requires_grad=True)

    def step():
        loss = bce_with_logits(x, y, backend=kernel_backend)
        d_loss, g_loss = gan_bce_losses(real, fake, backend=kernel_backend)
        return torch.autograd.grad(loss + d_loss + g_loss, (x, real, fake))

    graph, static_grads = capture_cuda_graph(step)
    for _ in range(2):
        x.data.copy_(torch.randn_like(x))
        fake.data.copy_(torch.randn_like(fake))
        graph.replay()
        torch.cuda.synchronize()
        for got, want in zip(static_grads, step()):
            torch.testing.assert_close(got, want)


def test_torch_backend_says_once_when_it_takes_the_slower_reference(monkeypatch):
    """The torch backend's fast forms need operands of one dtype; the reference form it falls
    back to is slower, and it says so once (and still gives the reference's values)."""
    monkeypatch.setattr(bce_module._backend, "_warned", set())
    real = logits((9,), "cpu").float()
    fake = logits((7,), "cpu").bfloat16()
    with pytest.warns(UserWarning, match="gan_bce_losses: .* different dtypes run the slower reference"):
        ours = gan_bce_losses(real, fake, backend="torch")
    want = gan_bce_losses_reference(real, fake)
    torch.testing.assert_close(ours.d_loss, want.d_loss)
    x, y, w = logits((9,), "cpu").float(), torch.rand(9), torch.rand(9, requires_grad=True)
    with pytest.warns(UserWarning, match="bce_with_logits: .* a weight that needs a gradient"):
        loss = bce_with_logits(x, y, w, backend="torch")
    torch.testing.assert_close(loss, bce_with_logits_reference(x, y, w))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gan_bce_losses(real, fake, backend="torch")  # once
        bce_with_logits(x, y, w, backend="torch")


def test_gan_bce_losses_without_grad_match_with_grad(backend, device):
    """Under no_grad (and for logits that need no gradient) the same values, no graph."""
    real = logits((33, 1), device).float().requires_grad_()
    fake = logits((17,), device, mean=-1.0).float().requires_grad_()
    want = gan_bce_losses(real, fake, real_target=0.9, fake_target=0.05, backend=backend)
    with torch.no_grad():
        got = gan_bce_losses(real, fake, real_target=0.9, fake_target=0.05, backend=backend)
    detached = gan_bce_losses(real.detach(), fake.detach(), real_target=0.9, fake_target=0.05, backend=backend)
    for losses in (got, detached):
        assert losses.d_loss.grad_fn is None and losses.g_loss.grad_fn is None
        torch.testing.assert_close(losses.d_loss, want.d_loss.detach())
        torch.testing.assert_close(losses.g_loss, want.g_loss.detach())


# ---------------------------------------------------------------------------------------
# gan_bce_losses' sums on the CPU by the native kernel with a constant label (no target).
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 257, THREADED_N])
@pytest.mark.parametrize("dtype", NATIVE_DTYPES, ids=str)
@pytest.mark.parametrize("targets", [(1.0, 0.0), (0.9, 0.1)], ids=str)
def test_gan_native_sums_within_pytorchs_own_error(native_kernels, monkeypatch, n, dtype, targets):
    calls = []
    native_sum = bce_module._native_softplus_sum
    monkeypatch.setattr(bce_module, "_native_softplus_sum", lambda *args: calls.append(args[1]) or native_sum(*args))
    real, _ = native_logits(n, dtype)
    fake = (logits((n + 3,), "cpu") - 1.0).to(dtype)
    ours = gan_bce_losses(real, fake, real_target=targets[0], fake_target=targets[1], backend="torch")
    assert calls, "the native sums were not taken"
    want = gan_bce_losses_reference(real.double(), fake.double(), *targets)
    bce = torch.nn.functional.binary_cross_entropy_with_logits  # eager's three calls, in this dtype
    theirs = (bce(real, torch.full_like(real, targets[0])) + bce(fake, torch.full_like(fake, targets[1])),
              bce(fake, torch.ones_like(fake)))
    eps = torch.finfo(dtype).eps
    for mine, pytorch, reference in zip(ours, theirs, want):
        assert mine.dtype == dtype
        error = (mine.double() - reference).abs().item()
        assert error <= 2 * (pytorch.double() - reference).abs().item() + eps * reference.abs().item(), (error,)


def test_gan_native_sums_keep_the_limits_at_infinite_logits(native_kernels):
    # BCE's order of terms makes 0·inf at an infinite logit with label 1; those inputs take
    # PyTorch's softplus, whose limits the PyTorch form gives.
    inf = math.inf
    for real, fake in (([inf, 0.5], [-inf, 1.0]), ([inf, 0.5, -inf, 3.0], [-inf, 1.0, inf, 0.0]),
                       ([math.nan, 1.0], [0.0, 1.0])):
        real, fake = torch.tensor(real), torch.tensor(fake)
        ours = gan_bce_losses(real, fake, backend="torch")
        accumulate = torch.float32
        want_g = -bce_module._log_sigmoid_sum(fake, accumulate) / fake.numel()
        want_d = (-bce_module._log_sigmoid_sum(real, accumulate) / real.numel()
                  + torch.nn.functional.softplus(fake).sum() / fake.numel())
        torch.testing.assert_close(ours.g_loss, want_g, equal_nan=True)
        torch.testing.assert_close(ours.d_loss, want_d, equal_nan=True)
    assert gan_bce_losses(torch.tensor([inf, 0.5]), torch.tensor([-inf, 1.0]), backend="torch").d_loss.isfinite()


@pytest.mark.parametrize("dtype", NATIVE_DTYPES)
def test_gan_native_losses_overflow_to_inf_as_pytorch_does(native_kernels, dtype):
    """Each mean fits the dtype but their sum does not: ±inf, as the PyTorch form gives, not an error."""
    real = torch.tensor([-3e38], dtype=dtype)  # one logit each: each sum stays finite, their total does not
    fake = torch.tensor([3e38], dtype=dtype)
    ours = gan_bce_losses(real, fake, backend="torch")
    want = gan_bce_losses_reference(real, fake)
    assert ours.d_loss.isinf() and ours.d_loss > 0 and ours.d_loss.dtype == dtype
    torch.testing.assert_close(ours.d_loss, want.d_loss)
    torch.testing.assert_close(ours.g_loss, want.g_loss)
