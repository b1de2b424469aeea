"""Fused BatchNorm + LeakyReLU: ``leaky_relu(batch_norm(x), negative_slope)`` in one op.

DCGAN-style discriminators run BatchNorm → LeakyReLU(0.2) and generators BatchNorm → ReLU
(slope 0); both are memory-bound, so fusing them saves whole passes over the activation.

Math (per channel c, over the P = N·H·W positions; see ``kernels/batch_norm.py`` for the
kernels and the backward derivation):

    training: μ = mean(x), σ² = mean((x − μ)²) (biased, fp32, Welford/Chan merges)
              running_mean ← running_mean + f·(μ − running_mean)
              running_var  ← running_var + f·(σ²·P/(P − 1) − running_var)
              f = momentum, or 1/num_batches_tracked when momentum is None (cumulative average)
    eval:     μ, σ² = running_mean, running_var
    y = leaky_relu(w·(x − μ)/sqrt(σ² + eps) + bias, negative_slope)

Memory: the kernel path saves x and three vectors of C for the backward (the activation's mask
recomputed from x): invstd and the batch mean as a float32 pair (μ, ρ), ρ the float32 rounding
residual the forward normalises with, so that the backward rebuilds the forward's z (and so its
activation mask) even when |mean| ≫ std, where dropping ρ shifts z by up to |ρ·w·invstd|; the
torch backend (PyTorch's ``native_batch_norm_backward``) saves x and y, reading the mask from y,
as eager BatchNorm followed by an in-place activation does (y is the next layer's input, kept by
that layer anyway). The in-place-ABN alternative (save y alone,
invert the activation and the affine map to recover x̂) is not used: it cannot invert ReLU
(slope 0), divides by the weight, and makes an exact double backward impossible because x
would no longer be in the graph. Saving x keeps the second-order gradients (R1 penalties
through the discriminator) exact: under ``create_graph=True`` the backward is recomputed in
differentiable PyTorch from x.

Synchronised (``process_group=``, as ``nn.SyncBatchNorm``): the statistics are those of the
batch concatenated over the K processes of the group, whose per-process batch sizes may
differ (P_k positions on process k, P = Σ P_k). The kernels already reduce x as per-split
(count, mean, M2) partials ``[splits, 3, C]`` (of x − K, K a per-channel pivot, so that float32
keeps the spread when |mean| ≫ std) merged by Chan's formula: for two parts a, b
with δ = μ_b − μ_a, n = n_a + n_b,

    μ = μ_a + δ·n_b/n,   M2 = M2_a + M2_b + δ²·n_a·n_b/n     (associative; M2 never E[x²]−E[x]²)

so each process merges its splits into one row (P_k, μ_k, M2_k, ρ_k) ``[4, C]``, ρ_k the
float32 rounding residual of μ_k (so that |mean| ≫ std loses nothing in the merge), ONE
all-gather fills a preallocated ``[K, 4, C]``, and every process runs the same finalize over
those K rows:
μ, σ² = M2/P and the running statistics with the unbiased M2/(P − 1) of the global P, as
``nn.SyncBatchNorm`` updates them. Backward: with dz and x̂ as in the kernels,

    dx = w·invstd·(dz − Σdz/P − x̂·Σ(dz·x̂)/P)

where the two sums run over the GLOBAL batch, because every process's loss depends on x
through μ and σ: each process computes its own (Σdz, Σdz·x̂) ``[2, C]``, ONE all-reduce (sum)
makes them global, and they are divided by the global P (kept on the device: the counts
never leave it). dw = Σdz·x̂ and dbias = Σdz stay the process's own sums, as in
``nn.SyncBatchNorm``: data parallelism reduces parameter gradients itself. So one collective
per layer per pass, into preallocated buffers, with no host synchronisation: capturable in a
CUDA graph with NCCL. In eval mode (running statistics), or when the group has one process,
nothing is communicated. The torch backend gets the same statistics by differentiating
through the gather (its adjoint is a sum all-reduce), which makes its double backward exact;
the kernel path's double backward recomputes through that reference (two collectives instead
of one, only under ``create_graph=True``). Every process of the group must make the same
calls in the same order (as with ``nn.SyncBatchNorm``), with the same backend.

Registration: ``fastgan::batch_norm_leaky_relu`` (mutating the running statistics) and
``fastgan::batch_norm_leaky_relu_backward`` are ``torch.library`` custom ops with fake
implementations; eager calls enter the same code through an ``autograd.Function``. Their
synchronised twins ``fastgan::sync_batch_norm_leaky_relu(_backward)`` name the process group
by its registered ``group_name`` (custom ops take no group objects), so the synchronised block
also compiles with ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from fastgan import _backend, _indexing, _native
from fastgan.ops import _launch
from fastgan.ops._cache import BoundedCache
from fastgan.ops.collectives import all_gather_into, all_reduce_sum, gather_batch
from fastgan.ops.bce import _NATIVE_DTYPE_CODES, _compute_dtype, _tensor_key

# Tile shapes: the unit-stride dimension is the long one.
_CHANNELS_LAST_TILE = (32, 64)  # (channels, positions) when channels are contiguous
_CHANNELS_FIRST_TILE = (2, 512)  # when positions are contiguous (NCHW)


class BatchNormPlan(NamedTuple):
    """How the kernels tile an (N, C, S) view: ``splits`` programs per channel block for the
    reductions, each covering ``positions_per_split`` of the P = N·S positions; and the (N, C,
    S) geometry of the tensors a launch walks, so that the launchers take them in any (N, C, *)
    shape whose spatial dimensions merge (no view per call: host time is the cost of a small
    block): x's strides, those of the outputs shaped like x (y in the forward, grad_x in the
    backward) and those of the incoming gradient (x's in a forward plan)."""

    splits: int
    positions_per_split: int
    block_c: int
    block_p: int
    needs_int64: bool
    channels_last: bool  # the tile's contiguous (long) dimension is the channels
    shape: tuple[int, int, int]
    x_strides: tuple[int, int, int]
    out_strides: tuple[int, int, int]
    grad_strides: tuple[int, int, int]


# --------------------------------------------------------------------------------------
# Reference (the torch backend)
# --------------------------------------------------------------------------------------


def _channel_view(t: Tensor, ndim: int) -> Tensor:
    return t.view((1, -1) + (1,) * (ndim - 2))


def _normalise_activate(x: Tensor, weight, bias, mean: Tensor, var: Tensor, eps: float, slope: float,
                        mean_low: Optional[Tensor] = None) -> Tensor:
    """leaky_relu(w·(x − μ)/sqrt(σ² + eps) + bias), differentiable in every argument. With
    ``mean_low``, μ = mean + mean_low (a float32 pair): x − mean is exact when |mean| ≫ std,
    and the low part is taken from the centred value, so μ's float32 rounding costs nothing."""
    centred = x - _channel_view(mean, x.dim())
    if mean_low is not None:
        centred = centred - _channel_view(mean_low, x.dim())
    z = centred * _channel_view(torch.rsqrt(var + eps), x.dim())
    if weight is not None:
        z = z * _channel_view(weight.to(z.dtype), x.dim())
    if bias is not None:
        z = z + _channel_view(bias.to(z.dtype), x.dim())
    return F.leaky_relu(z, slope)


def _batch_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    dims = [0] + list(range(2, x.dim()))
    return x.mean(dims), x.var(dims, unbiased=False)


def _update_running(running_mean, running_var, mean, var, positions, factor) -> None:
    """Running statistics from the batch's; ``positions`` (an int, or a device tensor when
    synchronised) turns the biased variance into the unbiased one."""
    with torch.no_grad():
        unbiased = var * (positions / (positions - 1))
        running_mean.lerp_(mean.to(running_mean.dtype), factor)
        running_var.lerp_(unbiased.to(running_var.dtype), factor)


def _running_factor(momentum: Optional[float], num_batches_tracked: Optional[Tensor]):
    """The running-statistics factor: momentum, or 1/num_batches_tracked as a device tensor."""
    return momentum if momentum is not None else 1.0 / num_batches_tracked


def _global_batch_statistics(x: Tensor, group) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(mean, its float32 low part, biased variance, count) per channel over the batch
    concatenated across ``group``, differentiable in this process's ``x``.

    Each process takes shifted-data statistics: m̃_k = mean(x) in float32, c = x − m̃_k (exact
    when |mean| ≫ std), the residual ρ_k = mean(c) and M2_k = Σ(c − ρ_k)². The K rows
    (n_k, m̃_k, ρ_k, M2_k) are gathered and merged by Chan's formula in closed form with the
    global mean kept as a float32 pair: μ_hi = Σ n_k·m̃_k / P, μ_lo = Σ n_k·((m̃_k − μ_hi) + ρ_k) / P,
    and M2 = Σ M2_k + Σ n_k·d_k², d_k = (m̃_k − μ_hi) + (ρ_k − μ_lo), with P = Σ n_k. So
    inputs whose mean dwarfs their spread lose nothing to μ's rounding (the statistics eager
    PyTorch's CPU kernel gets by accumulating in float64). An empty ``x`` gives a zero row."""
    dims = [0] + list(range(2, x.dim()))
    positions = x.numel() // x.shape[1]
    per = max(positions, 1)
    rough = x.sum(dims) / per
    centred = x - _channel_view(rough, x.dim())
    residual = centred.sum(dims) / per
    m2 = (centred - _channel_view(residual, x.dim())).square().sum(dims)
    local = torch.stack([torch.full_like(rough, positions), rough, residual, m2]).unsqueeze(0)
    counts, roughs, residuals, m2s = gather_batch(local, group).unbind(1)
    count = counts.sum(0)
    mean = (counts * roughs).sum(0) / count
    mean_low = (counts * ((roughs - mean) + residuals)).sum(0) / count
    offsets = (roughs - mean) + (residuals - mean_low)
    m2 = m2s.sum(0) + (counts * offsets.square()).sum(0)
    return mean, mean_low, m2 / count, count


def batch_norm_leaky_relu_reference(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    training: bool,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    negative_slope: float = 0.01,
    *,
    num_batches_tracked: Optional[Tensor] = None,
    process_group=None,
) -> Tensor:
    """:func:`batch_norm_leaky_relu` in plain differentiable PyTorch (half precision in float32).
    Synchronised, the gather of the statistics is differentiable too (its adjoint is one sum
    all-reduce), so gradients of any order are those of the concatenated batch."""
    group = _synchronising_group(process_group, training)
    positions = _check_args(x, weight, bias, running_mean, running_var, training, momentum, eps, negative_slope,
                            num_batches_tracked, synchronised=group is not None)
    x32 = x.to(_compute_dtype(x.dtype))
    mean_low = None
    if training:
        _advance(num_batches_tracked, running_mean)
        if group is None:
            mean, var = _batch_statistics(x32)
        else:
            mean, mean_low, var, positions = _global_batch_statistics(x32, group)
            positions = positions.detach()
        if running_mean is not None:
            full_mean = mean.detach() if mean_low is None else (mean + mean_low).detach()
            _update_running(running_mean, running_var, full_mean, var.detach(), positions,
                            _running_factor(momentum, num_batches_tracked))
    else:
        mean, var = running_mean.to(x32.dtype), running_var.to(x32.dtype)
    return _normalise_activate(x32, weight, bias, mean, var, eps, negative_slope, mean_low).to(x.dtype)


# --------------------------------------------------------------------------------------
# The torch backend: PyTorch's own batch-norm kernels, the activation in place
# --------------------------------------------------------------------------------------


def _as_compute(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _planar_on_one_cpu_thread(x: Tensor) -> bool:
    """Where the torch backend's planar statistics beat PyTorch's CPU BatchNorm kernel (see
    :func:`_native_forward`): contiguous (N, C, *) CPU tensors of at least
    _MIN_PLANAR_ROW values per (n, c) row, with one intra-op thread ((N, C) inputs and
    shorter rows measured 0.4-0.7x eager there)."""
    return (x.dim() >= 3 and x.is_contiguous() and x.device.type == "cpu" and torch.get_num_threads() == 1
            and x.numel() // max(1, x.shape[0] * x.shape[1]) >= _MIN_PLANAR_ROW)


# The native CPU kernel (csrc/cpu/batch_norm.cpp) runs on PyTorch's own OpenMP threads
# (csrc/cpu/parallel.h), so inside a network it runs on the pool PyTorch's convolutions keep
# awake. Measured on 2 threads with a convolution before each block: 1.02-1.42x eager fwd+bwd
# (with threads of its own it lost there, 0.59-0.93x, though alone it measured 1.0-1.7x). Where
# the pool is not PyTorch's (a build without OpenMP, a second OpenMP runtime) it is used only
# on one intra-op thread. Planar inputs are walked one (n, c) row at a time: rows shorter than
# _MIN_PLANAR_ROW keep PyTorch's kernel (0.4-0.7x there); channels_last inputs one position's
# channels at a time.
_MIN_PLANAR_ROW = 64
# (N, C) inputs (BatchNorm1d on features) run as channels_last rows of C from this many values:
# measured fwd+bwd on 2 threads, 1.02-1.51x eager from 2^18 (4096x64, 65536x32), 0.93-1.54x at
# 2^17, 0.78-0.86x at 2^14-2^15, where eager's ops measured 0.89-0.93x.
_MIN_NATIVE_FEATURES = 1 << 18


# The native kernels' layouts of x (0: neither, the kernels do not apply).
_PLANAR, _CHANNELS_LAST = 1, 2


def _native_layout(x: Tensor) -> int:
    """The native kernels' view of x: _PLANAR (contiguous (N, C, *) with rows of at least
    _MIN_PLANAR_ROW), _CHANNELS_LAST (a 4-d channels_last tensor, or a contiguous (N, C) one
    of at least _MIN_NATIVE_FEATURES values: rows of C with S = 1), else 0."""
    if x.dim() == 2:
        return _CHANNELS_LAST if x.numel() >= _MIN_NATIVE_FEATURES and x.is_contiguous() else 0
    if x.dim() < 3:
        return 0
    if x.is_contiguous():
        return _PLANAR if x.numel() // (x.shape[0] * x.shape[1]) >= _MIN_PLANAR_ROW else 0
    return _CHANNELS_LAST if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else 0


def _native_layout_of_call(x: Tensor, weight, bias, running_mean, running_var, training: bool, momentum) -> int:
    """The part of :func:`_cpu_kernel_applies` that depends only on the arguments' dtypes,
    devices, shapes and strides and the scalars (so it is cached with the validation): x's
    layout code where the kernels take the call, else 0."""
    if x.dtype not in _NATIVE_DTYPE_CODES or x.device.type != "cpu" or not x.numel():
        return 0
    if training and momentum is None and running_mean is not None:
        return 0
    parameter_dtype = None
    for t in (weight, bias, running_mean, running_var):
        if t is not None:
            if parameter_dtype is None:
                parameter_dtype = t.dtype
            if t.dtype != parameter_dtype or not t.is_contiguous():
                return 0
    if parameter_dtype not in (None, torch.float32, x.dtype):
        return 0
    return _native_layout(x)


def _cpu_kernel_applies(x: Tensor, weight, bias, running_mean, running_var, layout: int) -> int:
    """x's layout code (:func:`_native_layout`) where the torch backend's block runs fastgan's
    native CPU kernels (csrc/cpu/batch_norm.cpp), else 0: threads from PyTorch's OpenMP pool or
    one intra-op thread (see above), a float32 or bfloat16 CPU x in a layout the kernels take,
    contiguous parameters and statistics in float32 (or all in x's bfloat16), not the
    cumulative average, nothing that needs PyTorch's dispatch (torch.compile tracing,
    torch.func transforms, tensor subclasses), and the kernels built. ``layout``: what
    :func:`_native_layout_of_call` returned for these arguments (cached with their validation);
    the rest, checked here, can change between calls with the same arguments."""
    if not layout or not (torch.get_num_threads() == 1 or _native.shares_openmp_pool()):
        return 0
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return 0
    if torch._C._has_torch_function((x, weight, bias, running_mean, running_var)):
        return 0
    return layout if _native.module() is not None else 0


def _address(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _parameter_code(*parameters: Optional[Tensor]) -> int:
    """The dtype code of the block's per-channel vectors (all one dtype, see _cpu_kernel_applies)."""
    for t in parameters:
        if t is not None:
            return _NATIVE_DTYPE_CODES[t.dtype]
    return 0


def _kernel_threads() -> int:
    """PyTorch's intra-op threads where the kernel shares their pool, else one (see above)."""
    threads = torch.get_num_threads()
    return threads if threads == 1 or _native.shares_openmp_pool() else 1


def _cpu_kernel_forward(x, weight, bias, running_mean, running_var, training: bool, momentum, eps: float,
                        slope: float, layout: int):
    """(y, saved statistics) from the native CPU kernel, x in ``layout``; the running
    statistics are updated in place in training. Statistics in float64, as PyTorch's CPU kernel
    takes them; in training the batch mean, as a float32 pair (mean, its rounding residual: the
    backward's x − mean is then as exact as the forward's), and invstd are saved as one float32
    (3C,) tensor (eager saves mean and invstd, 2C, and the running statistics, which this
    kernel's backward does not need), in eval nothing (None)."""
    channels = x.shape[1]
    y = _launch.output_like(x)
    saved = x.new_empty(3 * channels, dtype=torch.float32) if training else None
    _native.module().batch_norm_leaky_relu_forward(
        x.data_ptr(), y.data_ptr(), _address(weight), _address(bias), _address(running_mean), _address(running_var),
        saved.data_ptr() if training else 0, x.shape[0], channels,
        x.numel() // (x.shape[0] * channels), _NATIVE_DTYPE_CODES[x.dtype],
        _parameter_code(weight, bias, running_mean, running_var), layout == _CHANNELS_LAST, training,
        momentum if momentum is not None else 0.0, eps, slope, _kernel_threads())
    return y, saved


def _cpu_kernel_backward(grad_out, x, weight, bias, mean, stat, y, training: bool, eps: float, slope: float,
                         needs, layout: int) -> tuple:
    """(grad x, grad weight, grad bias), None where not needed, from the native CPU kernel: the
    activation's gradient and BatchNorm's in two passes, from x (in ``layout``), y and the
    statistics: in training ``mean`` is the forward's saved (3C,) float32 statistics and
    ``stat`` None, in eval the running mean and var."""
    channels_last = layout == _CHANNELS_LAST
    grad_out = grad_out.to(x.dtype).contiguous(memory_format=torch.channels_last if channels_last and x.dim() == 4
                                               else torch.contiguous_format)
    grad_x = _launch.output_like(x) if needs[0] else None
    # The parameters are contiguous here (_cpu_kernel_applies), so their gradients are too.
    grad_weight = torch.empty_like(weight) if needs[1] and weight is not None else None
    grad_bias = torch.empty_like(bias) if needs[2] and bias is not None else None
    channels = x.shape[1]
    parameter_code = _parameter_code(weight, bias, *((None, None) if training else (mean, stat)))
    _native.module().batch_norm_leaky_relu_backward(
        grad_out.data_ptr(), x.data_ptr(), _address(y), _address(weight), _address(bias), mean.data_ptr(),
        0 if training else stat.data_ptr(), _address(grad_x), _address(grad_weight), _address(grad_bias),
        x.shape[0], channels,
        x.numel() // (x.shape[0] * channels), _NATIVE_DTYPE_CODES[x.dtype], parameter_code, channels_last, training,
        not training, eps, slope, _kernel_threads())
    return grad_x, grad_weight, grad_bias


def _native_forward(x, weight, bias, running_mean, running_var, num_batches_tracked, training: bool,
                    momentum: Optional[float], eps: float, slope: float):
    """(y, saved mean, saved invstd) of the torch backend, then an in-place leaky_relu. Half
    inputs run in float32.

    Training, planar float32/float64 layouts ((N, C), contiguous (N, C, *)) on one CPU thread:
    two whole-tensor reduction passes, Σx and then Σ(x − μ)², and y = (x − μ)·(w·invstd) + b
    written over x − μ (:func:`_planar_normalise`). There PyTorch's CPU training kernel takes
    its statistics one element at a time, several times slower than these reductions;
    normalising the centred values keeps |mean| ≫ std as exact as eager. Otherwise (more
    threads, channels_last, eval, float16/bfloat16, GPU tensors) ``native_batch_norm`` itself
    (which computes half inputs in float32, as eager BatchNorm does: no conversion passes)."""
    dtype = _parameter_dtype(x, weight, bias, running_mean, running_var)
    x_c = x if x.dtype in (torch.float16, torch.bfloat16) else _as_compute(x, dtype)
    weight_c, bias_c = _as_compute(weight, dtype), _as_compute(bias, dtype)
    # Whole-tensor reductions beat PyTorch's CPU statistics kernel on one intra-op thread (2.2x at
    # 32x64x16x16); with more threads that kernel parallelises over channels and is as fast or
    # faster (measured on 2 threads), and on a GPU it is cuDNN's.
    if (training and _planar_on_one_cpu_thread(x) and x_c.dtype == dtype and dtype in (torch.float32, torch.float64)
            and x.numel()):
        y, save_mean, var, save_invstd = _planar_normalise(x_c, weight_c, bias_c, eps)
        if running_mean is not None:
            _update_running(running_mean, running_var, save_mean, var, x.numel() // x.shape[1],
                            _running_factor(momentum, num_batches_tracked))
    else:
        cumulative = training and running_mean is not None and momentum is None
        direct = (running_mean is not None and running_mean.dtype == dtype and running_var.dtype == dtype
                  and not cumulative)
        if direct or running_mean is None or not training:
            mean_in, var_in = _as_compute(running_mean, dtype), _as_compute(running_var, dtype)
        else:
            mean_in, var_in = x_c.new_zeros(x.shape[1], dtype=dtype), x_c.new_zeros(x.shape[1], dtype=dtype)
        native_momentum = (momentum if direct else 1.0) if training and running_mean is not None else 0.0
        y, save_mean, save_invstd = torch.native_batch_norm(x_c, weight_c, bias_c, mean_in, var_in, training,
                                                            native_momentum, eps)
        if training and running_mean is not None and not direct:
            # mean_in/var_in now hold the batch mean and unbiased variance.
            factor = _running_factor(momentum, num_batches_tracked)
            with torch.no_grad():
                running_mean.lerp_(mean_in.to(running_mean.dtype), factor)
                running_var.lerp_(var_in.to(running_var.dtype), factor)
    y = torch.relu_(y) if slope == 0 else torch.ops.aten.leaky_relu_(y, slope)
    return y.to(x.dtype), save_mean, save_invstd


def _parameter_dtype(x: Tensor, *parameters: Optional[Tensor]) -> torch.dtype:
    """The dtype of the parameters and statistics given to PyTorch's BatchNorm: x's for float32
    and float64; for half x, x's own when every parameter has it (a module converted with
    ``.half()``), else float32 (PyTorch's mixed-type form)."""
    if x.dtype not in (torch.float16, torch.bfloat16):
        return x.dtype
    return x.dtype if all(p is None or p.dtype == x.dtype for p in parameters) else torch.float32


def _planar_normalise(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                      eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y before the activation, mean, biased variance, invstd) of a planar x (N, C, *) in training.

    Shifted-data statistics: with m̃ = mean(x) in float32 and c = x − m̃ (exact when |mean| ≫
    std), the residual ρ = mean(c) gives μ = m̃ + ρ and σ² = mean(c²) − ρ² with float32-relative
    accuracy (ρ² is dropped: ρ is a rounding error of m̃, so ρ²/σ² is below float32's
    resolution unless |mean|/std exceeds 1e7), and y = c·s + (b − ρ·s), s = w·invstd,
    normalises the exactly centred c. PyTorch's CPU kernel reaches the same accuracy by
    accumulating in float64, element by element, which is several times slower."""
    dims = (0,) + tuple(range(2, x.dim()))
    rough_mean = x.mean(dims)
    centred = torch.sub(x, _channel_view(rough_mean, x.dim()))
    residual = centred.mean(dims)
    var = torch.square(centred).mean(dims)
    invstd = var.add(eps).rsqrt_()
    scale = invstd if weight is None else invstd * weight
    shift = (residual * scale).neg_() if bias is None else torch.addcmul(bias, residual, scale, value=-1)
    y = centred.mul_(_channel_view(scale, x.dim())).add_(_channel_view(shift, x.dim()))
    return y, rough_mean.add_(residual), var, invstd


def _eager_ops_suffice(x, weight, bias, running_mean, running_var, training: bool, momentum, slope) -> bool:
    """Whether the torch backend's block is eager PyTorch's own BatchNorm followed by its
    in-place activation (:func:`_eager_batch_norm_leaky_relu`). It is, unless: the planar
    statistics are faster (float32/float64 NCHW training on one CPU thread, see
    :func:`_native_forward`); the slope is negative (PyTorch's in-place LeakyReLU has no
    backward for it); the running average is cumulative (momentum None); or the parameters'
    dtypes differ in a way PyTorch's op does not take. Those run
    :class:`_NativeBatchNormLeakyReLUFunction`."""
    if slope < 0 or (training and momentum is None and running_mean is not None):
        return False
    if training and x.dtype in (torch.float32, torch.float64) and _planar_on_one_cpu_thread(x):
        return False
    dtype = _parameter_dtype(x, weight, bias, running_mean, running_var)
    return all(t is None or t.dtype == dtype for t in (weight, bias, running_mean, running_var))


def _eager_batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, training: bool, momentum, eps: float,
                                 slope: float) -> Tensor:
    """``F.batch_norm`` then an in-place ``leaky_relu_`` (``relu_`` for slope 0): PyTorch's own
    ops and autograd nodes (C++ backward, exact double backward), so exactly eager's values,
    gradients and speed; in place, the block saves x and y only (BatchNorm its input, the
    activation its result), as :class:`_NativeBatchNormLeakyReLUFunction` does."""
    y = torch.batch_norm(x, weight, bias, running_mean, running_var, training,
                         momentum if momentum is not None else 0.0, eps, torch.backends.cudnn.enabled)
    return torch.relu_(y) if slope == 0 else torch._C._nn.leaky_relu_(y, slope)


class _NativeBatchNormLeakyReLUFunction(torch.autograd.Function):
    """Autograd for the torch backend (no process group) where eager's own ops do not suffice
    (see :func:`_eager_ops_suffice`: the planar statistics, a negative slope, the cumulative
    average, mixed parameter dtypes). Saves what eager BatchNorm followed
    by an in-place activation saves: x, the output y and two vectors of C (batch mean and
    invstd in training, the running statistics in eval). The activation's mask is read from y
    (y > 0 exactly where the BatchNorm output is, for a slope ≥ 0), so the backward is
    PyTorch's leaky_relu and BatchNorm backward with no pass to rebuild the BatchNorm output;
    y is the next layer's input, which that layer keeps anyway. A negative slope flips the
    sign, so there the mask is recomputed from x. Under ``create_graph`` the backward is the
    differentiable reference's, so second-order gradients stay exact. The constants come as one
    tuple (``apply`` pays per argument: host time decides a small block's speed)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, num_batches_tracked, constants):
        training, momentum, eps, slope, cpu_kernel = constants
        if cpu_kernel:  # x's layout code (_native_layout)
            y, saved = _cpu_kernel_forward(x, weight, bias, running_mean, running_var, training, momentum, eps,
                                           slope, cpu_kernel)
            statistics = (saved, None) if training else (running_mean, running_var)
        else:
            y, save_mean, save_invstd = _native_forward(x, weight, bias, running_mean, running_var,
                                                        num_batches_tracked, training, momentum, eps, slope)
            statistics = (save_mean, save_invstd) if training else (running_mean, running_var)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, bias, *statistics, y if slope >= 0 else None)
        ctx.training, ctx.eps, ctx.slope, ctx.cpu_kernel = training, eps, slope, cpu_kernel
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, stat, y = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        if grad_out is None:
            return (None,) * 7
        if torch.is_grad_enabled():
            running = (None, None) if ctx.training else (mean, stat)
            grads = _differentiable_backward(grad_out, x, weight, bias, *running, ctx.eps, ctx.slope,
                                             (need_x, need_weight, need_bias))
            return grads + (None,) * 4
        if ctx.cpu_kernel:
            return _cpu_kernel_backward(grad_out, x, weight, bias, mean, stat, y, ctx.training, ctx.eps, ctx.slope,
                                        (need_x, need_weight, need_bias), ctx.cpu_kernel) + (None,) * 4
        dtype = _parameter_dtype(x, weight, bias, *((None, None) if ctx.training else (mean, stat)))
        weight_c = _as_compute(weight, dtype)
        if x.dtype in (torch.float16, torch.bfloat16):  # PyTorch's BatchNorm backward takes them as they are
            x_c, mean_c, stat_c = x, mean, stat
        else:
            x_c, mean_c, stat_c = (_as_compute(t, dtype) for t in (x, mean, stat))
        if y is not None:
            grad_z = torch.ops.aten.leaky_relu_backward(_as_compute(grad_out, x_c.dtype), y, ctx.slope, True)
        else:
            grad_z = _leaky_relu_grad_from_x(grad_out, x_c, weight_c, _as_compute(bias, dtype), mean_c, stat_c,
                                             ctx.training, ctx.eps, ctx.slope)
        running, saved = ((None, None), (mean_c, stat_c)) if ctx.training else ((mean_c, stat_c), (None, None))
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_z, x_c, weight_c, *running, *saved, ctx.training, ctx.eps,
            [need_x, need_weight and weight is not None, need_bias and bias is not None],
        )
        grads = tuple(g.to(t.dtype) if wanted and t is not None else None
                      for g, t, wanted in zip((grad_x, grad_weight, grad_bias), (x, weight, bias),
                                              (need_x, need_weight, need_bias)))
        return grads + (None,) * 4


def _leaky_relu_grad_from_x(grad_out, x, weight, bias, mean, stat, training: bool, eps: float, slope: float) -> Tensor:
    """d/dz of leaky_relu(z) applied to ``grad_out``, with z = w·(x − μ)·invstd + bias rebuilt
    from x (the forward's affine map), for slopes whose output sign does not tell z's."""
    invstd = stat if training else torch.rsqrt(stat + eps)
    scale = invstd * weight if weight is not None else invstd
    shift = -mean * scale + (bias if bias is not None else 0)
    z = torch.addcmul(_channel_view(shift, x.dim()), x, _channel_view(scale, x.dim()))
    return torch.ops.aten.leaky_relu_backward.grad_input(grad_out.to(x.dtype), z, slope, False, grad_input=z)


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _check_vector(value, name: str, channels: int, device: torch.device) -> None:
    if value is None:
        return
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},) for an input with {channels} channels, got {tuple(value.shape)}")
    if value.device != device:
        raise RuntimeError(f"{name} is on {value.device} but x is on {device}")


def _is_real(value) -> bool:
    """A real number that is not a bool (floats first: the ABC check costs host time per call)."""
    return type(value) is float or (not isinstance(value, bool) and isinstance(value, numbers.Real))


def _is_finite(value) -> bool:
    """math.isfinite spelled in comparisons, which torch.compile can trace for the symbolic floats
    a module's float attributes become under ``dynamic=True``."""
    return value == value and -math.inf < value < math.inf


def _check_args(x, weight, bias, running_mean, running_var, training, momentum, eps, negative_slope,
                num_batches_tracked, synchronised: bool = False) -> int:
    """Validates the arguments; returns P, the number of values per channel (of this process).
    ``synchronised``: the statistics are over a process group, so one value per channel here
    (or none) is fine, as in ``nn.SyncBatchNorm``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must have shape (N, C, *) with at least 2 dimensions, got {tuple(x.shape)}")
    channels, device = x.shape[1], x.device
    _check_vector(weight, "weight", channels, device)
    _check_vector(bias, "bias", channels, device)
    _check_vector(running_mean, "running_mean", channels, device)
    _check_vector(running_var, "running_var", channels, device)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    if not training and running_mean is None:
        raise ValueError("training=False normalises with running_mean/running_var, which are None")
    if momentum is not None and not _is_real(momentum):
        raise TypeError(f"momentum must be a float or None, got {type(momentum).__name__}")
    if momentum is not None and not _is_finite(momentum):
        raise ValueError(f"momentum must be finite (or None for the cumulative average), got {momentum!r}")
    for value, name in ((eps, "eps"), (negative_slope, "negative_slope")):
        if not _is_real(value) or not _is_finite(value):
            raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if num_batches_tracked is not None:
        if (not isinstance(num_batches_tracked, torch.Tensor) or num_batches_tracked.numel() != 1
                or num_batches_tracked.dtype != torch.int64):
            raise TypeError("num_batches_tracked must be a one-element int64 tensor (the module's buffer) or None")
        if num_batches_tracked.device != device:
            raise RuntimeError(f"num_batches_tracked is on {num_batches_tracked.device} but x is on {device}")
    if training and running_mean is not None and momentum is None and num_batches_tracked is None:
        raise ValueError("momentum=None (cumulative average) needs num_batches_tracked")
    if synchronised and channels == 0:
        raise ValueError(f"x has no channels (shape {tuple(x.shape)}): there are no statistics to synchronise")
    positions = x.numel() // channels if channels else 0
    if training and positions == 1 and not synchronised:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    return positions


# Calls validated before, by _arguments_key: validation and the kernel-path choices depend only
# on the arguments' shapes, strides, dtypes, devices and scalar values (host time is the cost
# of a small block).
_CHECKED_ARGUMENTS = BoundedCache(1024)


def _arguments_key(x, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps,
                   negative_slope) -> Optional[tuple]:
    """What :func:`_check_args`, the backend's dtype, the layout checks and
    :func:`_native_layout_of_call` depend on, or None for a call that is
    validated in full every time: a scalar of another type than nn.BatchNorm's (``True ==
    1`` as a key, but not as ``training``) or an argument that is not a tensor."""
    if not (training.__class__ is bool and eps.__class__ is float and negative_slope.__class__ is float
            and (momentum is None or momentum.__class__ is float)):
        return None
    try:
        return (_tensor_key(x), _tensor_key(weight), _tensor_key(bias), _tensor_key(running_mean),
                _tensor_key(running_var), _tensor_key(num_batches_tracked), training, momentum, eps, negative_slope)
    except (AttributeError, TypeError):
        return None


def _synchronising_group(process_group, training: bool):
    """The process group whose batch statistics are combined, or None for this process's own:
    ``process_group`` validated; None also in eval (running statistics) and for a group of one."""
    if process_group is None:
        return None
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "process_group was given but torch.distributed is not initialised: call "
            "torch.distributed.init_process_group() first, or pass process_group=None for per-process statistics"
        )
    if process_group is dist.GroupMember.NON_GROUP_MEMBER:  # what new_group gives the processes outside it
        raise ValueError(f"process_group does not contain this process (global rank {dist.get_rank()})")
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError("process_group must be a torch.distributed.ProcessGroup (e.g. torch.distributed.group.WORLD) "
                        f"or None, got {type(process_group).__name__}")
    if not training or dist.get_world_size(process_group) == 1:
        return None
    return process_group


def _advance(num_batches_tracked: Optional[Tensor], running_mean: Optional[Tensor]) -> None:
    """num_batches_tracked += 1, on the device, as nn.BatchNorm does in training."""
    if num_batches_tracked is not None and running_mean is not None:
        num_batches_tracked.add_(1)


# --------------------------------------------------------------------------------------
# Kernel path
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _launcher(backend: str, name: str):
    """The launch function ``name`` of the triton (``fastgan.kernels.batch_norm``) or cuda
    backend, looked up once (an import statement per call is host time)."""
    if backend == "triton":
        from fastgan.kernels import batch_norm as triton_batch_norm

        return getattr(triton_batch_norm, "launch_" + name)
    from fastgan import _cuda

    return getattr(_cuda, "launch_" + name)


def _three_d(t: Tensor) -> Tensor:
    """(N, C, S) view of an (N, C, *) tensor whose spatial dimensions merge (see
    :func:`_spatial_dims_merge`)."""
    return t.view(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


def _spatial_dims_merge(t: Tensor) -> bool:
    """True when the spatial dimensions of (N, C, *) ``t`` share one stride, so that (N, C, S)
    is a view of it (NCHW-contiguous and channels_last both are): each dimension's stride is
    the next one's times its size, size-1 dimensions aside. Read from the strides alone
    (host time: a trial view would join the autograd graph)."""
    inner_stride = None
    for size, step in zip(reversed(t.shape[2:]), reversed(t.stride()[2:])):
        if size == 1:
            continue
        if inner_stride is not None and step != inner_stride:
            return False
        inner_stride = step * size
    return True


def _largest_offset(*layouts) -> int:
    """One past the largest element offset of (shape, strides) layouts."""
    return max(sum((size - 1) * abs(step) for size, step in zip(shape, strides)) + 1 for shape, strides in layouts)


def _plan(x3: Tensor, out3: Optional[Tensor] = None, grad3: Optional[Tensor] = None) -> BatchNormPlan:
    """The launch plan for x3 (N, C, S), the output shaped like it (``out3``: y or grad_x; x3's
    layout when None) and the incoming gradient (``grad3``; x3's layout when None). It depends
    only on their shapes and strides, so it is planned once per layout (host time is the cost
    of a small block)."""
    x_strides = x3.stride()
    return _planned(tuple(x3.shape), x_strides, out3.stride() if out3 is not None else x_strides,
                    grad3.stride() if grad3 is not None else x_strides, x3.device)


@functools.lru_cache(maxsize=1024)
def _planned(shape, x_strides, out_strides, grad_strides, device) -> BatchNormPlan:
    n, c, s = shape
    positions = n * s
    channels_last = x_strides[1] == 1 and c > 1
    block_c, block_p = _CHANNELS_LAST_TILE if channels_last else _CHANNELS_FIRST_TILE
    block_c = min(block_c, _launch.triton_next_power_of_2(max(c, 1)))
    block_c = max(block_c, 2)
    channel_blocks = -(-c // block_c)
    position_blocks = max(1, -(-positions // block_p))
    budget = _launch.program_budget(device, channel_blocks * position_blocks)
    splits = max(1, min(position_blocks, budget // channel_blocks))
    positions_per_split = -(-position_blocks // splits) * block_p
    splits = max(1, -(-positions // positions_per_split))
    needs_int64 = _indexing.needs_int64(_largest_offset(*((shape, strides) for strides in
                                                          (x_strides, out_strides, grad_strides))))
    return BatchNormPlan(splits, positions_per_split, block_c, block_p, needs_int64, channels_last, shape,
                         tuple(x_strides), tuple(out_strides), tuple(grad_strides))


def _in_layout_of(t: Tensor, like: Tensor) -> Tensor:
    """``t`` in ``like``'s dtype and strides (copied once when they differ, into an output
    allocated like ``like``), so the kernels read x and its incoming gradient with one tile
    orientation and both with vector accesses. Strides of size-1 dimensions do not count."""
    strides = t.stride()
    if t.dtype == like.dtype and (strides == like.stride() or all(
            st == sl for st, sl, size in zip(strides, like.stride(), like.shape) if size > 1)):
        return t
    return _launch.output_like(like).copy_(t)


def _forward_impl(x3, weight, bias, running_mean, running_var, num_batches_tracked, training: bool,
                  momentum: float, cumulative: bool, eps: float, slope: float, backend: str):
    """(y3, mean, invstd): in training mean is fp32 [2, C], the batch mean rounded to float32 and
    what that rounding dropped (the forward normalises with their sum, and the backward needs
    both to rebuild the forward's activation mask), invstd fp32 [C]; in eval both are empty."""
    y3 = _launch.output_like(x3)
    plan = _plan(x3, y3)
    channels = x3.shape[1]
    if training:
        mean = _launch.output(x3, (2, channels), torch.float32)  # (float32 mean, its rounding residual)
        invstd = _launch.output(x3, (channels,), torch.float32)
        _launch_forward(x3, y3, weight, bias, running_mean, running_var, num_batches_tracked, mean[0], mean[1], invstd,
                        plan, training, momentum, cumulative, eps, slope, backend)
    else:
        mean, invstd = x3.new_empty((0,), dtype=torch.float32), x3.new_empty((0,), dtype=torch.float32)
        _launch_forward(x3, y3, weight, bias, running_mean, running_var, None, None, None, None, plan, training,
                        momentum, cumulative, eps, slope, backend)
    return y3, mean, invstd


def _launch_forward(x3, y3, weight, bias, running_mean, running_var, num_batches_tracked, mean, mean_residual, invstd,
                    plan: BatchNormPlan, training: bool, momentum: float, cumulative: bool, eps: float, slope: float,
                    backend: str) -> None:
    """The forward's launches into y3 and, in training, the fp32 [C] ``mean``,
    ``mean_residual`` and ``invstd`` (the running statistics updated in place). x3 and y3:
    (N, C, *) in ``plan``'s geometry."""
    if training:
        partials = _launch.output(x3, (plan.splits, 3, plan.shape[1]), torch.float32)
        _launcher(backend, "batch_norm_forward_train")(
            x3, y3, weight, bias, running_mean, running_var, num_batches_tracked, mean, invstd, partials,
            plan=plan, momentum=momentum, cumulative=cumulative, eps=eps, slope=slope, mean_residual=mean_residual,
        )
    else:
        _launcher(backend, "batch_norm_forward_eval")(
            x3, y3, weight, bias, running_mean, running_var, plan=plan, eps=eps, slope=slope
        )


@torch.library.custom_op(
    "fastgan::batch_norm_leaky_relu", mutates_args=("running_mean", "running_var")
)
def _batch_norm_leaky_relu_op(
    x3: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    num_batches_tracked: Optional[Tensor],
    training: bool,
    momentum: float,
    cumulative: bool,
    eps: float,
    slope: float,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _forward_impl(x3, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum,
                         cumulative, eps, slope, backend)


@_batch_norm_leaky_relu_op.register_fake
def _batch_norm_leaky_relu_fake(x3, weight, bias, running_mean, running_var, num_batches_tracked, training,
                                momentum, cumulative, eps, slope, backend):
    mean_shape, invstd_shape = ((2, x3.shape[1]), (x3.shape[1],)) if training else ((0,), (0,))
    return (torch.empty_like(x3), x3.new_empty(mean_shape, dtype=torch.float32),
            x3.new_empty(invstd_shape, dtype=torch.float32))


def _backward_impl(grad_out3, x3, weight, bias, mean, stat, training: bool, stat_is_invstd: bool, eps: float,
                   slope: float, need_x: bool, need_weight: bool, need_bias: bool, backend: str):
    """(grad_x, grad_weight, grad_bias), empty where not wanted. ``mean``: the forward's saved
    (mean, residual) pair fp32 [2, C] (training), or the running mean [C] (eval)."""
    channels = x3.shape[1]
    mean, mean_residual = mean.unbind(0) if mean.dim() == 2 else (mean, None)
    grad_out3 = _in_layout_of(grad_out3, x3)
    grad_x = _launch.output_like(x3) if need_x else None
    grad_weight = _launch.output(weight, (channels,)) if need_weight else None
    grad_bias = _launch.output(bias, (channels,)) if need_bias else None
    plan = _plan(x3, grad_x, grad_out3)
    _launch_backward(grad_out3, x3, weight, bias, mean, mean_residual, stat, grad_x, grad_weight, grad_bias, plan,
                     training, stat_is_invstd, eps, slope, backend)
    # Absent gradients are distinct empty tensors: custom-op outputs may not alias each other.
    return tuple(g if g is not None else x3.new_empty((0,)) for g in (grad_x, grad_weight, grad_bias))


def _launch_backward(grad_out3, x3, weight, bias, mean, mean_residual, stat, grad_x, grad_weight, grad_bias,
                     plan: BatchNormPlan, training: bool, stat_is_invstd: bool, eps: float, slope: float,
                     backend: str) -> None:
    """The backward's launches into whichever of grad_x, grad_weight, grad_bias is not None;
    grad_out3 is in x3's layout or grad_x's (``_in_layout_of``), and ``plan`` describes all
    three ((N, C, *) tensors in its geometry)."""
    channels = plan.shape[1]
    partials = _launch.output(x3, (plan.splits, 4, channels), torch.float32)  # sums and their rounding errors
    coefficients = _launch.output(x3, (2, channels), torch.float32) if training else None
    _launcher(backend, "batch_norm_backward")(
        grad_out3, x3, weight, bias, mean, stat, grad_x, grad_weight, grad_bias, partials, coefficients,
        plan=plan, training=training, stat_is_invstd=stat_is_invstd, eps=eps, slope=slope, mean_residual=mean_residual,
    )


@torch.library.custom_op("fastgan::batch_norm_leaky_relu_backward", mutates_args=())
def _batch_norm_leaky_relu_backward_op(
    grad_out3: Tensor,
    x3: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    mean: Tensor,
    stat: Tensor,
    training: bool,
    stat_is_invstd: bool,
    eps: float,
    slope: float,
    need_x: bool,
    need_weight: bool,
    need_bias: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _backward_impl(grad_out3, x3, weight, bias, mean, stat, training, stat_is_invstd, eps, slope, need_x,
                          need_weight, need_bias, backend)


@_batch_norm_leaky_relu_backward_op.register_fake
def _batch_norm_leaky_relu_backward_fake(grad_out3, x3, weight, bias, mean, stat, training, stat_is_invstd, eps,
                                         slope, need_x, need_weight, need_bias, backend):
    channels = x3.shape[1]
    return (
        torch.empty_like(x3) if need_x else x3.new_empty((0,)),
        weight.new_empty((channels,)) if need_weight else x3.new_empty((0,)),
        bias.new_empty((channels,)) if need_bias else x3.new_empty((0,)),
    )


def _setup_context(ctx, inputs, output):
    x3, weight, bias, running_mean, running_var, _, training, _, _, eps, slope, backend = inputs
    _, mean, invstd = output
    ctx.mark_non_differentiable(mean, invstd)
    ctx.set_materialize_grads(False)
    if training:
        ctx.save_for_backward(x3, weight, bias, mean, invstd)
    else:
        ctx.save_for_backward(x3, weight, bias, running_mean, running_var)
    ctx.training, ctx.eps, ctx.slope, ctx.backend = training, eps, slope, backend


def _block_grads(grad_out3, x3, weight, bias, mean, stat, training: bool, eps: float, slope: float, backend: str,
                 wanted) -> tuple:
    """(grad_x3, grad_weight, grad_bias), None where not ``wanted``, from what the forward saved
    (``mean``, ``stat``: the fp32 (mean, residual) pair and invstd in training, the running
    statistics in eval): the backward of both kernel-path Functions (the eager one's only when
    traced or differentiated again)."""
    need_x, need_weight, need_bias = wanted
    if torch.is_grad_enabled():
        # Second order (e.g. an R1 penalty): recompute the forward differentiably from x.
        running = (None, None) if training else (mean, stat)
        return _differentiable_backward(grad_out3, x3, weight, bias, *running, eps, slope, wanted)
    # Traced (torch.compile): the registered backward op; eager: its implementation directly,
    # as the forward does (the custom-op dispatcher costs tens of µs per call).
    backward = _batch_norm_leaky_relu_backward_op if torch.compiler.is_compiling() else _backward_impl
    outputs = backward(grad_out3, x3, weight, bias, mean, stat, training, training, eps, slope,
                       need_x, need_weight and weight is not None, need_bias and bias is not None, backend)
    return tuple(g if w else None for g, w in zip(outputs, wanted))


def _backward(ctx, grad_out3, _grad_mean, _grad_invstd):
    if grad_out3 is None:
        return (None,) * 12
    grads = _block_grads(grad_out3, *ctx.saved_tensors, ctx.training, ctx.eps, ctx.slope, ctx.backend,
                         ctx.needs_input_grad[:3])
    return grads + (None,) * 9


def _differentiable_backward(grad_out3, x3, weight, bias, running_mean, running_var, eps, slope, wanted, group=None):
    """Gradients of the forward recomputed in differentiable PyTorch (batch statistics when
    ``running_mean`` is None, over ``group`` when given), with ``create_graph`` so they can be
    differentiated again."""
    with torch.enable_grad():
        inputs = [t if t is None or t.requires_grad else t.detach().requires_grad_(w)
                  for t, w in zip((x3, weight, bias), wanted)]
        x32 = inputs[0].to(_compute_dtype(x3.dtype))
        mean_low = None
        if running_mean is None and group is not None:
            mean, mean_low, var, _ = _global_batch_statistics(x32, group)
        elif running_mean is None:
            mean, var = _batch_statistics(x32)
        else:
            mean, var = running_mean.to(x32.dtype), running_var.to(x32.dtype)
        y = _normalise_activate(x32, inputs[1], inputs[2], mean, var, eps, slope, mean_low)
        targets = [t for t, w in zip(inputs, wanted) if w and t is not None]
        found = iter(torch.autograd.grad(y, targets, grad_out3.to(y.dtype), create_graph=True))
    return tuple(next(found).to(t.dtype) if w and t is not None else None for t, w in zip(inputs, wanted))


# --------------------------------------------------------------------------------------
# Synchronised kernel path: the kernels' stages with one collective between them
# --------------------------------------------------------------------------------------


# Each device's statistics row: (count, mean, M2, the mean's float32 rounding residual), so
# that the merged mean is as exact as one device's.
_DEVICE_ROW = 4


def _sync_forward_impl(x3, weight, bias, running_mean, running_var, num_batches_tracked, momentum: float,
                       cumulative: bool, eps: float, slope: float, backend: str, group):
    """Training forward over the batch concatenated across ``group``; returns y3, the global
    mean as an fp32 [2, C] pair (float32 mean, its rounding residual), invstd (fp32 [C]) and
    the global count P per channel (fp32 [C], on the device)."""
    channels = x3.shape[1]
    y3 = _launch.output_like(x3)
    plan = _plan(x3, y3)
    partials = x3.new_empty((plan.splits, 3, channels), dtype=torch.float32)
    local = x3.new_empty((1, _DEVICE_ROW, channels), dtype=torch.float32)
    _launcher(backend, "batch_norm_statistics")(x3, partials, local[0], plan=plan)
    gathered = x3.new_empty((dist.get_world_size(group), _DEVICE_ROW, channels), dtype=torch.float32)
    all_gather_into(gathered, local, group)
    mean = _launch.output(x3, (2, channels), torch.float32)
    invstd = _launch.output(x3, (channels,), torch.float32)
    _launcher(backend, "batch_norm_forward_from_statistics")(
        x3, y3, weight, bias, running_mean, running_var, num_batches_tracked, mean[0], invstd, gathered,
        plan=plan, momentum=momentum, cumulative=cumulative, eps=eps, slope=slope, mean_residual=mean[1],
    )
    return y3, mean, invstd, gathered[:, 0].sum(0)


def _sync_backward_impl(grad_out3, x3, weight, bias, mean, invstd, count, eps: float, slope: float, need_x: bool,
                        need_weight: bool, need_bias: bool, backend: str, group):
    """(grad_x or None, this process's grad_weight, grad_bias) with the (Σdz, Σdz·x̂) sums
    all-reduced over ``group``; the all-reduce runs even when grad_x is not wanted here, since
    the other processes' input gradients need this process's sums."""
    channels = x3.shape[1]
    mean, mean_residual = mean.unbind(0)  # the forward's (float32 mean, rounding residual)
    grad_out3 = _in_layout_of(grad_out3, x3)
    grad_x = _launch.output_like(x3) if need_x else None
    grad_weight = _launch.output(weight, (channels,)) if need_weight else None
    grad_bias = _launch.output(bias, (channels,)) if need_bias else None
    plan = _plan(x3, grad_x, grad_out3)
    partials = x3.new_empty((plan.splits, 4, channels), dtype=torch.float32)  # sums and their rounding errors
    sums = x3.new_empty((2, channels), dtype=torch.float32)
    _launcher(backend, "batch_norm_backward_sums")(
        grad_out3, x3, weight, bias, mean, invstd, grad_weight, grad_bias, partials, sums, plan=plan, eps=eps,
        slope=slope, mean_residual=mean_residual,
    )
    all_reduce_sum(sums, group)
    if grad_x is not None:
        coefficients = sums / count  # Σdz/P and Σdz·x̂/P over the global batch
        _launcher(backend, "batch_norm_backward_input")(
            grad_out3, x3, grad_x, weight, bias, mean, invstd, coefficients, plan=plan, eps=eps, slope=slope,
            mean_residual=mean_residual,
        )
    return grad_x, grad_weight, grad_bias


def _resolve_group(group_name: str):
    return dist.distributed_c10d._resolve_process_group(group_name)


# Custom ops take no process-group objects: the group travels by its registered name.
@torch.library.custom_op("fastgan::sync_batch_norm_leaky_relu", mutates_args=("running_mean", "running_var"))
def _sync_batch_norm_leaky_relu_op(
    x3: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    num_batches_tracked: Optional[Tensor],
    momentum: float,
    cumulative: bool,
    eps: float,
    slope: float,
    backend: str,
    group_name: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _sync_forward_impl(x3, weight, bias, running_mean, running_var, num_batches_tracked, momentum, cumulative,
                              eps, slope, backend, _resolve_group(group_name))


@_sync_batch_norm_leaky_relu_op.register_fake
def _sync_batch_norm_leaky_relu_fake(x3, weight, bias, running_mean, running_var, num_batches_tracked, momentum,
                                     cumulative, eps, slope, backend, group_name):
    channels = x3.shape[1]
    return (torch.empty_like(x3), x3.new_empty((2, channels), dtype=torch.float32),
            *(x3.new_empty((channels,), dtype=torch.float32) for _ in range(2)))


@torch.library.custom_op("fastgan::sync_batch_norm_leaky_relu_backward", mutates_args=())
def _sync_batch_norm_leaky_relu_backward_op(
    grad_out3: Tensor,
    x3: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    mean: Tensor,
    invstd: Tensor,
    count: Tensor,
    eps: float,
    slope: float,
    need_x: bool,
    need_weight: bool,
    need_bias: bool,
    backend: str,
    group_name: str,
) -> tuple[Tensor, Tensor, Tensor]:
    grads = _sync_backward_impl(grad_out3, x3, weight, bias, mean, invstd, count, eps, slope, need_x, need_weight,
                                need_bias, backend, _resolve_group(group_name))
    return tuple(g if g is not None else x3.new_empty((0,)) for g in grads)


@_sync_batch_norm_leaky_relu_backward_op.register_fake
def _sync_batch_norm_leaky_relu_backward_fake(grad_out3, x3, weight, bias, mean, invstd, count, eps, slope, need_x,
                                              need_weight, need_bias, backend, group_name):
    return _batch_norm_leaky_relu_backward_fake(grad_out3, x3, weight, bias, mean, invstd, True, True, eps, slope,
                                                need_x, need_weight, need_bias, backend)


class _SyncBatchNormLeakyReLUFunction(torch.autograd.Function):
    """Autograd for the synchronised kernel path (training only): one all-gather in the
    forward, one all-reduce in the backward; under ``create_graph`` the backward is recomputed
    through the differentiable reference, so second-order gradients stay exact. As in
    :class:`_BatchNormLeakyReLUFunction`, torch.compile traces the registered custom ops."""

    @staticmethod
    def forward(ctx, x3, weight, bias, running_mean, running_var, num_batches_tracked, momentum, cumulative, eps, slope,
                backend, group_name):
        inputs = (x3, weight, bias, running_mean, running_var, num_batches_tracked, momentum, cumulative, eps, slope,
                  backend)
        if torch.compiler.is_compiling():
            y3, mean, invstd, count = _sync_batch_norm_leaky_relu_op(*inputs, group_name)
        else:
            y3, mean, invstd, count = _sync_forward_impl(*inputs, _resolve_group(group_name))
        ctx.mark_non_differentiable(mean, invstd, count)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x3, weight, bias, mean, invstd, count)
        ctx.eps, ctx.slope, ctx.backend, ctx.group_name = eps, slope, backend, group_name
        return y3, mean, invstd, count

    @staticmethod
    def backward(ctx, grad_out3, _grad_mean, _grad_invstd, _grad_count):
        x3, weight, bias, mean, invstd, count = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        need_weight, need_bias = need_weight and weight is not None, need_bias and bias is not None
        if grad_out3 is None:  # every process must still join the all-reduce
            grad_out3 = torch.zeros_like(x3)
        if torch.is_grad_enabled():
            grads = _differentiable_backward(grad_out3, x3, weight, bias, None, None, ctx.eps, ctx.slope,
                                             (need_x, need_weight, need_bias), group=_resolve_group(ctx.group_name))
        else:
            outputs = _sync_batch_norm_leaky_relu_backward_op(
                _in_layout_of(grad_out3, x3), x3, weight, bias, mean, invstd, count, ctx.eps, ctx.slope, need_x, need_weight, need_bias,
                ctx.backend, ctx.group_name,
            )
            grads = tuple(g if wanted else None for g, wanted in zip(outputs, (need_x, need_weight, need_bias)))
        return grads + (None,) * 9


class _BatchNormLeakyReLUFunction(torch.autograd.Function):
    """Autograd for the kernel path. The forward op mutates the running statistics, and
    torch.library cannot attach autograd to a mutating op, so the autograd lives here: under
    torch.compile the forward and backward are the registered custom ops (traced through this
    Function), in eager the same implementations are called directly."""

    @staticmethod
    def forward(ctx, *inputs):
        if torch.compiler.is_compiling():
            output = _batch_norm_leaky_relu_op(*inputs)
        else:
            output = _forward_impl(*inputs)
        _setup_context(ctx, inputs, output)
        return output

    backward = staticmethod(_backward)


@functools.lru_cache(maxsize=1024)
def _eager_plan(shape, stride, device) -> BatchNormPlan:
    """The plan of an (N, C, *) input of this shape and strides whose spatial dimensions merge,
    with y and grad_x allocated like it (as ``empty_like`` does) and grad_out in its layout:
    the one plan of the forward's and the backward's launches (see
    :class:`_EagerBatchNormLeakyReLUFunction` for grad_out in another layout)."""
    shape3 = (shape[0], shape[1], math.prod(shape[2:]))
    x = torch.empty_strided(shape, stride, device="meta")
    x_strides = x.view(shape3).stride()
    return _planned(shape3, x_strides, torch.empty_like(x).view(shape3).stride(), x_strides, device)


class _EagerBatchNormLeakyReLUFunction(torch.autograd.Function):
    """The kernel path in eager mode, unsynchronised: :class:`_BatchNormLeakyReLUFunction`'s
    launches with less host time per call (what decides a small block's speed). It hands the
    launchers x, y and the gradients in their own (N, C, *) shape with the plan's (N, C, S)
    geometry, so no view is made per call (each costs about a microsecond, more for a tensor
    that requires grad); returns y alone (the statistics are saved, not returned); and takes
    the constants and the plan as one tuple (``apply`` pays per argument)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, num_batches_tracked, constants):
        training, momentum, cumulative, eps, slope, backend, plan = constants
        y = _launch.output_like(x)
        if training:
            channels = plan.shape[1]
            mean = _launch.output(x, (channels,), torch.float32)
            mean_residual = _launch.output(x, (channels,), torch.float32)
            invstd = _launch.output(x, (channels,), torch.float32)
            _launch_forward(x, y, weight, bias, running_mean, running_var, num_batches_tracked, mean, mean_residual,
                            invstd, plan, training, momentum, cumulative, eps, slope, backend)
            ctx.save_for_backward(x, weight, bias, mean, invstd, mean_residual)
        else:
            _launch_forward(x, y, weight, bias, running_mean, running_var, None, None, None, None, plan, training,
                            momentum, cumulative, eps, slope, backend)
            ctx.save_for_backward(x, weight, bias, running_mean, running_var, None)
        ctx.constants = constants
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, stat, mean_residual = ctx.saved_tensors
        training, _, _, eps, slope, backend, plan = ctx.constants
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        # In x's layout (the plan's), or else copied into memory allocated like x (its outputs').
        laid_out = _in_layout_of(grad_out, x)
        if laid_out is not grad_out:
            plan = plan._replace(grad_strides=plan.out_strides)
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            # Second order, or traced (compiled autograd): _BatchNormLeakyReLUFunction's backward.
            mean_pair = torch.stack((mean, mean_residual)) if training else mean
            grad_x3, grad_weight, grad_bias = _block_grads(laid_out.view(plan.shape), x.view(plan.shape), weight, bias,
                                                           mean_pair, stat, training, eps, slope, backend,
                                                           (need_x, need_weight, need_bias))
            return (grad_x3.view(x.shape) if grad_x3 is not None else None), grad_weight, grad_bias, None, None, None, None
        channels = plan.shape[1]
        grad_x = _launch.output_like(x) if need_x else None
        grad_weight = _launch.output(weight, (channels,)) if need_weight and weight is not None else None
        grad_bias = _launch.output(bias, (channels,)) if need_bias and bias is not None else None
        _launch_backward(laid_out, x, weight, bias, mean, mean_residual, stat, grad_x, grad_weight, grad_bias, plan,
                         training, training, eps, slope, backend)
        return grad_x, grad_weight, grad_bias, None, None, None, None


def batch_norm_leaky_relu(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    training: bool,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    negative_slope: float = 0.01,
    *,
    num_batches_tracked: Optional[Tensor] = None,
    process_group=None,
    backend: Optional[str] = None,
) -> Tensor:
    """``F.leaky_relu(F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps),
    negative_slope)`` fused.

    Args:
        x: (N, C), (N, C, L), (N, C, H, W) or any (N, C, *); contiguous or channels_last
            (other layouts are copied once, with a warning). float32/float16/bfloat16 on the
            kernel backends (statistics in float32), any float dtype on ``torch``.
        weight, bias: (C,) affine parameters, or None.
        running_mean, running_var: (C,) buffers updated in place when ``training``; used to
            normalise when not. Both None: batch statistics only (needs ``training``).
        training: normalise with batch statistics (and update the running ones).
        momentum: running-statistics factor; None for the cumulative average, which needs
            ``num_batches_tracked``.
        eps: added to the variance. negative_slope: LeakyReLU slope (0 is ReLU).
        num_batches_tracked: the module's 1-element counter; incremented on the device in
            training (as ``nn.BatchNorm`` does), read by the kernels when ``momentum`` is None.
        process_group: a ``torch.distributed.ProcessGroup`` (e.g. ``torch.distributed.group.WORLD``)
            to normalise with the statistics of the batch concatenated over its processes, as
            ``nn.SyncBatchNorm`` does (per-process batch sizes may differ, down to 0); one
            all-gather in the forward and one all-reduce in the backward, only in training and
            only for a group of more than one process. None: this process's batch alone.
            ``weight``/``bias`` gradients are this process's share, as in ``nn.SyncBatchNorm``.
        backend: ``"cuda"``, ``"triton"``, ``"torch"`` or ``"auto"``.

    Returns:
        y, shaped like ``x`` in its memory format and dtype.
    """
    group = None if process_group is None else _synchronising_group(process_group, training)
    # Traced (torch.compile): validated in full, so no guard on the cache's contents joins the graph.
    key = _arguments_key(x, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps,
                         negative_slope) if group is None and not torch.compiler.is_compiling() else None
    checked = _CHECKED_ARGUMENTS.get(key) if key is not None else None
    if checked is None:
        _check_args(x, weight, bias, running_mean, running_var, training, momentum, eps, negative_slope,
                    num_batches_tracked, synchronised=group is not None)
        # The kernels take float32/float16/bfloat16 tensors and parameters; anything else
        # (float64 buffers, say) selects like a float64 input does: the torch backend.
        unsupported = next((t.dtype for t in (x, weight, bias, running_mean, running_var)
                            if t is not None and t.dtype not in _backend.KERNEL_DTYPES), None)
        # [dtype selecting the backend, spatial dims merge, native layout, the eager kernel
        # path's (backend, constants and plan) once a call has taken it]
        checked = [unsupported if unsupported is not None else x.dtype, _spatial_dims_merge(x),
                   _native_layout_of_call(x, weight, bias, running_mean, running_var, training, momentum), None]
        if key is not None:
            _CHECKED_ARGUMENTS.store(key, checked)
    selecting_dtype, spatial_dims_merge, native_layout, eager_call = checked
    name = _backend.select_backend("batch_norm_leaky_relu", backend, x.device, selecting_dtype)
    if eager_call is not None and eager_call[0] == name:
        # These arguments took the eager kernel path on this backend before (their layout is
        # the plan's, the per-channel vectors contiguous): straight to it (host time is the
        # cost of a small block).
        if training:
            _advance(num_batches_tracked, running_mean)
        constants = eager_call[1]
        return _EagerBatchNormLeakyReLUFunction.apply(x, weight, bias, running_mean, running_var,
                                                      num_batches_tracked if constants[2] else None, constants)
    # An empty synchronised batch still runs the kernel path: its collectives must match the
    # other processes' (the reference's differ in shape).
    if (name == "torch" and group is not None) or (x.numel() == 0 and group is None):
        return batch_norm_leaky_relu_reference(
            x, weight, bias, running_mean, running_var, training, momentum, eps, negative_slope,
            num_batches_tracked=num_batches_tracked, process_group=process_group,
        )
    if name == "torch" and torch.compiler.is_compiling():
        # Traced: the reference's PyTorch ops, which the compiler fuses (the eager forms below ask
        # the host for thread counts and call the native kernels by address).
        return batch_norm_leaky_relu_reference(x, weight, bias, running_mean, running_var, training, momentum, eps,
                                               negative_slope, num_batches_tracked=num_batches_tracked)
    if name == "torch":
        if training:
            _advance(num_batches_tracked, running_mean)
        cpu_kernel = _cpu_kernel_applies(x, weight, bias, running_mean, running_var, native_layout)
        if cpu_kernel and not (torch.is_grad_enabled() and any(
                t is not None and t.requires_grad for t in (x, weight, bias))):
            return _cpu_kernel_forward(x, weight, bias, running_mean, running_var, training, momentum, float(eps),
                                       float(negative_slope), cpu_kernel)[0]
        if not cpu_kernel and _eager_ops_suffice(x, weight, bias, running_mean, running_var, training, momentum,
                                                 negative_slope):
            return _eager_batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, training, momentum,
                                                float(eps), float(negative_slope))
        return _NativeBatchNormLeakyReLUFunction.apply(x, weight, bias, running_mean, running_var, num_batches_tracked,
                                                       (training, momentum, float(eps), float(negative_slope),
                                                        cpu_kernel))
    # The kernels index the per-channel vectors as contiguous: copy strided weight/bias (the
    # copy stays in the autograd graph); running statistics are updated in place, so refuse.
    given_weight, given_bias = weight, bias
    weight = weight.contiguous() if weight is not None else None
    bias = bias.contiguous() if bias is not None else None
    for value, label in ((running_mean, "running_mean"), (running_var, "running_var")):
        if value is not None and not value.is_contiguous():
            raise ValueError(f"{label} must be contiguous: the kernels update it in place")
    if not spatial_dims_merge:
        _backend.warn_once(
            f"batch_norm_leaky_relu:layout:{x.stride()}",
            "fastgan.ops.batch_norm_leaky_relu: the input is neither contiguous nor channels_last; "
            "copying it to contiguous memory first",
        )
        x = x.contiguous()
    if training:
        _advance(num_batches_tracked, running_mean)
    cumulative = training and running_mean is not None and momentum is None
    statistics = (running_mean, running_var, num_batches_tracked if cumulative else None)
    constants = (float(momentum) if momentum is not None else 0.0, cumulative, float(eps), float(negative_slope), name)
    if group is None and not torch.compiler.is_compiling():
        eager_constants = (training, *constants, _eager_plan(x.shape, x.stride(), x.device))
        if key is not None and spatial_dims_merge and weight is given_weight and bias is given_bias:
            # Nothing was copied: the next call with these arguments can go straight to the Function.
            checked[3] = (name, eager_constants)
        return _EagerBatchNormLeakyReLUFunction.apply(x, weight, bias, *statistics, eager_constants)
    x3 = _three_d(x)
    if group is not None:
        y3 = _SyncBatchNormLeakyReLUFunction.apply(x3, weight, bias, *statistics, *constants, group.group_name)[0]
    else:
        y3 = _BatchNormLeakyReLUFunction.apply(x3, weight, bias, *statistics, training, *constants)[0]
    return y3.view(x.shape) if y3.shape != x.shape else y3
