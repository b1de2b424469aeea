"""The Rényi-α divergence generator loss, a logsumexp reduction over discriminator logits.

With r = log p_data(x)/p_g(x) estimated by the discriminator's logit on generator samples
x_1..x_N, the Monte-Carlo estimate of D_α(p_g ‖ p_data) is

    D_α = 1/(α-1) · ( logsumexp((1-α)·r) − log N ),        dD_α/dr_i = −softmax((1−α)·r)_i.

α → 1 is the reverse KL, −mean(r). The gradient weights samples by softmax((1−α)·r): for
α < 1 towards high r, where data mass is under-covered (α = 0 weighs by p_data/p_g, the
forward-KL, mass-covering direction); for α > 1 towards low r, the generator's spurious
mass, increasingly mode-seeking as α grows.

Stable form. With β = 1 − α, x_i = β·r_i − m and m = max_i β·r_i (so x_i ≤ 0):

    logsumexp(β·r) − log N = m + log A,    A = (1/N)·Σ exp(x_i) ∈ [1/N, 1]
    log A = log1p(S/N) with S = Σ expm1(x_i)      when A > 1/2 (near-uniform weights),
          = log(E) − log N with E = Σ exp(x_i)    otherwise,

and D_α = −(m + log A)/β. Both sums add terms of one sign, so neither cancels; log1p keeps
log A exact when the weights are near uniform, which is the α → 1 regime, and m + log A is
O(β) with float32-relative accuracy, so the division by β loses nothing: α = 1 ± 1e-7 agrees
with the limit −mean(r) to float32 precision. α = 1 exactly uses −mean(r).

The kernels keep (m, E, S, count, Σr) per lane and per block, merged with the rescaling
E' = E·e^(m−m'), S' = S·e^(m−m') + count·expm1(m−m') (again one-signed terms). On the CPU
the torch backend runs one contiguous float32/bfloat16 row (a batch of logits) through the
native kernel csrc/cpu/renyi.cpp, which returns (m, E) from one read, and the columns of a
contiguous (N, G) one reduced over dim 0 (G estimates) through csrc/cpu/renyi_columns.cpp,
which returns them per column from two reads; S is formed only in the near-uniform case, in
PyTorch.

Infinite logits. Every difference from the maximum is 0 for values equal to it, also when
both are the same infinity (the limit of equal large logits). So a β·r of −∞ (r = +∞ with
α > 1, r = −∞ with α < 1) weighs 0 and the rest is unchanged: r = [0, 0, 0, +∞] at α = 2 gives
log(3/4). A maximum m = ±∞ gives D_α = ∓∞/β, i.e. (logsumexp(β·r) − log N)/(α − 1) with
torch.logsumexp's infinities (+∞ when some β·r is +∞, −∞ when all are −∞); the kernels'
gradient there is uniform over the entries tied with m; NaN anywhere gives NaN.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Optional

import torch
from torch import Tensor

from fastgan import _backend, _indexing, _native
from fastgan.ops import _launch
from fastgan.ops.bce import _NATIVE_DTYPE_CODES, _compute_dtype


def check_alpha(alpha) -> float:
    """α as a float; a clear ValueError unless it is a finite real ≥ 0."""
    if type(alpha) is not float:  # a Python float needs no conversion (the ABC check costs host time)
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise ValueError(f"alpha must be a real number >= 0, got {type(alpha).__name__}")
        alpha = float(alpha)
    # One comparison chain (NaN and ±inf fail it): it traces under torch.compile, where a loss
    # object's float attribute is a symbolic float with dynamic=True (math.isfinite is not).
    if not 0 <= alpha < math.inf:
        raise ValueError(f"alpha must be a finite real number >= 0, got {alpha}")
    return alpha


def _check_log_ratio(log_ratio, dim: int) -> int:
    if not isinstance(log_ratio, torch.Tensor):
        raise TypeError(f"log_ratio must be a torch.Tensor, got {type(log_ratio).__name__}")
    if not log_ratio.is_floating_point():
        raise TypeError(f"log_ratio must be a floating-point tensor, got {log_ratio.dtype}")
    if log_ratio.dim() == 0:
        raise ValueError("log_ratio must have at least one dimension (the samples to reduce over)")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if not -log_ratio.dim() <= dim < log_ratio.dim():
        raise IndexError(f"dim {dim} is out of range for log_ratio with {log_ratio.dim()} dimensions")
    return dim % log_ratio.dim()


def renyi_divergence_reference(log_ratio: Tensor, alpha: float, dim: int = 0, keepdim: bool = False) -> Tensor:
    """:func:`renyi_divergence` in plain differentiable PyTorch (half precision computed in float32)."""
    alpha = check_alpha(alpha)
    dim = _check_log_ratio(log_ratio, dim)
    r = log_ratio.to(_compute_dtype(log_ratio.dtype))
    n = r.shape[dim]
    if n == 0:  # logsumexp of nothing − log 0, and the mean of nothing: NaN, as the definition gives
        return r.sum(dim, keepdim=keepdim).fill_(math.nan).to(log_ratio.dtype)
    beta = 1.0 - alpha
    if beta == 0.0:
        return (-r.mean(dim, keepdim=keepdim)).to(log_ratio.dtype)
    scaled = beta * r
    shift = scaled.amax(dim, keepdim=True).detach()  # the result does not depend on the shift
    # Values tied with an infinite maximum sit at distance 0 (weight 1, the limit of equal large
    # logits) instead of inf − inf = NaN; D_α is then ∓∞/β, as logsumexp's infinities give.
    shifted = torch.where((scaled == shift) & torch.isinf(shift), 0.0, scaled - shift)
    exp_sum = torch.exp(shifted).sum(dim, keepdim=True)
    expm1_sum = torch.expm1(shifted).sum(dim, keepdim=True)
    near_uniform = exp_sum > 0.5 * n
    # Both branches are evaluated; feed each a harmless value where it is not chosen so that
    # no inf/NaN reaches the gradient through the unselected one.
    log_mean = torch.where(
        near_uniform,
        torch.log1p(torch.where(near_uniform, expm1_sum / n, 0.0)),
        # log(E/N) rather than log E − math.log(N): a Python log of the size would specialise
        # torch.compile's graph on N (E/N is in [1/N, 1]: no overflow, no precision lost).
        torch.log(torch.where(near_uniform, 1.0, exp_sum) / n),
    )
    result = -(shift + log_mean) / beta
    if not keepdim:
        result = result.squeeze(dim)
    return result.to(log_ratio.dtype)


def renyi_divergence(
    log_ratio: Tensor, alpha: float, dim: int = 0, keepdim: bool = False, *, backend: Optional[str] = None
) -> Tensor:
    """Monte-Carlo estimate of the Rényi-α divergence D_α(p_g ‖ p_data) from generator samples.

    Args:
        log_ratio: r, the discriminator's logits ≈ log p_data/p_g on generator samples; any
            shape, reduced over ``dim`` (float32/float16/bfloat16; float64 on the torch backend).
        alpha: α, a finite real ≥ 0; α = 1 gives the reverse KL −mean(r), continuously.
        dim: the sample dimension (default 0, the batch): a (N, G) input gives G estimates.
        keepdim: keep ``dim`` with size 1.
        backend: ``"cuda"``, ``"triton"``, ``"torch"`` or ``"auto"``.

    Returns:
        ``1/(α-1)·(logsumexp((1-α)·r, dim) − log N)``, the input's shape without ``dim``,
        in the input's dtype. Its gradient is ``−softmax((1−α)·r, dim)`` times the incoming one.
    """
    alpha = check_alpha(alpha)
    dim = _check_log_ratio(log_ratio, dim)
    name = _backend.select_backend("renyi_divergence", backend, log_ratio.device, log_ratio.dtype)
    beta = 1.0 - alpha
    if name == "torch":
        if (beta == 0.0 or log_ratio.shape[dim] == 0 or log_ratio.device.type != "cpu"
                or torch.compiler.is_compiling()):
            # −mean(r), NaN for no samples; the fast form reads per-row scalars on the host, free
            # on the CPU but a synchronisation (and no CUDA graph) elsewhere; under
            # torch.compile the reference is fused anyway.
            return renyi_divergence_reference(log_ratio, alpha, dim, keepdim)
        return _renyi_torch(log_ratio, beta, dim, keepdim)
    if log_ratio.dim() == 1 and not keepdim and not torch.compiler.is_compiling():
        # The common case, a batch of logits: one row, passed as it is (1-d), the result a
        # 0-d tensor (host time matters at 64-1024 logits: no view on this path, and no view's
        # node in the backward).
        return _RenyiFunction.apply(log_ratio, beta, name, ())
    moved = log_ratio.movedim(dim, -1)
    # (rows, n): a view whenever the kept dimensions share one stride (e.g. (N,) or (N, G)
    # reduced over dim 0); otherwise reshape copies.
    rows = moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1])
    if torch.compiler.is_compiling():
        out, _, _ = _renyi_op(rows, beta, name)
        out = out.view(moved.shape[:-1])
    else:
        out = _RenyiFunction.apply(rows, beta, name, moved.shape[:-1])
    return out.unsqueeze(dim) if keepdim else out


# --------------------------------------------------------------------------------------
# The torch backend's form: the stable math above in a few whole-tensor passes.
# --------------------------------------------------------------------------------------


def _closed_form_grad(log_ratio: Tensor, grad: Tensor, beta: float, dim: int) -> Tensor:
    """−grad·softmax(β·r, dim) in differentiable PyTorch (``grad`` broadcast along ``dim``): the
    second-order (create_graph=True) backward of the kernel path and of the torch backend's form."""
    weights = torch.softmax(beta * log_ratio.to(_compute_dtype(log_ratio.dtype)), dim=dim)
    return (-grad * weights).to(log_ratio.dtype)


def _renyi_torch(log_ratio: Tensor, beta: float, dim: int, keepdim: bool) -> Tensor:
    """The torch backend on CPU tensors for β ≠ 0 and n ≥ 1: the native kernels for one
    contiguous float32/bfloat16 row (:class:`_NativeRenyiFunction`) and for the columns of a
    contiguous (N, G) one reduced over dim 0 (:class:`_NativeRenyiColumnsFunction`), else
    :class:`_RenyiTorchFunction`; each takes the reference where a logit at the extreme is
    infinite or NaN (rare)."""
    r = log_ratio.detach()
    # Either native form: (its kernels' (m, E, finite), D_α from them, its autograd Function).
    if dim == 0 and _native_renyi_columns_apply(r):
        native = (_native_renyi_columns_forward, _native_renyi_columns_result, _NativeRenyiColumnsFunction)
    elif _native_renyi_applies(r):
        native = (_native_renyi_forward, _native_renyi_result, _NativeRenyiFunction)
    else:
        native = None
    if native is not None:
        forward, result, function = native
        shift, expsum, finite = forward(r, beta)
        if not finite:
            return renyi_divergence_reference(log_ratio, 1.0 - beta, dim, keepdim)
        if not log_ratio.requires_grad or not torch.is_grad_enabled():
            return result(r, beta, shift, expsum, keepdim)
        return function.apply(log_ratio, beta, shift, expsum, keepdim)
    compute = _compute_dtype(r.dtype)
    if log_ratio.dim() == 1:
        extreme = (r.amax() if beta > 0 else r.amin()).item()
        if not math.isfinite(extreme):
            return renyi_divergence_reference(log_ratio, 1.0 - beta, dim, keepdim)
        # −m made from the Python value: an op on a 0-d tensor costs ~2 µs of host time.
        neg_shift = torch.full((), -beta * extreme, dtype=compute, device=r.device)
    else:
        extreme = r.amax(dim, keepdim=True) if beta > 0 else r.amin(dim, keepdim=True)
        if not bool(torch.isfinite(extreme).all()):
            return renyi_divergence_reference(log_ratio, 1.0 - beta, dim, keepdim)
        neg_shift = extreme.to(compute).mul_(-beta) if extreme.dtype != compute else extreme.mul(-beta)
    if not log_ratio.requires_grad or not torch.is_grad_enabled():
        return _renyi_torch_forward(r, neg_shift, beta, dim, keepdim)[0]
    return _RenyiTorchFunction.apply(log_ratio, neg_shift, beta, dim, keepdim)


def _renyi_torch_forward(r: Tensor, neg_shift: Tensor, beta: float, dim: int, keepdim: bool):
    """(D_α, −m, E) by the module's stable form in a few whole-tensor passes, given −m per row
    (m = β·extreme, the row's largest β·r).

    x = β·r − m is formed in one pass (so the row maximum gives 0, up to a rounding) and
    exponentiated in place; only rows with near-uniform weights
    rebuild x for the expm1 sum. Elementwise values are in r's dtype, as in eager PyTorch
    (for float16/bfloat16 that is within PyTorch's own error in the dtype, and converting to
    float32 would cost two passes); the sums and per-row scalars are float32 (float64 for
    float64), a single row's combined as Python floats (host time at 64-1024 logits)."""
    n = r.shape[dim]
    compute = _compute_dtype(r.dtype)
    weights = torch.add(neg_shift, r, alpha=beta).exp_()
    expsum = weights.sum(dim, keepdim=True, dtype=compute)

    def expm1_sum():
        return torch.add(neg_shift, r, alpha=beta, out=weights).expm1_().sum(dim, keepdim=True, dtype=compute)

    if r.dim() == 1:
        expsum_value = expsum.item()
        if expsum_value > 0.5 * n:  # near-uniform weights: log1p keeps log A exact (α → 1)
            log_mean = math.log1p(expm1_sum().item() / n)
        else:
            log_mean = math.log(expsum_value) - math.log(n)
        result = torch.full((), (log_mean - neg_shift.item()) / -beta, dtype=r.dtype, device=r.device)
        return result, neg_shift, expsum
    near_uniform = expsum > 0.5 * n
    log_mean = torch.log(expsum).sub_(math.log(n))
    if bool(near_uniform.any()):
        log_mean = torch.where(near_uniform, torch.log1p(expm1_sum().div_(n)), log_mean)
    result = log_mean.sub_(neg_shift).mul_(-1.0 / beta)
    return (result if keepdim else result.squeeze(dim)).to(r.dtype), neg_shift, expsum


class _RenyiTorchFunction(torch.autograd.Function):
    """Autograd for the torch backend's form (see :func:`_renyi_torch_forward`): faster than
    eager's logsumexp composite on the CPU and as exact as the reference, which stays the
    test oracle. Saves the logits (eager saves the scaled ones) and the per-row m and E; the
    backward recomputes the weights exp(x)/E in three passes instead of keeping them."""

    @staticmethod
    def forward(ctx, log_ratio: Tensor, neg_shift: Tensor, beta: float, dim: int, keepdim: bool):
        result, neg_shift, expsum = _renyi_torch_forward(log_ratio, neg_shift, beta, dim, keepdim)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(log_ratio, neg_shift, expsum)
        ctx.beta, ctx.dim, ctx.keepdim = beta, dim, keepdim
        return result

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        log_ratio, neg_shift, expsum = ctx.saved_tensors
        grad = grad_out if ctx.keepdim or log_ratio.dim() == 1 else grad_out.unsqueeze(ctx.dim)
        if torch.is_grad_enabled():
            return _closed_form_grad(log_ratio, grad, ctx.beta, ctx.dim), None, None, None, None
        # −grad·exp(x)/E, written in place over x. A single row's scale is a Python float (CPU
        # tensors only, so reading it costs no synchronisation): fewer ops, and the multiply
        # keeps x's vectorised loop, where a one-element float32 tensor would take the
        # mixed-dtype loop over a half-precision x (twice the time).
        if log_ratio.dim() == 1:
            scale = -grad.item() / expsum.item()
        else:
            scale = torch.div(grad, expsum).neg_()
        weights = torch.add(neg_shift, log_ratio, alpha=ctx.beta).exp_()
        return weights.mul_(scale), None, None, None, None


# --------------------------------------------------------------------------------------
# The torch backend's native CPU form (csrc/cpu/renyi.cpp): one row of float32/bfloat16
# logits, the common case (a batch of discriminator logits).
# --------------------------------------------------------------------------------------


def _native_renyi_applies(r: Tensor) -> bool:
    """One contiguous float32/bfloat16 row, nothing that needs PyTorch's dispatch (torch.func
    transforms, tensor subclasses; torch.compile takes the reference before this), and the
    native kernels built."""
    return (r.dim() == 1 and r.dtype in _NATIVE_DTYPE_CODES and r.is_contiguous()
            and not torch._C._are_functorch_transforms_active() and not torch._C._has_torch_function((r,))
            and _native.module() is not None)


def _native_renyi_forward(r: Tensor, beta: float) -> tuple[float, float, bool]:
    """(m, E, finite) from one read of r: m = max β·r, E = Σ exp(β·r − m)."""
    n = r.numel()
    threads = _native.threads_for(n)
    return _native.module().renyi_forward(r.data_ptr(), _NATIVE_DTYPE_CODES[r.dtype], n, beta, threads)


def _native_renyi_result(r: Tensor, beta: float, shift: float, expsum: float, keepdim: bool) -> Tensor:
    """D_α = −(m + log A)/β from the kernel's m and E, in r's dtype. Near-uniform weights
    (A > 1/2, α → 1) take log A = log1p(S/n) with S = Σ expm1(β·r − m) in float32, as the
    module's header derives."""
    n = r.numel()
    if expsum > 0.5 * n:
        x = torch.add(-shift, r if r.dtype == torch.float32 else r.float(), alpha=beta)
        log_mean = math.log1p(x.expm1_().sum().item() / n)
    else:
        log_mean = math.log(expsum) - math.log(n)
    value = (log_mean + shift) / -beta
    return torch.full((1,) if keepdim else (), value, dtype=r.dtype)


class _NativeRenyiFunction(torch.autograd.Function):
    """Autograd for the native form: saves the logits and the two per-row scalars; the backward
    is one pass, −g·exp(β·r − m)/E (csrc/cpu/renyi.cpp), or the differentiable closed form when
    a graph is being built (second order)."""

    @staticmethod
    def forward(ctx, log_ratio: Tensor, beta: float, shift: float, expsum: float, keepdim: bool):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(log_ratio)
        ctx.beta, ctx.shift, ctx.expsum = beta, shift, expsum
        return _native_renyi_result(log_ratio, beta, shift, expsum, keepdim)

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        (log_ratio,) = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _closed_form_grad(log_ratio, grad_out.reshape(()), ctx.beta, 0), None, None, None, None
        grad = _launch.output_like(log_ratio)
        n = log_ratio.numel()
        _native.module().renyi_backward(log_ratio.data_ptr(), grad.data_ptr(), _NATIVE_DTYPE_CODES[log_ratio.dtype], n,
                                        ctx.beta, ctx.shift, -grad_out.item() / ctx.expsum, _native.threads_for(n))
        return grad, None, None, None, None


# --------------------------------------------------------------------------------------
# The torch backend's native CPU form for G estimates at once (csrc/cpu/renyi_columns.cpp):
# the columns of a contiguous (N, G) float32/bfloat16 input, reduced over dim 0.
# --------------------------------------------------------------------------------------


def _native_renyi_columns_apply(r: Tensor) -> bool:
    """A contiguous (N, G) float32/bfloat16 input (reduced over dim 0), nothing that needs
    PyTorch's dispatch, and the native kernels built."""
    return (r.dim() == 2 and r.dtype in _NATIVE_DTYPE_CODES and r.is_contiguous() and r.shape[1] > 0
            and not torch._C._are_functorch_transforms_active() and not torch._C._has_torch_function((r,))
            and _native.module() is not None)


def _native_renyi_columns_forward(r: Tensor, beta: float) -> tuple[Tensor, Tensor, bool]:
    """(m, E, finite) per column from the kernel: m = max β·r (float32, (G,)), E = Σ exp(β·r − m)
    (float64, (G,))."""
    n, g = r.shape
    shift, expsum = r.new_empty(g, dtype=torch.float32), r.new_empty(g, dtype=torch.float64)
    finite = _native.module().renyi_columns_forward(r.data_ptr(), _NATIVE_DTYPE_CODES[r.dtype], n, g, beta,
                                                    shift.data_ptr(), expsum.data_ptr(), _native.threads_for(n * g))
    return shift, expsum, finite


def _native_renyi_columns_result(r: Tensor, beta: float, shift: Tensor, expsum: Tensor, keepdim: bool) -> Tensor:
    """D_α = −(m + log A)/β per column, in r's dtype; near-uniform columns (A > 1/2) take
    log A = log1p(S/n), S = Σ expm1(β·r − m) in float32, as :func:`_native_renyi_result`."""
    n = r.shape[0]
    log_mean = torch.log(expsum).sub_(math.log(n))
    near_uniform = expsum > 0.5 * n
    if bool(near_uniform.any()):
        x = torch.add(-shift, r if r.dtype == torch.float32 else r.float(), alpha=beta)
        log_mean = torch.where(near_uniform, torch.log1p(x.expm1_().sum(0, dtype=torch.float64).div_(n)), log_mean)
    result = log_mean.add_(shift).div_(-beta).to(r.dtype)
    return result.unsqueeze(0) if keepdim else result


class _NativeRenyiColumnsFunction(torch.autograd.Function):
    """Autograd for the columns form: saves the logits and the per-column m and E; the backward
    is one pass, −g_j·exp(β·r_ij − m_j)/E_j (csrc/cpu/renyi_columns.cpp), or the differentiable
    closed form when a graph is being built (second order)."""

    @staticmethod
    def forward(ctx, log_ratio: Tensor, beta: float, shift: Tensor, expsum: Tensor, keepdim: bool):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(log_ratio, shift, expsum)
        ctx.beta = beta
        return _native_renyi_columns_result(log_ratio, beta, shift, expsum, keepdim)

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        log_ratio, shift, expsum = ctx.saved_tensors
        n, g = log_ratio.shape
        if torch.is_grad_enabled():
            return _closed_form_grad(log_ratio, grad_out.reshape(1, g), ctx.beta, 0), None, None, None, None
        scale = grad_out.reshape(g).double().div(expsum).neg_().float()
        grad = _launch.output_like(log_ratio)
        _native.module().renyi_columns_backward(log_ratio.data_ptr(), grad.data_ptr(),
                                                _NATIVE_DTYPE_CODES[log_ratio.dtype], n, g, ctx.beta, shift.data_ptr(),
                                                scale.data_ptr(), _native.threads_for(n * g))
        return grad, None, None, None, None


# --------------------------------------------------------------------------------------
# Kernel path: fastgan::renyi_divergence on a (rows, n) view.
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _launcher(backend: str, name: str):
    if backend == "triton":
        from fastgan.kernels import renyi as triton_renyi

        return getattr(triton_renyi, "launch_" + name)
    from fastgan import _cuda  # its launchers mirror the triton ones argument for argument

    return getattr(_cuda, "launch_" + name)


def _rows_and_n(rows: Tensor) -> tuple[int, int]:
    """(rows, n) of a (rows, n) view, or of a 1-d tensor taken as one row."""
    return (1, rows.shape[0]) if rows.dim() == 1 else tuple(rows.shape)


def _row_layout(rows: Tensor) -> tuple[int, int, bool]:
    """(splits, columns per split, 64-bit indexing) for the forward over a (rows, n) view or a
    1-d tensor (one row)."""
    if rows.dim() == 1:
        return _planned_row_layout(1, rows.shape[0], 0, rows.stride(0), rows.device)
    num_rows, n = rows.shape
    return _planned_row_layout(num_rows, n, rows.stride(0), rows.stride(1), rows.device)


@functools.lru_cache(maxsize=1024)
def _planned_row_layout(num_rows: int, n: int, row_stride: int, col_stride: int, device: torch.device):
    blocks = -(-n // _launch.BLOCK)
    splits = 1
    if blocks > _launch.SINGLE_PROGRAM_MAX_BLOCKS:
        budget = _launch.program_budget(device, num_rows * blocks)
        splits = max(1, min(blocks, budget // max(num_rows, 1)))
    cols_per_split = -(-blocks // splits) * _launch.BLOCK
    splits = -(-n // cols_per_split)  # no empty split
    largest = (num_rows - 1) * abs(row_stride) + (n - 1) * abs(col_stride) + num_rows * n
    return splits, cols_per_split, _indexing.needs_int64(largest)


def _renyi_kernel_forward(rows: Tensor, beta: float, backend: str, out_shape=None) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (D_α per row, fp32 per-row shift m, fp32 per-row E) for a (rows, n) view or a
    1-d tensor (one row); the first is shaped ``out_shape`` (its ``rows`` elements in order)
    when given, else (rows,)."""
    num_rows, n = _rows_and_n(rows)
    out = _launch.output(rows, (num_rows,) if out_shape is None else out_shape)
    shift = _launch.output(rows, (num_rows,), torch.float32)
    expsum = _launch.output(rows, (num_rows,), torch.float32)
    if num_rows == 0:
        return out, shift, expsum
    if n == 0:  # logsumexp of nothing − log 0, and the mean of nothing: NaN
        out.fill_(float("nan"))
        shift.zero_()
        expsum.zero_()
        return out, shift, expsum
    splits, cols_per_split, needs_int64 = _row_layout(rows)
    partials = None
    if splits > 1:
        partials = torch.empty(num_rows * splits * 5, dtype=torch.float32, device=rows.device)
    # Positional, in the launcher's order (beta, inv_beta, log_n, splits, cols_per_split,
    # needs_int64, block): keywords cost 0.15-0.3 µs a call (host time at 64-1024 logits).
    _launcher(backend, "renyi_forward")(
        rows, out, shift, expsum, partials, beta, 1.0 / beta if beta != 0.0 else 0.0, math.log(n),
        splits, cols_per_split, needs_int64, _launch.BLOCK,
    )
    return out, shift, expsum


def _renyi_kernel_backward(rows, grad_out, shift, expsum, beta, backend) -> Tensor:
    """The gradient, shaped like ``rows``."""
    grad = _launch.output(rows, rows.shape)
    if rows.numel() == 0:
        return grad
    _, _, needs_int64 = _row_layout(rows)
    _launcher(backend, "renyi_backward")(rows, grad_out, shift, expsum, grad, beta, needs_int64, _launch.BLOCK)
    return grad


@torch.library.custom_op("fastgan::renyi_divergence", mutates_args=())
def _renyi_op(rows: Tensor, beta: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return _renyi_kernel_forward(rows, beta, backend)


@_renyi_op.register_fake
def _renyi_fake(rows, beta, backend):
    num_rows = rows.shape[0]
    return (
        rows.new_empty((num_rows,)),
        rows.new_empty((num_rows,), dtype=torch.float32),
        rows.new_empty((num_rows,), dtype=torch.float32),
    )


@torch.library.custom_op("fastgan::renyi_divergence_backward", mutates_args=())
def _renyi_backward_op(
    rows: Tensor, grad_out: Tensor, shift: Tensor, expsum: Tensor, beta: float, backend: str
) -> Tensor:
    return _renyi_kernel_backward(rows, grad_out, shift, expsum, beta, backend)


@_renyi_backward_op.register_fake
def _renyi_backward_fake(rows, grad_out, shift, expsum, beta, backend):
    return rows.new_empty(rows.shape)


def _renyi_setup_context(ctx, inputs, output):
    rows, beta, backend = inputs
    _, shift, expsum = output
    ctx.mark_non_differentiable(shift, expsum)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(rows, shift, expsum)
    ctx.beta = beta
    ctx.backend = backend


def _renyi_backward(ctx, grad_out, kernel):
    """(d/d rows, None, None) for a (rows, n) view, whose ``grad_out`` holds one value per row,
    or a 1-d row, whose ``grad_out`` is 0-d."""
    rows, shift, expsum = ctx.saved_tensors
    if grad_out is None or not ctx.needs_input_grad[0]:
        return None, None, None
    one_row = rows.dim() == 1
    if not one_row and grad_out.dim() != 1:
        grad_out = grad_out.reshape(-1)
    if torch.is_grad_enabled():
        if one_row:
            return _closed_form_grad(rows, grad_out, ctx.beta, 0), None, None
        return _closed_form_grad(rows, grad_out.unsqueeze(1), ctx.beta, 1), None, None
    return kernel(rows, grad_out, shift, expsum, ctx.beta, ctx.backend), None, None


def _renyi_op_backward(ctx, grad_out, _grad_shift, _grad_expsum):
    """Backward of the registered op: through the backward custom op, so tracers see it."""
    return _renyi_backward(ctx, grad_out, _renyi_backward_op)


_renyi_op.register_autograd(_renyi_op_backward, setup_context=_renyi_setup_context)


class _RenyiFunction(torch.autograd.Function):
    """Eager entry to the kernel path (same context and backward as the custom op)."""

    @staticmethod
    def forward(ctx, rows, beta, backend, out_shape):
        out, shift, expsum = _renyi_kernel_forward(rows, beta, backend, out_shape)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(rows, shift, expsum)
        ctx.beta = beta
        ctx.backend = backend
        return out  # the row statistics stay in ctx: fewer outputs, less host time

    @staticmethod
    def backward(ctx, grad_out):
        return *_renyi_backward(ctx, grad_out, _renyi_kernel_backward), None
