"""fastgan.ops.renyi_divergence against float64 formulas, on every backend."""

import math

import pytest
import torch

from fastgan import _native
from fastgan.ops import _launch, renyi as renyi_module
from fastgan.ops.renyi import renyi_divergence, renyi_divergence_reference

ALPHAS = [0.0, 0.25, 0.5, 0.999999, 1.0, 1.000001, 2.0, 10.0]
# (shape, dim): the batch dimension first, G estimates, a middle dimension, a long row that
# the kernels split across programs, and a transposed (non-contiguous) layout.
SHAPES = [
    ((1,), 0),
    ((7,), 0),
    ((257, 3), 0),
    ((3, 5, 9), 1),
    ((2, _launch.BLOCK * _launch.SINGLE_PROGRAM_MAX_BLOCKS + 5), 1),
    ((1025,), -1),
]


def textbook64(r, alpha, dim):
    """The definition in float64: 1/(α−1)·(logsumexp((1−α)·r) − log N), −mean(r) at α = 1."""
    r = r.double()
    if alpha == 1.0:
        return -r.mean(dim)
    return (torch.logsumexp((1 - alpha) * r, dim) - math.log(r.shape[dim])) / (alpha - 1)


def _against_float64(r, alpha, dim, backend):
    """(value, gradient) of renyi_divergence on ``r`` under a random upstream gradient, and the
    same from the float64 definition on the same inputs: (got, grad, want, want_grad)."""
    got = renyi_divergence(r, alpha, dim, backend=backend)
    upstream = torch.randn_like(got)
    (grad,) = torch.autograd.grad(got, r, upstream)
    r64 = r.detach().double().requires_grad_()
    want = textbook64(r64, alpha, dim)
    (want_grad,) = torch.autograd.grad(want, r64, upstream.double())
    return got, grad, want, want_grad


def log_ratios(shape, device, dtype=torch.float32, scale=2.0, mean=0.8):
    return (torch.randn(shape, device=device, dtype=torch.float64) * scale + mean).to(dtype)


def tolerance(alpha, values):
    """The float64 definition itself loses log(N)·1e-16/|α−1| near α = 1; add that slack."""
    slack = 0.0 if alpha == 1.0 else 1e-15 * 40 / abs(alpha - 1)
    return dict(rtol=3e-5, atol=3e-6 + slack)


def assert_within_twice_pytorchs_error(r, alpha, upstream):
    """The torch backend's value and gradient over dim 0 (``upstream`` the incoming gradient)
    no further from float64 than twice eager PyTorch's logsumexp code in r's dtype, plus one
    rounding of the result."""
    got = renyi_divergence(r, alpha, backend="torch")
    (grad,) = torch.autograd.grad(got, r, upstream.to(r.dtype))
    r64 = r.detach().double().requires_grad_()
    want = textbook64(r64, alpha, 0)
    (want_grad,) = torch.autograd.grad(want, r64, upstream.double())
    rt = r.detach().clone().requires_grad_()
    theirs = (torch.logsumexp((1 - alpha) * rt, 0) - math.log(r.shape[0])) / (alpha - 1)
    (their_grad,) = torch.autograd.grad(theirs, rt, upstream.to(r.dtype))
    eps = torch.finfo(r.dtype).eps
    for name, ours, pytorch, ref in (("value", got, theirs, want), ("grad", grad, their_grad, want_grad)):
        error = (ours.double() - ref).abs().max().item()
        allowed = 2 * (pytorch.double() - ref).abs().max().item() + eps * ref.abs().max().item()
        assert error <= allowed, (name, error, allowed)


def test_reference_matches_definition_and_gradcheck():
    r = log_ratios((40, 3), "cpu", torch.float64)
    for alpha in ALPHAS:
        torch.testing.assert_close(renyi_divergence_reference(r, alpha), textbook64(r, alpha, 0), **tolerance(alpha, r))
    small = log_ratios((6, 2), "cpu", torch.float64).requires_grad_()
    for alpha in (0.0, 0.5, 1.0, 1.0 + 1e-6, 3.0):
        assert torch.autograd.gradcheck(lambda t: renyi_divergence_reference(t, alpha), (small,))
        assert torch.autograd.gradgradcheck(lambda t: renyi_divergence_reference(t, alpha), (small,))


@pytest.mark.parametrize("shape,dim", SHAPES, ids=str)
@pytest.mark.parametrize("alpha", ALPHAS, ids=str)
def test_renyi_matches_float64(backend, device, shape, dim, alpha):
    r = log_ratios(shape, device).requires_grad_()
    got, grad, want, want_grad = _against_float64(r, alpha, dim, backend)
    assert got.shape == want.shape and got.dtype == r.dtype
    torch.testing.assert_close(got.double(), want, **tolerance(alpha, want))
    # The gradient is −softmax((1−α)·r) times the upstream: entries of size up to |g|.
    torch.testing.assert_close(grad.double(), want_grad, rtol=3e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_renyi_keepdim_and_gradient_is_negative_softmax(backend, device, alpha):
    r = log_ratios((6, 11), device).requires_grad_()
    got = renyi_divergence(r, alpha, dim=1, keepdim=True, backend=backend)
    assert got.shape == (6, 1)
    (grad,) = torch.autograd.grad(got.sum(), r)
    torch.testing.assert_close(grad, -torch.softmax((1 - alpha) * r.detach(), dim=1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
def test_renyi_half_precision_within_pytorchs_own_error(backend, device, dtype, alpha):
    r = log_ratios((513, 2), device, dtype).requires_grad_()
    got = renyi_divergence(r, alpha, backend=backend)
    (grad,) = torch.autograd.grad(got.sum(), r)
    want = textbook64(r.detach(), alpha, 0)
    r64 = r.detach().double().requires_grad_()
    (want_grad,) = torch.autograd.grad(textbook64(r64, alpha, 0).sum(), r64)
    # PyTorch's own eager code in this dtype (its logsumexp upcasts internally, its scaling does not).
    rt = r.detach().clone().requires_grad_()
    torch_value = (-rt.mean(0)) if alpha == 1.0 else (torch.logsumexp((1 - alpha) * rt, 0) - math.log(513)) / (alpha - 1)
    (torch_grad,) = torch.autograd.grad(torch_value.sum(), rt)
    eps = torch.finfo(dtype).eps
    for ours, theirs, ref in ((got, torch_value, want), (grad, torch_grad, want_grad)):
        allowed = 2 * (theirs.double() - ref).abs().max().item() + 2 * eps * ref.abs().max().item()
        assert (ours.double() - ref).abs().max().item() <= allowed


def test_renyi_continuous_through_alpha_one(backend, device):
    r = log_ratios((4096, 3), device, scale=3.0)
    limit = -r.double().mean(0)
    for alpha in (1.0 - 1e-7, 1.0, 1.0 + 1e-7):
        got = renyi_divergence(r, alpha, backend=backend).double()
        # float32 precision of values of size ~|mean r| + spread
        torch.testing.assert_close(got, limit, rtol=1e-5, atol=4e-6)
    # and the second-order term: d D/dα at α = 1 is −var(r)/2, so α = 1 − 1e-3 moves by ~var·5e-4
    near = renyi_divergence(r, 1.0 - 1e-3, backend=backend).double()
    torch.testing.assert_close(near, limit - 1e-3 * r.double().var(0, unbiased=False) / 2, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0, 10.0])
def test_renyi_extreme_logits(backend, device, alpha):
    r = torch.tensor([1e4, -1e4, 0.0, 3.0, -9999.0], device=device).repeat(7).requires_grad_()
    got = renyi_divergence(r, alpha, backend=backend)
    (grad,) = torch.autograd.grad(got, r)
    assert torch.isfinite(got) and torch.isfinite(grad).all()
    r64 = r.detach().double().requires_grad_()
    want = textbook64(r64, alpha, 0)
    (want_grad,) = torch.autograd.grad(want, r64)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-5, atol=1e-6)


INF = math.inf
# Columns of ±∞ cases (reduced over dim 0): one +∞, one −∞, several of each, both signs,
# all +∞, all −∞, and a finite control column.
INFINITE_COLUMNS = {
    "one_pos": [(3, INF)],
    "one_neg": [(0, -INF)],
    "several_pos": [(1, INF), (6, INF), (20, INF)],
    "several_neg": [(2, -INF), (9, -INF), (36, -INF)],
    "both": [(4, INF), (5, -INF), (11, -INF)],
    "all_pos": "all+",
    "all_neg": "all-",
    "finite": [],
}
INFINITY_ALPHAS = [0.0, 0.5, 0.999, 1.0, 1.001, 2.0, 10.0]


def logits_with_infinities(n, device, dtype=torch.float32):
    """(n, 8) logits, column k the k-th case of INFINITE_COLUMNS."""
    r = log_ratios((n, len(INFINITE_COLUMNS)), "cpu", torch.float64)
    for k, placed in enumerate(INFINITE_COLUMNS.values()):
        if placed in ("all+", "all-"):
            r[:, k] = INF if placed == "all+" else -INF
        else:
            for row, value in placed:
                r[row % n, k] = value
    return r.to(device=device, dtype=dtype)


def infinite_result(want):
    return ~torch.isfinite(want)


@pytest.mark.parametrize("alpha", INFINITY_ALPHAS, ids=str)
@pytest.mark.parametrize("layout", ["columns", "rows"])
def test_renyi_infinite_logits_match_float64(backend, device, alpha, layout):
    """±∞ logits: the value is (logsumexp(β·r) − log N)/(α − 1) with logsumexp's infinities
    (finite when only some β·r are −∞; ±∞ when the maximum is infinite; NaN for +∞ and −∞
    together at α = 1), on every backend; the gradient matches wherever the value is finite
    (and at α = 1, where it is −1/N whatever r is)."""
    r = logits_with_infinities(37, device)
    dim = 0
    if layout == "rows":  # contiguous rows of 40 (packed kernel walk), not columns of a (37, 8) matrix
        r = logits_with_infinities(40, device).t().contiguous()
        dim = 1
    r.requires_grad_()
    got, grad, want, want_grad = _against_float64(r, alpha, dim, backend)
    torch.testing.assert_close(got.double(), want.detach(), equal_nan=True, **tolerance(alpha, want))
    finite_cases = torch.isfinite(want.detach()) | (alpha == 1.0)
    pick = (lambda t: t[:, finite_cases]) if dim == 0 else (lambda t: t[finite_cases])
    assert finite_cases.sum() >= 3
    torch.testing.assert_close(pick(grad).double(), pick(want_grad), rtol=3e-5, atol=1e-6)


def test_renyi_one_infinite_logit_example(backend, device):
    """The issue's example: r = [0, 0, 0, +∞], α = 2 is log(3/4), in every kernel dtype."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        r = torch.tensor([0.0, 0.0, 0.0, INF], device=device, dtype=dtype)
        got = renyi_divergence(r, 2.0, backend=backend)
        torch.testing.assert_close(got.double(), torch.tensor(math.log(0.75), dtype=torch.float64, device=device),
                                   rtol=torch.finfo(dtype).eps, atol=0.0)


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_renyi_kernel_gradient_at_an_infinite_maximum_is_the_limit(kernel_backend, device, alpha):
    """Where the maximum m of β·r is infinite (D = ±∞), the kernels take the gradient of the
    limit of equal large logits: −g uniformly over the entries tied with m, 0 elsewhere."""
    tie = INF if alpha < 1 else -INF
    r = log_ratios((4, 19), device)
    r[0, [2, 7, 11]] = tie  # three tied at the maximum, the rest below
    r[1, :] = tie  # the whole row tied
    r[2, 5] = tie
    r[2, 6] = -tie  # one at the maximum, one at −∞·β
    r[3, [0, 18]] = tie
    r.requires_grad_()
    got = renyi_divergence(r, alpha, dim=1, backend=kernel_backend)
    assert torch.isinf(got).all()
    upstream = torch.randn_like(got)
    (grad,) = torch.autograd.grad(got, r, upstream)
    tied = (r.detach() == tie).double()
    want = -upstream.double().unsqueeze(1) * tied / tied.sum(1, keepdim=True)
    torch.testing.assert_close(grad.double(), want, rtol=1e-6, atol=0.0)


# Rows walked by the kernels in 16-byte packs (contiguous, aligned, a multiple of the pack
# width, or one row with a tail, also split across programs), and the rows that are not (odd
# row stride, a misaligned start, a strided column walk).
LONG_ROW = 2 * _launch.BLOCK * _launch.SINGLE_PROGRAM_MAX_BLOCKS + 5
WALK_LAYOUTS = {
    "rows_of_40": lambda base: base[:, :40].contiguous(),
    "rows_of_37": lambda base: base[:, :37].contiguous(),
    "one_row_of_13": lambda base: base[0, :13],
    "one_split_row": lambda base: base.reshape(-1)[:LONG_ROW],
    "offset_by_one": lambda base: base.reshape(-1)[1:202],
    "strided_columns": lambda base: base[:, :40:2],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", list(WALK_LAYOUTS))
def test_renyi_packed_tail_and_strided_walks(backend, device, layout, dtype):
    base = log_ratios((6, 48) if layout != "one_split_row" else (LONG_ROW,), device, dtype)
    r = WALK_LAYOUTS[layout](base).detach().requires_grad_()
    dim = r.dim() - 1
    for alpha in (0.5, 2.0):
        got, grad, want, want_grad = _against_float64(r, alpha, dim, backend)
        eps = torch.finfo(dtype).eps if dtype != torch.float32 else 1e-5
        # Computed in fp32 on the exact inputs; rounded once to the dtype.
        torch.testing.assert_close(got.double(), want.detach(), rtol=eps, atol=eps * 1e-1)
        torch.testing.assert_close(grad.double(), want_grad, rtol=eps, atol=eps * 1e-2)


def test_renyi_plans_cover_every_column():
    """The launch plan the op passes: splits × cols_per_split ≥ n, and no empty split."""
    for n in (1, 7, 1024, 16384, 16385, 100_003, 2**20 + 1):
        for rows in (1, 3, 64):
            splits, cols_per_split, _ = renyi_module._row_layout(torch.empty((rows, n), device="meta"))
            assert splits * cols_per_split >= n > (splits - 1) * cols_per_split
            assert cols_per_split % _launch.BLOCK == 0


def test_renyi_cuda_host_rejects_a_plan_that_misses_columns(kernel_backend, device):
    if kernel_backend != "cuda":
        pytest.skip("checks the cuda extension's host code")
    from fastgan import _backend, _cuda

    rows = log_ratios((2, 100), device)
    out = torch.empty(2, device=device)
    stats = torch.empty(2, dtype=torch.float32, device=device)
    partials = torch.empty(2 * 3 * 5, dtype=torch.float32, device=device)
    for splits, cols_per_split in ((1, 64), (3, 32), (2, 0)):
        with pytest.raises(RuntimeError, match="renyi_divergence: .*do not cover"):
            _backend.extension().renyi_forward(
                rows.data_ptr(), 0, 2, 100, 100, 1, out.data_ptr(), 0, stats.data_ptr(), stats.data_ptr(),
                partials.data_ptr(), -1.0, -1.0, math.log(100), cols_per_split, splits, _cuda.stream_handle(rows),
            )


def test_renyi_non_contiguous(backend, device):
    base = log_ratios((12, 40), device).requires_grad_()
    for view, dim in ((lambda t: t.t(), 0), (lambda t: t[:, ::3], 1), (lambda t: t[::2].t()[5:], 0)):
        got = renyi_divergence(view(base), 0.5, dim, backend=backend)
        (grad,) = torch.autograd.grad(got.sum(), base)
        b64 = base.detach().double().requires_grad_()
        want = textbook64(view(b64), 0.5, dim)
        (want_grad,) = torch.autograd.grad(want.sum(), b64)
        torch.testing.assert_close(got.double(), want, rtol=3e-5, atol=3e-6)
        torch.testing.assert_close(grad.double(), want_grad, rtol=3e-5, atol=1e-6)


def test_renyi_writes_every_output(kernel_backend, device, monkeypatch):
    def poisoned(like, shape, dtype=None):
        return torch.full(shape, math.nan, dtype=dtype or like.dtype, device=like.device)

    monkeypatch.setattr(_launch, "output", poisoned)
    monkeypatch.setattr(_launch, "output_like", lambda like: torch.full_like(like, math.nan))  # the gradient's
    for shape, dim in ((37, 5), 0), ((3, _launch.BLOCK * _launch.SINGLE_PROGRAM_MAX_BLOCKS + 9), 1):
        r = log_ratios(shape, device).requires_grad_()
        got = renyi_divergence(r, 0.5, dim, backend=kernel_backend)
        (grad,) = torch.autograd.grad(got.sum(), r)
        assert not torch.isnan(got).any() and not torch.isnan(grad).any()


@pytest.mark.parametrize("shape", [(9, 2), (9,)], ids=["rows", "one-row"])  # a 1-d row has its own path
def test_renyi_double_backward(backend, device, shape):
    r = log_ratios(shape, device).requires_grad_()
    v = torch.randn(shape, device=device)
    for alpha in (0.5, 1.0, 3.0):
        (g,) = torch.autograd.grad(renyi_divergence(r, alpha, backend=backend).sum(), r, create_graph=True)
        # At α = 1 the gradient −1/N is constant: the second derivative is zero (or absent).
        (h,) = torch.autograd.grad((g * v).sum(), r, allow_unused=True, materialize_grads=True) if g.requires_grad else (torch.zeros_like(r),)
        r64 = r.detach().double().requires_grad_()
        (g64,) = torch.autograd.grad(textbook64(r64, alpha, 0).sum(), r64, create_graph=True)
        (h64,) = torch.autograd.grad((g64 * v.double()).sum(), r64, allow_unused=True, materialize_grads=True) if g64.requires_grad else (torch.zeros_like(r64),)
        torch.testing.assert_close(h.double(), h64, rtol=1e-4, atol=1e-6)


def test_renyi_empty_and_errors(backend, device):
    assert torch.isnan(renyi_divergence(torch.empty(0, device=device), 0.5, backend=backend))
    assert renyi_divergence(torch.empty(5, 0, device=device), 0.5, backend=backend).shape == (0,)
    r = torch.randn(4, device=device)
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match="alpha"):
            renyi_divergence(r, bad, backend=backend)
    with pytest.raises(ValueError, match="alpha"):
        renyi_divergence(r, "0.5", backend=backend)
    with pytest.raises(IndexError, match="dim"):
        renyi_divergence(r, 0.5, dim=1, backend=backend)
    with pytest.raises(TypeError, match="log_ratio"):
        renyi_divergence(torch.ones(3, dtype=torch.long, device=device), 0.5, backend=backend)
    with pytest.raises(ValueError, match="at least one dimension"):
        renyi_divergence(torch.tensor(1.0, device=device), 0.5, backend=backend)


def test_opcheck_renyi(kernel_backend, device):
    rows = log_ratios((5, 33), device).requires_grad_()
    for beta in (0.5, 0.0, -1.0):
        torch.library.opcheck(torch.ops.fastgan.renyi_divergence.default, (rows, beta, kernel_backend))
    out, shift, expsum = renyi_module._renyi_op(rows.detach(), 0.5, kernel_backend)
    torch.library.opcheck(
        torch.ops.fastgan.renyi_divergence_backward.default,
        (rows.detach(), torch.randn(5, device=device), shift, expsum, 0.5, kernel_backend),
    )


def test_renyi_torch_compile_fullgraph(kernel_backend, device):
    torch._dynamo.reset()

    def loss(r):
        return renyi_divergence(r, 0.5, backend=kernel_backend).sum() + renyi_divergence(r, 1.0, 1, backend=kernel_backend).mean()

    compiled = torch.compile(loss, fullgraph=True)
    r = log_ratios((16, 3), device).requires_grad_()
    got = compiled(r)
    (got_grad,) = torch.autograd.grad(got, r)
    want = loss(r)
    (want_grad,) = torch.autograd.grad(want, r)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)


def test_renyi_torch_compile_dynamic_batch_is_one_graph(backend, device):
    """No specialisation on the sample count (e.g. through a Python log N): a dynamic batch
    size compiles once."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(lambda r: renyi_divergence(r, 0.5, backend=backend), backend=counter, fullgraph=True,
                             dynamic=True)
    for n in (40, 50, 70):
        r = log_ratios((n,), device)
        torch.testing.assert_close(compiled(r), renyi_divergence(r, 0.5, backend=backend))
    assert counter.frame_count == 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA GPU")
def test_renyi_cuda_graph_capture(kernel_backend, capture_cuda_graph):
    r = torch.randn(300, 2, device="cuda", requires_grad=True)

    def step():
        return torch.autograd.grad(renyi_divergence(r, 0.5, backend=kernel_backend).sum(), r)[0]

    graph, static_grad = capture_cuda_graph(step)
    r.data.copy_(torch.randn_like(r))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_grad, step())


# ---------------------------------------------------------------------------------------
# The torch backend's native CPU form (csrc/cpu/renyi.cpp): one contiguous float32/bfloat16
# row. The tests above reach it with their 1-d cases; these check that it is taken, at every
# size (the threaded one included), in every dtype, at the extremes, and every element written.
# ---------------------------------------------------------------------------------------

THREADED_N = 2 * _native.THREAD_GRAIN + 1029
NATIVE_SIZES = [1, 7, 1025, THREADED_N]


@pytest.fixture
def native_renyi(monkeypatch):
    if _native.module() is None:
        pytest.skip(f"the native CPU kernels are not used here: {_native.status()}")
    calls = []
    forward = renyi_module._native_renyi_forward
    monkeypatch.setattr(renyi_module, "_native_renyi_forward", lambda *args: calls.append(1) or forward(*args))
    return calls


def test_native_renyi_grain_agrees():
    if _native.module() is None:
        pytest.skip(f"the native CPU kernels are not used here: {_native.status()}")
    assert _native.module().renyi_thread_grain() == _native.THREAD_GRAIN


@pytest.mark.parametrize("n", NATIVE_SIZES)
@pytest.mark.parametrize("alpha", [a for a in ALPHAS if a != 1.0], ids=str)
def test_native_renyi_matches_float64(native_renyi, n, alpha):
    r = log_ratios((n,), "cpu").requires_grad_()
    got, grad, want, want_grad = _against_float64(r, alpha, 0, "torch")
    assert native_renyi, "the native CPU form was not taken"
    assert got.shape == () and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, **tolerance(alpha, want))
    torch.testing.assert_close(grad.double(), want_grad, rtol=3e-5, atol=1e-6)


@pytest.mark.parametrize("n", [513, THREADED_N])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.999999, 2.0, 10.0], ids=str)
@pytest.mark.parametrize("mean,scale", [(0.8, 2.0), (40.0, 3.0)])
def test_native_renyi_within_pytorchs_own_error(native_renyi, n, dtype, alpha, mean, scale):
    """Value and gradient no further from float64 than twice eager PyTorch's own code in the dtype."""
    r = log_ratios((n,), "cpu", dtype, scale=scale, mean=mean).requires_grad_()
    assert_within_twice_pytorchs_error(r, alpha, torch.tensor(0.7))
    assert native_renyi


def test_native_renyi_near_uniform_weights_take_log1p(native_renyi):
    # α → 1: the weights are near uniform (A > 1/2) and log A comes from the expm1 sum, so the
    # result stays continuous with the limit −mean(r).
    r = log_ratios((4099,), "cpu", scale=3.0)
    limit = -r.double().mean()
    for alpha in (1.0 - 1e-7, 1.0 + 1e-7):
        torch.testing.assert_close(renyi_divergence(r, alpha, backend="torch").double(), limit, rtol=1e-5, atol=4e-6)
    near = renyi_divergence(r, 1.0 - 1e-3, backend="torch").double()
    torch.testing.assert_close(near, limit - 1e-3 * r.double().var(unbiased=False) / 2, rtol=1e-3, atol=1e-4)
    assert len(native_renyi) == 3


@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0])
def test_native_renyi_non_finite_logits_take_the_reference(native_renyi, alpha):
    for bad in (math.inf, -math.inf, math.nan):
        r = log_ratios((THREADED_N,), "cpu")
        r[THREADED_N - 3] = bad
        got = renyi_divergence(r, alpha, backend="torch")
        torch.testing.assert_close(got, renyi_divergence_reference(r, alpha), equal_nan=True)
    assert len(native_renyi) == 3


def test_native_renyi_overflowing_products_take_the_reference(native_renyi):
    # Finite logits whose β·r overflows float32 give ±∞ as the reference does, not NaN.
    for values, alpha in (([1e38, 2e38, 3e38], 10.0), ([-1e38, 0.0, 1.0], 10.0), ([-3e38, 2e38, 1.0], 3.0)):
        r = torch.tensor(values)
        torch.testing.assert_close(renyi_divergence(r, alpha, backend="torch"), renyi_divergence_reference(r, alpha),
                                   equal_nan=True)
    assert len(native_renyi) == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_native_renyi_keepdim(native_renyi, dtype):
    r = log_ratios((37,), "cpu", dtype).requires_grad_()
    got = renyi_divergence(r, 0.5, keepdim=True, backend="torch")
    assert got.shape == (1,) and got.dtype == dtype
    (grad,) = torch.autograd.grad(got, r, torch.tensor([0.7], dtype=dtype))
    want = renyi_divergence(r.detach(), 0.5, backend="torch")
    assert torch.equal(got[0], want)
    torch.testing.assert_close(grad, -0.7 * torch.softmax(0.5 * r.detach().float(), 0).to(dtype))
    assert native_renyi


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_native_renyi_threads_give_the_same_bits(dtype):
    if _native.module() is None:
        pytest.skip(f"the native CPU kernels are not used here: {_native.status()}")
    kernels, code = _native.module(), {torch.float32: 0, torch.bfloat16: 2}[dtype]
    r = log_ratios((3 * _native.THREAD_GRAIN + 5,), "cpu", dtype)
    results = []
    for threads in (1, 2, 3):
        shift, expsum, finite = kernels.renyi_forward(r.data_ptr(), code, r.numel(), 0.5, threads)
        grad = torch.full_like(r, math.nan)
        kernels.renyi_backward(r.data_ptr(), grad.data_ptr(), code, r.numel(), 0.5, shift, -1.0 / expsum, threads)
        assert finite and not torch.isnan(grad).any()
        results.append((shift, expsum, grad))
    for shift, expsum, grad in results[1:]:
        assert (shift, expsum) == results[0][:2] and torch.equal(grad, results[0][2])


def test_native_renyi_writes_every_gradient_element(native_renyi, monkeypatch):
    monkeypatch.setattr(_launch, "output_like", lambda like: torch.full_like(like, math.nan))
    for n in NATIVE_SIZES:
        for dtype in (torch.float32, torch.bfloat16):
            r = log_ratios((n,), "cpu", dtype).requires_grad_()
            (grad,) = torch.autograd.grad(renyi_divergence(r, 0.5, backend="torch"), r)
            assert not torch.isnan(grad).any(), (n, dtype)
    assert native_renyi


def test_native_renyi_steps_aside(native_renyi):
    # 2-d inputs (the columns kernel's, below), strided rows, float16 and float64, and α = 1
    # take other forms.
    base = log_ratios((40, 3), "cpu")
    renyi_divergence(base, 0.5, backend="torch")
    renyi_divergence(base[:, 1], 0.5, backend="torch")
    renyi_divergence(base[:, 0].half(), 0.5, backend="torch")
    renyi_divergence(base[:, 0].double(), 0.5, backend="torch")
    renyi_divergence(base[:, 0].contiguous(), 1.0, backend="torch")
    assert not native_renyi


# ---------------------------------------------------------------------------------------
# The torch backend's native CPU form for G estimates (csrc/cpu/renyi_columns.cpp): the
# columns of a contiguous (N, G) float32/bfloat16 input reduced over dim 0. G below 16 takes
# several rows per vector row (and a remainder of rows); G = 17 a full width and one more.
# ---------------------------------------------------------------------------------------

COLUMN_SHAPES = [(1, 1), (7, 3), (1025, 17), (4099, 5), (THREADED_N // 3 + 7, 3)]


@pytest.fixture
def native_columns(monkeypatch):
    if _native.module() is None:
        pytest.skip(f"the native CPU kernels are not used here: {_native.status()}")
    calls = []
    forward = renyi_module._native_renyi_columns_forward
    monkeypatch.setattr(renyi_module, "_native_renyi_columns_forward",
                        lambda *args: calls.append(1) or forward(*args))
    return calls


@pytest.mark.parametrize("shape", COLUMN_SHAPES, ids=str)
@pytest.mark.parametrize("alpha", [a for a in ALPHAS if a != 1.0], ids=str)
def test_native_columns_match_float64(native_columns, shape, alpha):
    r = log_ratios(shape, "cpu").requires_grad_()
    got, grad, want, want_grad = _against_float64(r, alpha, 0, "torch")
    assert native_columns, "the native columns form was not taken"
    assert got.shape == (shape[1],) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, **tolerance(alpha, want))
    torch.testing.assert_close(grad.double(), want_grad, rtol=3e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(513, 5), (THREADED_N // 3 + 7, 3)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.999999, 2.0, 10.0], ids=str)
@pytest.mark.parametrize("mean,scale", [(0.8, 2.0), (40.0, 3.0)])
def test_native_columns_within_pytorchs_own_error(native_columns, shape, dtype, alpha, mean, scale):
    """Values and gradient no further from float64 than twice eager PyTorch's own code in the dtype."""
    r = log_ratios(shape, "cpu", dtype, scale=scale, mean=mean).requires_grad_()
    assert_within_twice_pytorchs_error(r, alpha, torch.linspace(0.3, 1.1, shape[1]))
    assert native_columns


def test_native_columns_near_uniform_weights_take_log1p(native_columns):
    # Columns of different spreads: as α → 1 each stays continuous with its limit −mean(r).
    r = log_ratios((4099, 3), "cpu", scale=3.0) * torch.tensor([0.1, 1.0, 3.0])
    limit = -r.double().mean(0)
    for alpha in (1.0 - 1e-7, 1.0 + 1e-7):
        torch.testing.assert_close(renyi_divergence(r, alpha, backend="torch").double(), limit, rtol=1e-5, atol=4e-6)
    assert len(native_columns) == 2


@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0])
def test_native_columns_non_finite_logits_take_the_reference(native_columns, alpha):
    for bad in (math.inf, -math.inf, math.nan):
        r = log_ratios((THREADED_N // 3 + 7, 3), "cpu")
        r[-2, 1] = bad
        got = renyi_divergence(r, alpha, backend="torch")
        torch.testing.assert_close(got, renyi_divergence_reference(r, alpha), equal_nan=True)
    r = torch.tensor([[1e38, -1e38], [2e38, 0.0], [3e38, 1.0]])  # finite logits, β·r overflowing at α = 10
    torch.testing.assert_close(renyi_divergence(r, 10.0, backend="torch"), renyi_divergence_reference(r, 10.0),
                               equal_nan=True)
    assert len(native_columns) == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_native_columns_keepdim(native_columns, dtype):
    r = log_ratios((37, 4), "cpu", dtype).requires_grad_()
    got = renyi_divergence(r, 0.5, keepdim=True, backend="torch")
    assert got.shape == (1, 4) and got.dtype == dtype
    upstream = torch.tensor([[0.7, -0.2, 1.0, 0.0]], dtype=dtype)
    (grad,) = torch.autograd.grad(got, r, upstream)
    assert torch.equal(got[0], renyi_divergence(r.detach(), 0.5, backend="torch"))
    want = -upstream.float() * torch.softmax(0.5 * r.detach().float(), 0)
    torch.testing.assert_close(grad, want.to(dtype))
    assert native_columns


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_native_columns_threads_give_the_same_bits(dtype):
    if _native.module() is None:
        pytest.skip(f"the native CPU kernels are not used here: {_native.status()}")
    kernels, code = _native.module(), {torch.float32: 0, torch.bfloat16: 2}[dtype]
    n, g = _native.THREAD_GRAIN + 7, 5
    r = log_ratios((n, g), "cpu", dtype)
    scale = torch.linspace(-1.0, 1.0, g)
    results = []
    for threads in (1, 2, 3):
        shift, expsum = torch.full((g,), math.nan), torch.full((g,), math.nan, dtype=torch.float64)
        assert kernels.renyi_columns_forward(r.data_ptr(), code, n, g, 0.5, shift.data_ptr(), expsum.data_ptr(),
                                             threads)
        grad = torch.full_like(r, math.nan)
        kernels.renyi_columns_backward(r.data_ptr(), grad.data_ptr(), code, n, g, 0.5, shift.data_ptr(),
                                       scale.data_ptr(), threads)
        assert not torch.isnan(grad).any() and not torch.isnan(expsum).any()
        results.append((shift, expsum, grad))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_native_columns_write_every_gradient_element(native_columns, monkeypatch):
    monkeypatch.setattr(_launch, "output_like", lambda like: torch.full_like(like, math.nan))
    for shape in COLUMN_SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            r = log_ratios(shape, "cpu", dtype).requires_grad_()
            (grad,) = torch.autograd.grad(renyi_divergence(r, 0.5, backend="torch").sum(), r)
            assert not torch.isnan(grad).any(), (shape, dtype)
    assert native_columns


def test_native_columns_second_order_is_the_closed_form(native_columns):
    r = log_ratios((9, 3), "cpu", torch.float64).float().requires_grad_()
    (grad,) = torch.autograd.grad(renyi_divergence(r, 0.5, backend="torch").sum(), r, create_graph=True)
    (second,) = torch.autograd.grad(grad.square().sum(), r)
    r64 = r.detach().double().requires_grad_()
    (grad64,) = torch.autograd.grad(textbook64(r64, 0.5, 0).sum(), r64, create_graph=True)
    (second64,) = torch.autograd.grad(grad64.square().sum(), r64)
    torch.testing.assert_close(second.double(), second64, rtol=1e-4, atol=1e-6)
    assert native_columns


def test_native_columns_step_aside(native_columns):
    # Reduced over dim 1, transposed (strided) columns, 3-d inputs, float16 and float64, and
    # α = 1 take the other forms.
    base = log_ratios((40, 3), "cpu")
    renyi_divergence(base, 0.5, 1, backend="torch")
    renyi_divergence(base.t(), 0.5, backend="torch")
    renyi_divergence(base.view(40, 3, 1), 0.5, backend="torch")
    renyi_divergence(base.half(), 0.5, backend="torch")
    renyi_divergence(base.double(), 0.5, backend="torch")
    renyi_divergence(base, 1.0, backend="torch")
    assert not native_columns
