"""Fused BatchNorm + LeakyReLU against eager float64 PyTorch, every backend; the modules and
fastgan.fuse against their unfused twins."""

import copy
import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan import _native
from fastgan.nn import BatchNormLeakyReLU1d, BatchNormLeakyReLU2d
from fastgan.ops import _launch
from fastgan.ops import batch_norm as bn_module
from fastgan.ops.batch_norm import batch_norm_leaky_relu, batch_norm_leaky_relu_reference

# (shape, channels_last): C = 1, 3, 17; H·W = 1 and 7×5; 1-d inputs (N, C) and (N, C, L).
SHAPES = [
    ((5, 1, 7, 5), False),
    ((4, 3, 1, 1), False),
    ((3, 17, 7, 5), False),
    ((3, 17, 7, 5), True),
    ((2, 3, 7, 5), True),
    ((9, 3), False),
    ((4, 17, 9), False),
]
SLOPES = [0.0, 0.01, 0.2]


def make_input(shape, channels_last, device, dtype=torch.float32, mean=30.0, scale=8.0):
    """Non-zero-mean, large-magnitude input with a per-channel offset."""
    channel_offset = torch.linspace(-1, 1, shape[1], dtype=torch.float64).view((1, -1) + (1,) * (len(shape) - 2))
    x = torch.randn(shape, dtype=torch.float64) * scale + mean * (1 + channel_offset)
    x = x.to(device=device, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def make_params(channels, device, dtype=torch.float32):
    weight = (torch.randn(channels, dtype=torch.float64) + 1.0).to(device, dtype).requires_grad_()
    bias = torch.randn(channels, dtype=torch.float64).to(device, dtype).requires_grad_()
    running_mean = torch.randn(channels, dtype=torch.float64).to(device, dtype)
    running_var = (torch.rand(channels, dtype=torch.float64) + 0.5).to(device, dtype)
    return weight, bias, running_mean, running_var


def eager64(x, weight, bias, running_mean, running_var, training, momentum, eps, slope):
    """PyTorch's own BatchNorm → LeakyReLU in float64 (running statistics updated in place)."""
    return F.leaky_relu(
        F.batch_norm(x.double(), running_mean, running_var, weight.double() if weight is not None else None,
                     bias.double() if bias is not None else None, training, momentum, eps),
        slope,
    )


def run_both(backend, x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5, slope=0.2):
    """(ours, float64 eager) values, gradients (x, weight, bias) and running statistics."""
    rm64 = running_mean.double().clone() if running_mean is not None else None
    rv64 = running_var.double().clone() if running_var is not None else None
    x = x.detach().requires_grad_()
    y = batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, training, momentum, eps, slope,
                              backend=backend)
    upstream = torch.randn(y.shape, dtype=torch.float64, device=y.device)
    grads = torch.autograd.grad(y, [t for t in (x, weight, bias) if t is not None], upstream.to(y.dtype))
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_() if weight is not None else None
    b64 = bias.detach().double().requires_grad_() if bias is not None else None
    y64 = eager64(x64, w64, b64, rm64, rv64, training, momentum, eps, slope)
    grads64 = torch.autograd.grad(y64, [t for t in (x64, w64, b64) if t is not None], upstream)
    return (y, grads, running_mean, running_var), (y64, grads64, rm64, rv64)


def assert_matches(ours, want, rtol=1e-4, atol=1e-5):
    y, grads, rm, rv = ours
    y64, grads64, rm64, rv64 = want
    torch.testing.assert_close(y.double(), y64, rtol=rtol, atol=atol)
    for g, g64 in zip(grads, grads64):
        scale = g64.abs().max().item()
        torch.testing.assert_close(g.double(), g64, rtol=rtol, atol=atol * max(scale, 1e-3))
    if rm is not None:
        torch.testing.assert_close(rm.double(), rm64, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rv.double(), rv64, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("slope", SLOPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape,channels_last", SHAPES, ids=str)
def test_matches_eager_float64(backend, device, shape, channels_last, training, slope):
    x = make_input(shape, channels_last, device)
    weight, bias, running_mean, running_var = make_params(shape[1], device)
    if not training:  # eval normalises with the running statistics: give them the data's scale
        running_mean.copy_(x.double().mean([0] + list(range(2, x.dim()))).to(running_mean.dtype) + 0.5)
        running_var.mul_(60.0)
    ours, want = run_both(backend, x, weight, bias, running_mean, running_var, training, slope=slope)
    assert_matches(ours, want)
    y = ours[0]
    assert y.shape == x.shape and y.dtype == x.dtype and y.stride() == x.stride()


@pytest.mark.parametrize("momentum", [0.1, None, 1.0])
def test_running_statistics_over_several_steps(backend, device, momentum):
    module = BatchNormLeakyReLU2d(5, momentum=momentum, negative_slope=0.2, backend=backend).to(device)
    twin = nn.BatchNorm2d(5, momentum=momentum).to(device).double()
    for step in range(4):
        x = make_input((3, 5, 4, 3), step % 2 == 1, device, mean=10.0 * step)
        module(x)
        twin(x.double())
    assert module.num_batches_tracked.item() == 4
    torch.testing.assert_close(module.running_mean.double(), twin.running_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(module.running_var.double(), twin.running_var, rtol=1e-5, atol=1e-5)
    module.eval()
    twin.eval()
    x = make_input((2, 5, 3, 3), False, device, mean=15.0)
    torch.testing.assert_close(module(x).double(), F.leaky_relu(twin(x.double()), 0.2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("affine,track", [(False, True), (True, False), (False, False)])
def test_module_options_match_batchnorm(backend, device, affine, track):
    module = BatchNormLeakyReLU1d(6, affine=affine, track_running_stats=track, negative_slope=0.0, backend=backend)
    twin = nn.BatchNorm1d(6, affine=affine, track_running_stats=track).double()
    module.to(device), twin.to(device)
    for mode in ("train", "eval", "train"):
        module.train(mode == "train"), twin.train(mode == "train")
        x = make_input((7, 6, 5), False, device).requires_grad_()
        y = module(x)
        x64 = x.detach().double().requires_grad_()
        y64 = F.relu(twin(x64))
        torch.testing.assert_close(y.double(), y64, rtol=1e-4, atol=1e-5)
        g = torch.randn_like(y)
        torch.testing.assert_close(torch.autograd.grad(y, x, g)[0].double(), torch.autograd.grad(y64, x64, g.double())[0],
                                   rtol=1e-4, atol=1e-5)
    assert module.state_dict().keys() == twin.state_dict().keys()


def test_state_dict_keys_identical_and_load_either_way(device):
    for fused_cls, plain_cls in ((BatchNormLeakyReLU1d, nn.BatchNorm1d), (BatchNormLeakyReLU2d, nn.BatchNorm2d)):
        plain = plain_cls(4)
        with torch.no_grad():
            plain.weight.uniform_(), plain.bias.uniform_(), plain.running_mean.uniform_()
        plain.num_batches_tracked.fill_(7)
        fused = fused_cls(4, negative_slope=0.2)
        assert list(fused.state_dict()) == list(plain.state_dict())
        fused.load_state_dict(plain.state_dict())
        back = plain_cls(4)
        back.load_state_dict(fused.state_dict())
        for key, value in plain.state_dict().items():
            assert torch.equal(back.state_dict()[key], value)
    assert "negative_slope=0.2" in repr(BatchNormLeakyReLU2d(3, negative_slope=0.2))


def test_half_precision_within_pytorchs_own_error(backend, device):
    for dtype in (torch.float16, torch.bfloat16):
        for training in (True, False):
            x = make_input((4, 3, 5, 7), False, device, dtype, mean=3.0, scale=2.0).requires_grad_()
            weight, bias, running_mean, running_var = make_params(3, device)
            running_mean.fill_(3.0), running_var.fill_(4.0)
            y = batch_norm_leaky_relu(x, weight, bias, running_mean.clone(), running_var.clone(), training, 0.1, 1e-5, 0.2,
                                      backend=backend)
            assert y.dtype == dtype
            g = torch.randn_like(y)
            (gx,) = torch.autograd.grad(y, x, g)
            x64 = x.detach().double().requires_grad_()
            y64 = eager64(x64, weight.detach(), bias.detach(), running_mean.double().clone(), running_var.double().clone(),
                          training, 0.1, 1e-5, 0.2)
            (gx64,) = torch.autograd.grad(y64, x64, g.double())
            # PyTorch's own: the block computed in float32 (as cuDNN does for half inputs) and
            # rounded to the dtype, the gradient likewise.
            x32 = x.detach().float().requires_grad_()
            y32 = eager64(x32, weight.detach(), bias.detach(), running_mean.double().clone(), running_var.double().clone(),
                          training, 0.1, 1e-5, 0.2).to(dtype)
            (gx32,) = torch.autograd.grad(y32, x32, g)
            eps = torch.finfo(dtype).eps
            for ours, theirs, ref in ((y, y32, y64), (gx, gx32.to(dtype), gx64)):
                allowed = 2 * (theirs.double() - ref).abs().max().item() + 2 * eps * ref.abs().max().item()
                assert (ours.double() - ref).abs().max().item() <= allowed


# Layouts that select each cuda walk: planar 16-byte packs (H·W a multiple of 8), channels-last
# packs (C = 8, 16: a multiple of the pack width), and element by element (H·W = 7×5 planar,
# C = 17 channels-last, and storage starting one element in, as x[1:] does).
WALK_CASES = {
    "planar_16x16": ((2, 8, 16, 16), False, False),
    "planar_7x5": ((2, 16, 7, 5), False, False),
    "channels_last_C8_16x16": ((2, 8, 16, 16), True, False),
    "channels_last_C16_7x5": ((3, 16, 7, 5), True, False),
    "channels_last_C17_16x16": ((2, 17, 16, 16), True, False),
    "planar_offset_by_one": ((2, 8, 16, 16), False, True),
    "channels_last_offset_by_one": ((3, 16, 7, 5), True, True),
}


def offset_by_one(x):
    """x's values and strides in a storage that starts one element earlier (misaligned)."""
    storage = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
    moved = storage[1:].as_strided(x.shape, x.stride())
    moved.copy_(x)
    return moved


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", list(WALK_CASES))
def test_packed_and_element_walks_match_float64(backend, device, case, training, dtype):
    """Every walk, forward and backward, with the incoming gradient in x's layout (so that
    all three backward tensors share it); bfloat16 within PyTorch's own error."""
    shape, channels_last, misaligned = WALK_CASES[case]
    x = make_input(shape, channels_last, device, dtype, mean=3.0, scale=2.0)
    if misaligned:
        x = offset_by_one(x)
    weight, bias, running_mean, running_var = make_params(shape[1], device)
    running_mean.fill_(3.0), running_var.fill_(4.0)
    x = x.detach().requires_grad_()
    rm, rv = running_mean.clone(), running_var.clone()
    y = batch_norm_leaky_relu(x, weight, bias, rm, rv, training, 0.1, 1e-5, 0.2, backend=backend)
    assert y.dtype == dtype and y.stride() == x.stride()
    upstream = torch.empty_like(x, dtype=torch.float64).copy_(torch.randn(shape, dtype=torch.float64))
    grads = torch.autograd.grad(y, (x, weight, bias), upstream.to(dtype))
    x64 = x.detach().double().requires_grad_()
    w64, b64 = weight.detach().double().requires_grad_(), bias.detach().double().requires_grad_()
    rm64, rv64 = running_mean.double().clone(), running_var.double().clone()
    y64 = eager64(x64, w64, b64, rm64, rv64, training, 0.1, 1e-5, 0.2)
    grads64 = torch.autograd.grad(y64, (x64, w64, b64), upstream)
    if dtype == torch.float32:
        assert_matches((y, grads, rm, rv), (y64, grads64, rm64, rv64))
        return
    # PyTorch's own: the block in float32 on the same inputs, rounded to the dtype.
    x32 = x.detach().float().requires_grad_()
    w32, b32 = weight.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    y32 = eager64(x32, w32, b32, running_mean.double().clone(), running_var.double().clone(), training, 0.1, 1e-5,
                  0.2).to(dtype)
    grads32 = torch.autograd.grad(y32, (x32, w32, b32), upstream.to(dtype))
    eps = torch.finfo(dtype).eps
    for ours, theirs, ref in ((y, y32, y64), *zip(grads, (grads32[0].to(dtype),) + grads32[1:], grads64)):
        allowed = 2 * (theirs.double() - ref).abs().max().item() + 2 * eps * ref.abs().max().item()
        assert (ours.double() - ref).abs().max().item() <= allowed


def test_reference_gradcheck_and_double_backward():
    x = make_input((3, 2, 2, 2), False, "cpu", torch.float64, mean=1.0, scale=1.0).requires_grad_()
    weight, bias, running_mean, running_var = (t.detach().double() for t in make_params(2, "cpu"))
    weight.requires_grad_(), bias.requires_grad_()
    for training in (True, False):
        def fn(x_, w_, b_):
            return batch_norm_leaky_relu_reference(x_, w_, b_, running_mean.clone(), running_var.clone(), training, 0.1,
                                                   1e-5, 0.2)

        assert torch.autograd.gradcheck(fn, (x, weight, bias))
        assert torch.autograd.gradgradcheck(fn, (x, weight, bias))


def test_torch_backend_gradcheck_and_double_backward():
    """The torch backend (PyTorch's native kernels, its own autograd Function) in float64."""
    x = make_input((3, 2, 2, 2), False, "cpu", torch.float64, mean=1.0, scale=1.0).requires_grad_()
    weight, bias, running_mean, running_var = (t.detach().double() for t in make_params(2, "cpu"))
    weight.requires_grad_(), bias.requires_grad_()
    for training in (True, False):
        def fn(x_, w_, b_):
            return batch_norm_leaky_relu(x_, w_, b_, running_mean.clone(), running_var.clone(), training, 0.1, 1e-5,
                                         0.2, backend="torch")

        assert torch.autograd.gradcheck(fn, (x, weight, bias))
        assert torch.autograd.gradgradcheck(fn, (x, weight, bias))


def test_double_backward_r1_penalty(backend, device):
    """An R1-style penalty through a discriminator containing the block: the gradient of
    ||∇_x D(x)||² with respect to x and the block's weight, against the reference."""
    x = make_input((4, 3, 3, 3), False, device, mean=2.0, scale=1.0)
    weight, bias, _, _ = make_params(3, device)
    probe = torch.randn(4, 3, 3, 3, device=device)

    def r1(backend_name):
        xx = x.detach().clone().requires_grad_()
        if backend_name == "reference":
            out = batch_norm_leaky_relu_reference(xx, weight, bias, None, None, True, 0.1, 1e-5, 0.2)
        else:
            out = batch_norm_leaky_relu(xx, weight, bias, None, None, True, 0.1, 1e-5, 0.2, backend=backend_name)
        (gx,) = torch.autograd.grad((out * probe).sum(), xx, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), (xx, weight, bias))

    for got, want in zip(r1(backend), r1("reference")):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_saves_no_more_than_eager(backend, device):
    """The kernel backends save x alone (and vectors of C); the torch backend saves x and its
    own output y, which is what eager BatchNorm + an in-place activation saves, y being the next
    layer's input; eager with an out-of-place activation saves a third tensor of x's size."""
    x = make_input((4, 8, 6, 6), False, device).requires_grad_()
    weight, bias, running_mean, running_var = make_params(8, device)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, True, 0.1, 1e-5, 0.2, backend=backend)
    large = [t.untyped_storage().data_ptr() for t in saved if t.numel() == x.numel()]
    # Vectors of C beyond the arguments themselves (saving weight or a running buffer keeps no
    # new memory): the batch mean and invstd; the kernels' mean is a (float32 mean, residual) pair.
    arguments = {t.untyped_storage().data_ptr() for t in (weight, bias, running_mean, running_var)}
    new_vectors = [t for t in saved if t.numel() != x.numel() and t.untyped_storage().data_ptr() not in arguments]
    assert sum(t.numel() for t in new_vectors) <= (2 if backend == "torch" else 3) * 8
    x_storage, y_storage = x.untyped_storage().data_ptr(), y.untyped_storage().data_ptr()
    assert sorted(large) == sorted([x_storage, y_storage] if backend == "torch" else [x_storage])
    eager = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: eager.append(t.numel()) or t, lambda t: t):
        F.leaky_relu(F.batch_norm(x, running_mean.clone(), running_var.clone(), weight, bias, True), 0.2)
    assert sum(n == x.numel() for n in eager) >= len(large)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_negative_slope_matches_eager_float64(backend, device, training):
    """A negative slope makes y's sign differ from the BatchNorm output's, so the torch
    backend's mask cannot come from y: it is rebuilt from x (the kernels always do)."""
    x = make_input((6, 5, 7, 3), False, device).requires_grad_()
    weight, bias, running_mean, running_var = make_params(5, device)
    assert_matches(*run_both(backend, x, weight, bias, running_mean, running_var, training, slope=-0.3))


def test_writes_every_output(kernel_backend, device, monkeypatch):
    def poisoned_like(like):
        return torch.full_like(like, math.nan)

    def poisoned(like, shape, dtype=None):
        return torch.full(shape, math.nan, dtype=dtype or like.dtype, device=like.device)

    monkeypatch.setattr(_launch, "output_like", poisoned_like)
    monkeypatch.setattr(_launch, "output", poisoned)
    for shape, channels_last in ((3, 17, 7, 5), True), ((5, 3, 41, 40), False), ((33, 5), False):
        x = make_input(shape, channels_last, device).requires_grad_()
        weight, bias, running_mean, running_var = make_params(shape[1], device)
        for training in (True, False):
            y = batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, training, 0.1, 1e-5, 0.2,
                                      backend=kernel_backend)
            grads = torch.autograd.grad(y, (x, weight, bias), torch.ones_like(y))
            assert not torch.isnan(y).any() and not any(torch.isnan(g).any() for g in grads)
            assert not torch.isnan(running_mean).any() and not torch.isnan(running_var).any()


def test_multi_split_reduction_matches(kernel_backend, device):
    # Enough positions that the statistics are split across programs and merged (Chan).
    x = make_input((6, 3, 41, 40), False, device, mean=100.0, scale=3.0)
    plan = bn_module._plan(x.view(6, 3, -1))
    assert plan.splits > 1
    weight, bias, running_mean, running_var = make_params(3, device)
    ours, want = run_both(kernel_backend, x, weight, bias, running_mean, running_var, True)
    assert_matches(ours, want)


def test_plan_switches_to_64_bit_offsets():
    small = torch.empty((4, 3, 100), device="meta")
    huge = torch.empty((2**17, 3, 2**14), device="meta")
    assert not bn_module._plan(small).needs_int64
    assert bn_module._plan(huge).needs_int64


def test_other_layouts_warn_once_and_are_correct(kernel_backend, device):
    base = make_input((3, 8, 4, 6), False, device)
    x = base.permute(0, 1, 3, 2)  # (N, C, W, H) view: neither contiguous nor channels_last
    weight, bias, running_mean, running_var = make_params(8, device)
    fastgan._backend._warned.clear() if hasattr(fastgan._backend, "_warned") else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours, want = run_both(kernel_backend, x, weight, bias, running_mean, running_var, True)
    assert_matches(ours, want)
    assert any("neither contiguous nor channels_last" in str(w.message) for w in caught)


def test_errors(backend, device):
    x = make_input((4, 3, 2, 2), False, device)
    weight, bias, running_mean, running_var = make_params(3, device)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        batch_norm_leaky_relu(x[:1, :, :1, :1], weight, bias, running_mean, running_var, True, backend=backend)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        batch_norm_leaky_relu(x, weight[:2], bias, running_mean, running_var, True, backend=backend)
    with pytest.raises(ValueError, match="num_batches_tracked"):
        batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, True, None, backend=backend)
    with pytest.raises(ValueError, match="running_mean/running_var, which are None"):
        batch_norm_leaky_relu(x, weight, bias, None, None, False, backend=backend)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        batch_norm_leaky_relu(x.long(), weight, bias, running_mean, running_var, True, backend=backend)
    with pytest.raises(ValueError, match="eps must be > 0"):
        batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, True, 0.1, 0.0, backend=backend)
    with pytest.raises(ValueError, match="negative_slope"):
        batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, True, 0.1, 1e-5, math.nan, backend=backend)
    with pytest.raises(TypeError, match="num_batches_tracked must be a one-element int64"):
        batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, True, None,
                              num_batches_tracked=torch.ones((), device=device), backend=backend)
    if backend != "torch":
        with pytest.raises(ValueError, match="running_mean must be contiguous"):
            batch_norm_leaky_relu(x, weight, bias, torch.zeros(6, device=device)[::2], running_var, True, backend=backend)
        # strided parameters are fine: copied
        wide = torch.randn(6, device=device)
        ours = batch_norm_leaky_relu(x, wide[::2], bias, None, None, True, backend=backend)
        want = batch_norm_leaky_relu(x, wide[::2].contiguous(), bias, None, None, True, backend="torch")
        torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)
    if backend != "torch":  # float64 parameters: only the torch backend takes them
        with pytest.raises(fastgan.BackendUnavailableError, match="float64"):
            batch_norm_leaky_relu(x, weight.double(), bias, running_mean, running_var, True, backend=backend)
    with pytest.raises(ValueError, match="expected 4D input"):
        BatchNormLeakyReLU2d(3)(x[0])
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        BatchNormLeakyReLU1d(3)(x)


def test_errors_after_a_valid_call_with_the_same_layouts(backend, device):
    """Validation is cached by the arguments' layouts and scalar values; a call that differs
    only in a scalar's type or value is still refused."""
    x = make_input((4, 3, 2, 2), False, device)
    weight, bias, running_mean, running_var = make_params(3, device)
    batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, True, 0.1, 1e-5, 0.2, backend=backend)
    with pytest.raises(TypeError, match="training must be a bool"):
        batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, 1, 0.1, 1e-5, 0.2, backend=backend)
    with pytest.raises(TypeError, match="momentum must be a float or None"):
        batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, True, True, 1e-5, 0.2, backend=backend)
    with pytest.raises(ValueError, match="eps must be > 0"):
        batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, True, 0.1, -1e-5, 0.2, backend=backend)
    with pytest.raises(ValueError, match="negative_slope"):
        batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, True, 0.1, 1e-5, math.inf, backend=backend)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        batch_norm_leaky_relu(x, weight.tolist(), bias, running_mean, running_var, True, 0.1, 1e-5, 0.2,
                              backend=backend)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        batch_norm_leaky_relu(x, weight, bias[:2], running_mean, running_var, True, 0.1, 1e-5, 0.2, backend=backend)


def test_cached_validation_still_refuses_a_non_tensor(backend, device):
    """An object with a tensor's attributes is not a tensor, after a valid call as before it."""
    x = make_input((4, 3, 2, 2), False, device)
    weight, bias, running_mean, running_var = make_params(3, device)

    class LooksLikeATensor:
        shape, dtype, device = weight.shape, weight.dtype, weight.device

        def stride(self):
            return weight.stride()

    batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, True, 0.1, 1e-5, 0.2, backend=backend)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        batch_norm_leaky_relu(x, LooksLikeATensor(), bias, running_mean, running_var, True, 0.1, 1e-5, 0.2,
                              backend=backend)
    with pytest.raises(ValueError, match="momentum must be finite"):
        batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, True, math.nan, 1e-5, 0.2, backend=backend)


def _strided_input(layout: str, device) -> torch.Tensor:
    """Inputs whose (N, C, S) view is not dense: the backward reuses the forward's plan for them."""
    if layout == "batch-sliced":
        return make_input((8, 3, 4, 5), False, device)[::2]
    if layout == "batch-sliced channels_last":
        return make_input((8, 3, 4, 5), True, device)[::2]
    if layout == "expanded over N":
        return make_input((1, 3, 4, 5), False, device).expand(4, 3, 4, 5)
    if layout == "expanded over H, W":
        return make_input((4, 3, 1, 1), False, device).expand(4, 3, 4, 5)
    return make_input((6, 3, 1, 1), True, device)  # (N, C, 1, 1) channels_last


def _upstream_in(layout: str, shape, device) -> torch.Tensor:
    if layout == "expanded":  # over H (over N it would make dL/dweight exactly 0 in training: Σ_n x̂ = 0)
        return torch.randn(tuple(shape[:2]) + (1,) + tuple(shape[3:]), dtype=torch.float64, device=device).expand(shape)
    upstream = torch.randn(shape, dtype=torch.float64, device=device)
    return upstream.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else upstream


@pytest.mark.parametrize("layout", ["batch-sliced", "batch-sliced channels_last", "expanded over N",
                                    "expanded over H, W", "(N, C, 1, 1) channels_last"])
@pytest.mark.parametrize("upstream_layout", ["contiguous", "channels_last", "expanded"])
@pytest.mark.parametrize("training", [True, False])
def test_strided_inputs_and_upstream_gradients(kernel_backend, device, layout, upstream_layout, training):
    x = _strided_input(layout, device).detach().requires_grad_()
    weight, bias, running_mean, running_var = make_params(3, device)
    rm64, rv64 = running_mean.double().clone(), running_var.double().clone()
    y = batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, training, 0.1, 1e-5, 0.2,
                              backend=kernel_backend)
    upstream = _upstream_in(upstream_layout, y.shape, device)
    grads = torch.autograd.grad(y, (x, weight, bias), upstream.to(y.dtype))
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    y64 = eager64(x64, w64, b64, rm64, rv64, training, 0.1, 1e-5, 0.2)
    grads64 = torch.autograd.grad(y64, (x64, w64, b64), upstream)
    assert_matches((y, grads, running_mean, running_var), (y64, grads64, rm64, rv64))


@pytest.mark.parametrize("form", ["functional", "module"])
def test_torch_compile_dynamic_batch_is_one_graph(backend, device, form):
    """Traceable with fullgraph on every backend, and the validation cache stays out of traced
    code (no guard on it): a dynamic batch size compiles once, with eager calls of other sizes
    filling the cache in between. The module's float attributes are symbolic there."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    weight, bias, running_mean, running_var = make_params(3, device)
    module = BatchNormLeakyReLU2d(3, negative_slope=0.2, backend=backend).to(device)

    def block(x):
        if form == "module":
            return module(x)
        return batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, True, 0.1, 1e-5, 0.2,
                                     backend=backend)

    counter = CompileCounter()
    compiled = torch.compile(block, backend=counter, fullgraph=True, dynamic=True)
    for batch in (4, 5, 7):
        x = make_input((batch, 3, 5, 5), False, device)
        block(x)
        module.eval()
        want = block(x)
        torch.testing.assert_close(compiled(x), want)
        module.train()
        compiled(x)
    assert counter.frame_count == (2 if form == "module" else 1)  # the module: its train and eval forwards


def test_torch_backend_compiles_fullgraph_with_inductor(device):
    """The torch backend (the CPU default) under torch.compile(fullgraph=True): the reference's
    ops, compiled; values, gradients and running statistics as in eager."""
    torch._dynamo.reset()
    module = BatchNormLeakyReLU2d(3, momentum=None, negative_slope=0.2, backend="torch").to(device)
    twin = copy.deepcopy(module)
    compiled = torch.compile(module, fullgraph=True)
    for step in range(2):
        x = make_input((4, 3, 5, 5), step == 1, device).requires_grad_()
        got, want = compiled(x), twin(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.autograd.grad(got.sum(), x)[0], torch.autograd.grad(want.sum(), x)[0],
                                   rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(module.running_mean, twin.running_mean)
    torch.testing.assert_close(module.running_var, twin.running_var)
    assert module.num_batches_tracked.item() == twin.num_batches_tracked.item() == 2


def test_eager_forward_with_compiled_autograd_backward(kernel_backend, device):
    """The eager Function's backward traced by compiled autograd takes the registered backward op."""
    compiled_autograd = pytest.importorskip("torch._dynamo.compiled_autograd")
    if not hasattr(compiled_autograd, "_enable"):
        pytest.skip("this torch has no compiled_autograd._enable")
    torch._dynamo.reset()
    weight, bias, _, _ = make_params(3, device)
    x = make_input((4, 3, 5, 5), False, device).requires_grad_()
    want = torch.autograd.grad(batch_norm_leaky_relu(x, weight, bias, None, None, True, backend=kernel_backend).sum(),
                               (x, weight, bias))
    y = batch_norm_leaky_relu(x, weight, bias, None, None, True, backend=kernel_backend)
    with compiled_autograd._enable(torch.compile(backend="aot_eager")):
        y.sum().backward()
    for got, expected in zip((x.grad, weight.grad, bias.grad), want):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_opcheck(kernel_backend, device):
    x3 = make_input((4, 3, 10), False, device).requires_grad_()
    weight, bias, running_mean, running_var = make_params(3, device)
    nbt = torch.tensor(3, device=device)
    for training, cumulative in ((True, False), (True, True), (False, False)):
        args = (x3, weight, bias, running_mean, running_var, nbt if cumulative else None, training, 0.1, cumulative,
                1e-5, 0.2, kernel_backend)
        torch.library.opcheck(torch.ops.fastgan.batch_norm_leaky_relu.default, args,
                              test_utils=("test_schema", "test_faketensor"))
        _, mean, invstd = bn_module._batch_norm_leaky_relu_op(*args)
        saved = (mean.detach(), invstd.detach()) if training else (running_mean, running_var)
        torch.library.opcheck(
            torch.ops.fastgan.batch_norm_leaky_relu_backward.default,
            (torch.randn_like(x3), x3.detach(), weight.detach(), bias.detach(), *saved, training, training, 1e-5, 0.2,
             True, True, True, kernel_backend),
        )


def test_torch_compile_fullgraph(kernel_backend, device):
    torch._dynamo.reset()
    module = BatchNormLeakyReLU2d(3, momentum=None, negative_slope=0.2, backend=kernel_backend).to(device)
    twin = copy.deepcopy(module)
    compiled = torch.compile(module, fullgraph=True)
    for step in range(2):
        x = make_input((4, 3, 5, 5), step == 1, device).requires_grad_()
        got, want = compiled(x), twin(x)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(torch.autograd.grad(got.sum(), x)[0], torch.autograd.grad(want.sum(), x)[0])
    torch.testing.assert_close(module.running_mean, twin.running_mean)
    assert module.num_batches_tracked.item() == twin.num_batches_tracked.item() == 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA GPU")
def test_cuda_graph_capture(kernel_backend, capture_cuda_graph):
    module = BatchNormLeakyReLU2d(8, momentum=None, negative_slope=0.2, backend=kernel_backend).cuda()
    x = torch.randn(16, 8, 6, 6, device="cuda", requires_grad=True)

    def step():
        return torch.autograd.grad(module(x).square().sum(), x)[0]

    graph, static_grad = capture_cuda_graph(step)
    x.data.copy_(torch.randn_like(x) * 3 + 1)
    before = module.num_batches_tracked.clone()
    graph.replay()
    torch.cuda.synchronize()
    assert module.num_batches_tracked.item() == before.item() + 1
    torch.testing.assert_close(static_grad, step())


# --------------------------------------------------------------------------------------
# fastgan.fuse on a DCGAN pair
# --------------------------------------------------------------------------------------


def dcgan_generator(z=8, width=8):
    return nn.Sequential(
        nn.ConvTranspose2d(z, width * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(width * 4), nn.ReLU(True),
        nn.ConvTranspose2d(width * 4, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.ReLU(True),
        nn.ConvTranspose2d(width * 2, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True),
        nn.ConvTranspose2d(width, 3, 4, 2, 1, bias=False), nn.Tanh(),
    )


def dcgan_discriminator(width=8):
    return nn.Sequential(
        nn.Conv2d(3, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Sequential(nn.Conv2d(width * 2, width * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 4),
                      nn.LeakyReLU(0.2, inplace=True)),
        nn.Conv2d(width * 4, 1, 4, 1, 0, bias=False), nn.Flatten(),
    )


def test_fuse_dcgan_pair_matches_unfused(backend, device):
    generator, discriminator = dcgan_generator().to(device), dcgan_discriminator().to(device)
    fused_g, fused_d = copy.deepcopy(generator), copy.deepcopy(discriminator)
    assert fastgan.fuse(fused_g, backend=backend) is fused_g
    report_g = fastgan.fuse(fused_g, backend=backend, report=True)[1]  # a second call finds nothing new
    assert len(report_g) == 0
    fused_g = copy.deepcopy(generator)
    g_params = list(fused_g.parameters())
    fused_g, report_g = fastgan.fuse(fused_g, backend=backend, report=True)
    fused_d, report_d = fastgan.fuse(fused_d, backend=backend, report=True)
    assert [p.path for p in report_g.fused] == ["1", "4", "7"]
    assert [p.path for p in report_d.fused] == ["3", "5.1"]
    assert "BatchNorm2dLeakyReLU" in str(report_d) and len(report_g) == 3
    assert list(fused_g.parameters()) == g_params  # the same tensors: optimizers keep working
    assert isinstance(fused_g[2], nn.Identity) and fused_g[1].negative_slope == 0.0
    assert fused_d[3].negative_slope == 0.2
    for mode in (True, False):
        for model in (generator, discriminator, fused_g, fused_d):
            model.train(mode)
        z = torch.randn(4, 8, 1, 1, device=device)
        images, images_fused = generator(z), fused_g(z)
        torch.testing.assert_close(images_fused, images, rtol=1e-4, atol=1e-5)
        logits, logits_fused = discriminator(images), fused_d(images_fused)
        torch.testing.assert_close(logits_fused, logits, rtol=1e-4, atol=1e-5)
        grads = torch.autograd.grad(logits.sum(), list(generator.parameters()) + list(discriminator.parameters()))
        grads_fused = torch.autograd.grad(logits_fused.sum(), list(fused_g.parameters()) + list(fused_d.parameters()))
        for a, b in zip(grads_fused, grads):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    # running statistics moved identically in training, and the state_dicts round-trip
    for plain, fused in ((generator, fused_g), (discriminator, fused_d)):
        state = fused.state_dict()
        assert state.keys() == plain.state_dict().keys()
        for key, value in plain.state_dict().items():
            torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6)
        copy.deepcopy(plain).load_state_dict(state)
        fused.load_state_dict(plain.state_dict())


def test_fuse_leaves_other_modules_alone():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.BatchNorm1d(4))
    model, report = fastgan.fuse(model, report=True)
    assert len(report) == 0 and "nothing to fuse" in str(report)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, momentum=None, affine=False), nn.LeakyReLU(0.3))
    model[1].eval()
    assert fastgan.fuse(model) is model
    assert isinstance(model[1], BatchNormLeakyReLU1d) and not model[1].training and model[1].momentum is None
    assert model[1].negative_slope == 0.3 and not model[1].affine
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        fastgan.fuse("model")


# --------------------------------------------------------------------------------------
# Memory and accuracy against eager PyTorch (BatchNorm → activation unfused)
# --------------------------------------------------------------------------------------


def saved_bytes(model, *inputs):
    """Bytes of the distinct storages autograd saves for the backward of ``model(*inputs)``."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(*inputs)
    return sum(storages.values())


def test_dcgan_saves_no_more_than_eager(backend, device):
    """A whole DCGAN pair, fused, keeps no more for the backward than eager BatchNorm followed
    by the examples' in-place activations (which already save only each block's input and
    output, the output being the next layer's input anyway)."""
    generator, discriminator = dcgan_generator().to(device), dcgan_discriminator().to(device)
    fused_g = fastgan.fuse(copy.deepcopy(generator), backend=backend)
    fused_d = fastgan.fuse(copy.deepcopy(discriminator), backend=backend)
    z = torch.randn(8, 8, 1, 1, device=device, requires_grad=True)
    images = torch.randn(8, 3, 32, 32, device=device, requires_grad=True)
    for plain, fused, x in ((generator, fused_g, z), (discriminator, fused_d, images)):
        eager, ours = saved_bytes(plain, x), saved_bytes(fused, x)
        assert ours <= eager, (type(plain[0]).__name__, ours, eager)


def relative_error(value, reference):
    return ((value.double() - reference).norm() / reference.norm()).item()


def at_rounded_mean(shape, mean, std, at_mean, channels_last, device):
    """float32 (N, C, *) input with mean ≫ std built so that, in every channel, ``at_mean``
    elements equal the float32-rounded batch mean μ exactly while the exact mean lies a quarter
    ulp below μ (rounding residual ρ = −ulp(μ)/4): with zero bias those elements' z = −ρ·w·invstd
    is a tiny positive number, whose sign a backward that drops ρ gets wrong (z = 0 there)."""
    channels = shape[1]
    values = (torch.randn(shape, dtype=torch.float64) * std + mean).float().transpose(0, 1).reshape(channels, -1)
    positions = values.shape[1]
    for row in values:
        rounded = row.double().mean().float()
        row[1:1 + at_mean] = rounded
        quarter_ulp = (torch.nextafter(rounded, torch.tensor(math.inf)) - rounded).double() / 4
        # One other element takes up the difference, putting the exact mean at μ − ulp/4.
        row[0] = (row[0].double() + ((rounded.double() - quarter_ulp) * positions - row.double().sum())).float()
        exact = row.double().mean()
        assert exact.float() == rounded and exact < rounded.double()
    x = values.reshape(channels, shape[0], *shape[2:]).transpose(0, 1).contiguous().to(device)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def test_backward_mask_uses_the_mean_residual(kernel_backend, device):
    """The backward rebuilds the activation's input z with the float32 mean's rounding residual,
    as the forward normalised: elements whose z lies within |residual·w·invstd| of 0 take the
    forward's branch of the LeakyReLU, so the gradients stay at float32 accuracy against float64
    when |mean| ≫ std. (Eager float32 PyTorch itself flips those elements, its gradients ~10%
    off here, so the yardstick is float32's resolution, not eager's error.)"""
    shape, channels = (4, 3, 5, 7), 3
    for channels_last, slope in ((False, 0.2), (True, 0.2), (False, 0.0)):
        x = at_rounded_mean(shape, 1e3, 1.0, 3, channels_last, device)
        weight, bias = (torch.rand(channels) + 0.5).to(device), torch.zeros(channels, device=device)
        upstream = torch.randn(shape, device=device)
        results = []
        for op, dtype in ((bn_module.batch_norm_leaky_relu, torch.float32), (None, torch.float64)):
            leaves = [t.to(dtype).requires_grad_() for t in (x, weight, bias)]
            if op is None:
                y = F.leaky_relu(F.batch_norm(leaves[0], None, None, leaves[1], leaves[2], True, 0.1, 1e-5), slope)
            else:
                y = op(*leaves, None, None, True, 0.1, 1e-5, slope, backend=kernel_backend)
            results.append((y, *torch.autograd.grad(y, leaves, upstream.to(dtype))))
        for name, got, exact in zip(("y", "grad x", "grad weight", "grad bias"), *results):
            assert relative_error(got, exact) < 1e-5, (name, channels_last, slope, relative_error(got, exact))


@pytest.mark.parametrize("channels_last", [False, True], ids=["planar", "channels_last"])
@pytest.mark.parametrize("slope", [0.2, 0.0, -0.3])
@pytest.mark.parametrize("mean", [1e3, 1e5])
def test_cpu_kernel_keeps_the_mean_residual(cpu_kernels, channels_last, slope, mean):
    """The native CPU kernel normalises x − μ with the float64 mean as a float32 pair (μ, ρ):
    with |mean| ≫ std, dropping ρ moves every output by ρ·w·invstd, past float32's resolution
    against float64 here. Its variance, summed around the float32 mean μ, is corrected by
    P·ρ² (at mean 1e5, std 1, dropping that is a 4e-6 relative error in y)."""
    shape, channels = (4, 17, 9, 9), 17  # 17 channels: a block of 16 and one more (channels_last)
    x = at_rounded_mean(shape, mean, 1.0, 3, channels_last, "cpu")
    weight, bias = torch.rand(channels) + 0.5, torch.zeros(channels)
    upstream = torch.randn(shape)
    results = []
    for dtype in (torch.float32, torch.float64):
        leaves = [t.to(dtype).requires_grad_() for t in (x, weight, bias)]
        if dtype == torch.float32:
            y = batch_norm_leaky_relu(*leaves, None, None, True, 0.1, 1e-5, slope, backend="torch")
        else:
            y = F.leaky_relu(F.batch_norm(leaves[0], None, None, leaves[1], leaves[2], True, 0.1, 1e-5), slope)
        results.append((y, *torch.autograd.grad(y, leaves, upstream.to(dtype))))
    assert cpu_kernels == ["forward", "backward"]
    for name, got, exact in zip(("y", "grad x", "grad weight", "grad bias"), *results):
        assert relative_error(got, exact) < (1e-6 if name == "y" else 1e-5), (name, relative_error(got, exact))


@pytest.mark.parametrize("channels_last", [False, True], ids=["planar", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cpu_kernel_bfloat16_is_float32_rounded_once(cpu_kernels, channels_last, training):
    """The bfloat16 kernels compute what the float32 ones do on the same values and round the
    result once, to nearest even: y equals the float32 kernel's rounded; grad x too, but for
    the few elements whose float32 value lies within a rounding of a bfloat16 tie (the planar
    bfloat16 backward sums in float32 blocks, as eager's does, the float32 one in float64),
    which may round the other way: one bfloat16 ulp."""
    shape = (3, 17, 9, 11)  # 17 channels: a block of 16 and one more (channels_last)
    x = make_input(shape, channels_last, "cpu", torch.bfloat16, mean=3.0, scale=2.0)
    weight, bias, running_mean, running_var = (t.detach() for t in make_params(shape[1], "cpu"))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    upstream = torch.randn(shape).bfloat16().contiguous(memory_format=fmt)
    results = []
    for dtype in (torch.bfloat16, torch.float32):
        leaf = x.to(dtype).requires_grad_()
        y = batch_norm_leaky_relu(leaf, weight, bias, running_mean.clone(), running_var.clone(), training, 0.1, 1e-5,
                                  0.2, backend="torch")
        (grad_x,) = torch.autograd.grad(y, leaf, upstream.to(dtype))
        results.append((y, grad_x))
    assert cpu_kernels == ["forward", "backward"] * 2
    (y, grad_x), (wide_y, wide_grad_x) = results
    assert torch.equal(y, wide_y.bfloat16())
    rounded = wide_grad_x.bfloat16()
    ulp = rounded.float().abs() * 2.0**-7 + torch.finfo(torch.bfloat16).tiny  # a bfloat16 ulp, or more
    assert ((grad_x.float() - rounded.float()).abs() <= ulp).all()
    assert (grad_x != rounded).float().mean() < 1e-3


def assert_error_within_twice_eager(backend, device, shape, mean, std, training):
    """Against float64 on the same float32 inputs, the values and the x, weight and bias
    gradients are no further off than eager PyTorch's own float32 BatchNorm → LeakyReLU
    (at most twice its error), for slopes 0 and 0.2."""
    channels = shape[1]
    for slope in (0.0, 0.2):
        x = (torch.randn(shape, dtype=torch.float64) * std + mean).float().to(device)
        weight, bias = (torch.randn(channels) + 1).to(device), torch.randn(channels).to(device)
        running_mean = (mean + std * torch.randn(channels)).to(device)
        running_var = (std**2 * (0.5 + torch.rand(channels))).to(device)
        upstream = torch.randn(shape, device=device)

        def run(op, dtype):
            leaves = [t.to(dtype).requires_grad_() for t in (x, weight, bias)]
            y = op(*leaves, running_mean.to(dtype).clone(), running_var.to(dtype).clone())
            return (y, *torch.autograd.grad(y, leaves, upstream.to(dtype)))

        def eager(x_, w_, b_, rm, rv):
            return F.leaky_relu(F.batch_norm(x_, rm, rv, w_, b_, training, 0.1, 1e-5), slope)

        def ours(x_, w_, b_, rm, rv):
            return batch_norm_leaky_relu(x_, w_, b_, rm, rv, training, 0.1, 1e-5, slope, backend=backend)

        exact, theirs, got = run(eager, torch.float64), run(eager, torch.float32), run(ours, torch.float32)
        for name, mine, pytorch, reference in zip(("y", "grad x", "grad weight", "grad bias"), got, theirs, exact):
            ours_error, eager_error = relative_error(mine, reference), relative_error(pytorch, reference)
            assert ours_error <= 2 * eager_error, (name, slope, ours_error, eager_error)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("mean,std", [(40.0, 3.0), (1e3, 1.0)])
def test_error_within_twice_eager_float32(backend, device, mean, std, training):
    """Every backend within twice eager float32's error on inputs whose mean dwarfs their spread."""
    assert_error_within_twice_eager(backend, device, (6, 5, 7, 9), mean, std, training)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("shape", [(6, 5, 8, 9), (3, 6, 65), (2, 3, 1, 70)], ids=str)
def test_torch_backend_planar_statistics_on_one_thread(one_thread, monkeypatch, shape):
    """On one CPU thread, without the native CPU forward, the torch backend takes float32 planar
    training statistics by whole-tensor reductions (the path multi-threaded CI runs would never reach): values,
    gradients and running statistics match float64, and stay within twice eager float32's
    error when |mean| >> std."""
    calls = []
    planar = bn_module._planar_normalise
    monkeypatch.setattr(bn_module, "_planar_normalise", lambda *args: calls.append(1) or planar(*args))
    # The native CPU forward, where built, comes first for float32: this is the path without it.
    monkeypatch.setattr(bn_module, "_cpu_kernel_applies", lambda *args: False)
    x = make_input(shape, False, "cpu").requires_grad_()
    weight, bias, running_mean, running_var = make_params(shape[1], "cpu")
    assert_matches(*run_both("torch", x, weight, bias, running_mean, running_var, True))
    assert calls, "the planar path was not taken"
    for mean, std in ((40.0, 3.0), (1e3, 1.0)):
        x = (torch.randn(shape, dtype=torch.float64) * std + mean).float()
        upstream = torch.randn(shape)

        def run(op, dtype):
            leaves = [t.to(dtype).requires_grad_() for t in (x, weight.detach(), bias.detach())]
            y = op(*leaves)
            return (y, *torch.autograd.grad(y, leaves, upstream.to(dtype)))

        def eager(x_, w_, b_):
            return F.leaky_relu(F.batch_norm(x_, None, None, w_, b_, True, 0.1, 1e-5), 0.2)

        def ours(x_, w_, b_):
            return batch_norm_leaky_relu(x_, w_, b_, None, None, True, 0.1, 1e-5, 0.2, backend="torch")

        exact, theirs, got = run(eager, torch.float64), run(eager, torch.float32), run(ours, torch.float32)
        for name, mine, pytorch, reference in zip(("y", "grad x", "grad weight", "grad bias"), got, theirs, exact):
            assert relative_error(mine, reference) <= 2 * relative_error(pytorch, reference), (name, mean, std)


# ---------------------------------------------------------------------------------------
# The torch backend's native CPU kernels (csrc/cpu/batch_norm.cpp): float32 and bfloat16,
# contiguous or channels_last. The tests above run them wherever they use the torch backend on
# those; these check that they are taken, every layout, dtype and mode, their threads and
# every element written.
# ---------------------------------------------------------------------------------------


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def cpu_kernels(request, monkeypatch):
    # The block's kernel runs on PyTorch's OpenMP pool, or on one intra-op thread where the pool is not shared.
    if _native.module() is None:
        pytest.skip(f"the native CPU kernels are not used here: {_native.status()}")
    if request.param > 1 and not _native.shares_openmp_pool():
        pytest.skip(f"the block kernel runs on one thread here: {_native.status()}")
    threads = torch.get_num_threads()
    torch.set_num_threads(request.param)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    calls = []
    forward, backward = bn_module._cpu_kernel_forward, bn_module._cpu_kernel_backward
    monkeypatch.setattr(bn_module, "_cpu_kernel_forward", lambda *args: calls.append("forward") or forward(*args))
    monkeypatch.setattr(bn_module, "_cpu_kernel_backward", lambda *args: calls.append("backward") or backward(*args))
    return calls


@pytest.mark.parametrize("shape,channels_last", [((3, 5, 17, 19), False), ((2, 7, 257), False), ((4, 3, 16, 16), False),
                                                 ((2, 19, 1, 300), False), ((3, 5, 17, 19), True), ((2, 17, 7, 5), True),
                                                 ((3, 2, 1, 3), True), ((4099, 67), False)], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("slope", [0.0, 0.2, -0.3])
def test_cpu_kernel_matches_float64(cpu_kernels, shape, channels_last, training, affine, slope):
    x = make_input(shape, channels_last, "cpu")
    weight, bias, running_mean, running_var = make_params(shape[1], "cpu")
    if not affine:
        weight = bias = None
    ours, want = run_both("torch", x, weight, bias, running_mean, running_var, training, slope=slope)
    assert cpu_kernels == ["forward", "backward"], "the native CPU forward and backward were not taken"
    assert ours[0].stride() == x.stride()
    assert_matches(ours, want)


NATIVE_CODES = {torch.float32: 0, torch.bfloat16: 2}  # csrc/cpu/dtype.h


@pytest.mark.parametrize("channels_last", [False, True], ids=["planar", "channels_last"])
@pytest.mark.parametrize("dtype,parameter_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                                   (torch.bfloat16, torch.bfloat16)], ids=str)
def test_cpu_kernel_threads_give_the_same_bits(cpu_kernels, channels_last, dtype, parameter_dtype):
    # Split over channels (planar) or over fixed chunks of rows (channels_last) between
    # threads, the kernel's values, statistics and gradients are the same bits for any thread
    # count (the driver runs it under TSan too).
    shape = (3, 5, 263, 269) if not channels_last else (3, 19, 61, 67)  # 19: a block of 16 channels and 3 more
    x = make_input(shape, channels_last, "cpu", dtype)
    weight, bias, running_mean, running_var = (t.detach().to(parameter_dtype) for t in make_params(shape[1], "cpu"))
    upstream = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last if channels_last
                                                       else torch.contiguous_format)
    kernels, channels, spatial = _native.module(), shape[1], shape[2] * shape[3]
    codes = (NATIVE_CODES[dtype], NATIVE_CODES[parameter_dtype], channels_last)
    results = []
    for threads in (1, 2, 3):
        y = torch.full_like(x, math.nan)
        rm, rv, saved = running_mean.clone(), running_var.clone(), torch.empty(3 * channels)
        kernels.batch_norm_leaky_relu_forward(x.data_ptr(), y.data_ptr(), weight.data_ptr(), bias.data_ptr(),
                                              rm.data_ptr(), rv.data_ptr(), saved.data_ptr(), shape[0], channels,
                                              spatial, *codes, True, 0.1, 1e-5, 0.2, threads)
        grads = [torch.full_like(x, math.nan), torch.full_like(weight, math.nan), torch.full_like(bias, math.nan)]
        kernels.batch_norm_leaky_relu_backward(upstream.data_ptr(), x.data_ptr(), y.data_ptr(), weight.data_ptr(),
                                               bias.data_ptr(), saved.data_ptr(), 0,
                                               *(g.data_ptr() for g in grads), shape[0], channels, spatial, *codes,
                                               True, False, 1e-5, 0.2, threads)
        results.append((y, rm, rv, saved, *grads))
    assert not any(torch.isnan(t).any() for t in results[0])
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))
    want = eager64(x, weight, bias, running_mean.double().clone(), running_var.double().clone(), True, 0.1, 1e-5, 0.2)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(results[0][0].double(), want, rtol=tolerance, atol=tolerance)


def test_cpu_kernel_writes_every_element(cpu_kernels, monkeypatch):
    monkeypatch.setattr(_launch, "output_like", lambda like: torch.full_like(like, math.nan))
    for shape, channels_last in (((5, 3, 17, 19), False), ((3, 6, 263), False), ((3, 6, 17, 19), True)):
        for dtype in (torch.float32, torch.bfloat16):
            x = make_input(shape, channels_last, "cpu", dtype).requires_grad_()
            weight, bias, running_mean, running_var = make_params(shape[1], "cpu")
            for training in (True, False):
                y = batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, training, backend="torch")
                (grad_x,) = torch.autograd.grad(y.sum(), x)
                assert not torch.isnan(y).any() and not torch.isnan(grad_x).any(), (shape, channels_last, training)
    assert cpu_kernels.count("forward") == 12 and cpu_kernels.count("backward") == 12


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("slope", [0.2, -0.3])
def test_cpu_kernel_above_its_thread_grain_matches_float64(cpu_kernels, training, slope):
    # Large enough for the kernel to split channels between the pool's threads (the shapes
    # above stay on the calling thread).
    shape = (3, 5, 67, 71)
    assert math.prod(shape) >= 2 * _native.module().batch_norm_thread_grain()
    x = make_input(shape, False, "cpu")
    assert_matches(*run_both("torch", x, *make_params(shape[1], "cpu"), training, slope=slope))
    assert cpu_kernels == ["forward", "backward"]


def test_cpu_kernels_share_pytorchs_openmp_runtime():
    # The extension binds to the libgomp.so.1 torch loaded first (csrc/cpu/parallel.h): its
    # parallel regions run on PyTorch's own runtime and pool, not a second one.
    if _native.module() is None or not _native.module().build_info()["openmp"]:
        pytest.skip(f"the native CPU kernels are not built with OpenMP here: {_native.status()}")
    torchs = _native._torch_openmp_runtime()
    if not torchs:
        pytest.skip("PyTorch's CPU threads are not an OpenMP runtime found here")
    assert os.path.samefile(_native.module().openmp_runtime(), torchs)
    assert _native.shares_openmp_pool()
    assert "PyTorch's OpenMP pool" in _native.status()


def test_cpu_kernels_keep_to_one_thread_on_another_openmp_runtime(monkeypatch):
    # Were the extension's runtime not PyTorch's, its threads would be a second spinning pool:
    # the block kernel then runs only where torch has one thread, and BCE and Rényi on one.
    if _native.module() is None or not _native.module().build_info()["openmp"]:
        pytest.skip(f"the native CPU kernels are not built with OpenMP here: {_native.status()}")
    monkeypatch.setattr(_native, "_torch_openmp_runtime", lambda: "/nonexistent/libgomp.so.1")
    _native.reset()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert not _native.shares_openmp_pool()
        assert _native.threads_for(1 << 20) == 1
        assert "is not PyTorch's" in _native.status()
        calls = []
        monkeypatch.setattr(bn_module, "_cpu_kernel_forward", lambda *args: calls.append(1))
        x = make_input((4, 3, 16, 17), False, "cpu")
        assert_matches(*run_both("torch", x, *make_params(3, "cpu"), True))
        assert not calls
    finally:
        torch.set_num_threads(threads)
        monkeypatch.undo()
        _native.reset()
    assert _native.shares_openmp_pool()


def test_cpu_kernel_takes_rows_from_8x8(cpu_kernels):
    x = make_input((4, 3, 8, 8), False, "cpu")
    assert_matches(*run_both("torch", x, *make_params(3, "cpu"), True))
    assert cpu_kernels == ["forward", "backward"]


def test_short_rows_on_one_thread_run_eager_ops(monkeypatch, one_thread):
    # Below the planar minimum the one-thread planar statistics are slower than PyTorch's kernel.
    calls = []
    monkeypatch.setattr(bn_module, "_planar_normalise", lambda *args: calls.append(1))
    for shape in ((64, 3), (4, 3, 7, 9)):
        x = make_input(shape, False, "cpu")
        assert_matches(*run_both("torch", x, *make_params(3, "cpu"), True))
    assert not calls


def test_cpu_kernel_steps_aside(cpu_kernels):
    # float64, float16, the cumulative average, mixed parameter dtypes, other layouts
    # (channels_last_3d, transposed views), rows shorter than the kernel's minimum (small images)
    # and (N, C) inputs under its minimum take PyTorch's ops (a second OpenMP runtime:
    # test_cpu_kernels_keep_to_one_thread_on_another_openmp_runtime).
    for small in ((64, 3), (4, 3, 7, 9), (4, 3, 60)):
        batch_norm_leaky_relu(make_input(small, False, "cpu"), *make_params(3, "cpu"), True, backend="torch")
    features = make_input((67, 4099), False, "cpu").t()  # (4099, 67), not contiguous
    batch_norm_leaky_relu(features, *make_params(67, "cpu"), True, backend="torch")
    x = make_input((4, 3, 16, 17), False, "cpu")
    weight, bias, running_mean, running_var = make_params(3, "cpu")
    batch_norm_leaky_relu(x.double(), weight.double(), bias.double(), running_mean.double(), running_var.double(),
                          True, backend="torch")
    batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, True, None,
                          num_batches_tracked=torch.zeros((), dtype=torch.long), backend="torch")
    batch_norm_leaky_relu(x.transpose(2, 3), weight, bias, running_mean, running_var, True, backend="torch")
    batch_norm_leaky_relu(x.half(), weight, bias, running_mean, running_var, True, backend="torch")
    batch_norm_leaky_relu(x.bfloat16(), weight.bfloat16(), bias, running_mean, running_var, True, backend="torch")
    cube = make_input((2, 3, 4, 5, 6), False, "cpu").to(memory_format=torch.channels_last_3d)
    batch_norm_leaky_relu(cube, weight, bias, running_mean, running_var, True, backend="torch")
    assert not cpu_kernels


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("mean,std", [(40.0, 3.0), (1e3, 1.0)])
def test_cpu_kernel_error_within_twice_eager_float32(cpu_kernels, mean, std, training):
    """test_error_within_twice_eager_float32 on the shapes and thread count the kernel takes."""
    assert_error_within_twice_eager("torch", "cpu", (6, 5, 9, 9), mean, std, training)
    assert "forward" in cpu_kernels and "backward" in cpu_kernels


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["planar", "channels_last"])
@pytest.mark.parametrize("parameter_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mean,std", [(3.0, 2.0), (40.0, 3.0)])
def test_cpu_kernel_bfloat16_within_pytorchs_own_error(cpu_kernels, parameter_dtype, channels_last, mean, std,
                                                        training):
    """bfloat16 x, with float32 parameters (mixed, as autocast leaves them) or bfloat16 ones (a
    module converted with .to(torch.bfloat16)): values, gradients and running statistics no
    further from float64 than eager PyTorch's bfloat16 BatchNorm → LeakyReLU on the same
    inputs (twice its error, plus one rounding of the result)."""
    shape = (6, 5, 9, 11)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(shape, dtype=torch.float64) * std + mean).bfloat16().contiguous(memory_format=fmt)
    weight, bias = (torch.randn(5) + 1).to(parameter_dtype), torch.randn(5).to(parameter_dtype)
    running_mean = (mean + std * torch.randn(5)).to(parameter_dtype)
    running_var = (std**2 * (0.5 + torch.rand(5))).to(parameter_dtype)
    upstream = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt)

    def run(op, dtype, parameters_as):
        leaves = [x.to(dtype).requires_grad_()] + [t.to(parameters_as).requires_grad_() for t in (weight, bias)]
        rm, rv = running_mean.to(parameters_as).clone(), running_var.to(parameters_as).clone()
        y = op(*leaves, rm, rv)
        return (y, *torch.autograd.grad(y, leaves, upstream.to(dtype)), rm, rv)

    def eager(x_, w_, b_, rm, rv):
        return F.leaky_relu(F.batch_norm(x_, rm, rv, w_, b_, training, 0.1, 1e-5), 0.2)

    def ours(x_, w_, b_, rm, rv):
        return batch_norm_leaky_relu(x_, w_, b_, rm, rv, training, 0.1, 1e-5, 0.2, backend="torch")

    exact = run(eager, torch.float64, torch.float64)
    theirs, got = run(eager, torch.bfloat16, parameter_dtype), run(ours, torch.bfloat16, parameter_dtype)
    assert cpu_kernels == ["forward", "backward"]
    assert got[0].dtype == torch.bfloat16 and got[0].stride() == x.stride() and got[1].stride() == x.stride()
    names = ("y", "grad x", "grad weight", "grad bias", "running mean", "running var")
    for name, mine, pytorch, reference in zip(names, got, theirs, exact):
        assert mine.dtype == pytorch.dtype, name
        rounding = torch.finfo(mine.dtype).eps * reference.abs().max().item()
        ours_error, eager_error = ((t.double() - reference).abs().max().item() for t in (mine, pytorch))
        assert ours_error <= 2 * eager_error + rounding, (name, ours_error, eager_error)
