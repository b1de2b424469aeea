"""The strided-walk plans the kernels use: offsets must equal PyTorch's for every element."""

import pytest
import torch

from fastgan import _indexing
from fastgan.ops import bce as bce_module
from fastgan.ops._cache import BoundedCache
from fastgan.ops.bce import bce_with_logits


def offsets_from_plan(plan, operand):
    """Each element's storage offset in ``operand`` by the plan's 4-d walk, in linear order."""
    idx = torch.arange(plan.numel)
    s0, s1, s2, s3 = plan.sizes
    i3, rest = idx % s3, idx // s3
    i2, rest = rest % s2, rest // s2
    i1, i0 = rest % s1, rest // s1
    st = plan.strides[operand]
    return i0 * st[0] + i1 * st[1] + i2 * st[2] + i3 * st[3]


def true_offsets(t):
    """Storage offsets of a (possibly strided/expanded) view, in row-major element order."""
    index = torch.zeros(t.shape, dtype=torch.long)
    for dim, (size, stride) in enumerate(zip(t.shape, t.stride())):
        shape = [1] * t.dim()
        shape[dim] = size
        index = index + (torch.arange(size) * stride).view(shape)
    return index.reshape(-1)


VIEWS = {
    "contiguous": lambda: torch.empty(3, 4, 5),
    "transposed": lambda: torch.empty(3, 4, 5).transpose(0, 2),
    "sliced": lambda: torch.empty(6, 8, 10)[::2, 1:5, ::3],
    "expanded": lambda: torch.empty(4, 1, 5).expand(4, 3, 5),
    "size_one_dims": lambda: torch.empty(1, 7, 1, 2, 1)[:, ::2],
    "channels_last": lambda: torch.empty(2, 3, 4, 5).to(memory_format=torch.channels_last),
}


@pytest.mark.parametrize("first", list(VIEWS))
@pytest.mark.parametrize("second", list(VIEWS))
def test_plan_offsets_match_torch(first, second):
    a, b = VIEWS[first](), VIEWS[second]()
    if b.shape != a.shape:  # pair `a` with a column-major tensor of its shape instead
        b = torch.empty(tuple(reversed(a.shape))).permute(*reversed(range(a.dim())))
    plan = _indexing.plan(a.shape, [a, b])
    assert plan is not None
    assert torch.equal(offsets_from_plan(plan, 0), true_offsets(a))
    assert torch.equal(offsets_from_plan(plan, 1), true_offsets(b))
    assert plan.contiguous == (a.is_contiguous() and b.is_contiguous())


def test_coalescing_merges_and_gives_up_beyond_four_dims():
    dense = torch.empty(2, 3, 4, 5, 6, 7)
    plan = _indexing.plan(dense.shape, [dense])
    assert plan.contiguous and plan.sizes == (1, 1, 1, dense.numel())
    scrambled = dense.permute(5, 3, 1, 4, 2, 0)
    assert _indexing.plan(scrambled.shape, [scrambled]) is None
    every_other = torch.empty(4, 6, 8)[:, :, ::2]  # strides (48, 8, 2): one dimension of stride 2
    assert _indexing.plan(every_other.shape, [every_other])[1:3] == ((1, 1, 1, 96), ((0, 0, 0, 2),))
    rows = torch.empty(4, 6, 8)[:, ::2, :]  # strides (48, 16, 1): the outer two merge, the last cannot
    assert _indexing.plan(rows.shape, [rows])[1:3] == ((1, 1, 12, 8), ((0, 0, 16, 1),))


def test_int64_needed_past_int32():
    assert not _indexing._dense_plan(2**20, 1).needs_int64
    assert _indexing._dense_plan(2**31 - 1, 1).needs_int64
    strided = _indexing._strided_plan((2, 3), ((2**31, 1),))
    assert strided.needs_int64


def test_int64_kernel_path_matches(kernel_backend, device, monkeypatch, request):
    """Force 64-bit indexing on a small input: the same results as the 32-bit path."""
    request.addfinalizer(bce_module._gan_launch_plan.cache_clear)  # no 64-bit plan outlives the test
    x = (torch.randn(3000, device=device) * 3 + 0.5).requires_grad_()
    y = torch.rand(3000, device=device)
    want = bce_with_logits(x, y, backend=kernel_backend)
    (want_grad,) = torch.autograd.grad(want, x)
    real_plan = _indexing.plan
    monkeypatch.setattr(_indexing, "plan", lambda shape, ops: real_plan(shape, ops)._replace(needs_int64=True))
    monkeypatch.setattr(bce_module._indexing, "INDEX_HEADROOM", 2**31 - 10)  # gan path: 64-bit too
    # Launch plans are cached per shape: plan these calls afresh under the patches.
    monkeypatch.setattr(bce_module, "_BCE_CALLS", BoundedCache(16))
    bce_module._gan_launch_plan.cache_clear()
    got = bce_with_logits(x, y, backend=kernel_backend)
    (got_grad,) = torch.autograd.grad(got, x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)
    d1, g1 = bce_module.gan_bce_losses(x, y - 0.5, backend=kernel_backend)
    torch.testing.assert_close(d1, bce_module.gan_bce_losses_reference(x, y - 0.5).d_loss)
