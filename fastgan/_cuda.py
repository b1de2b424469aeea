"""Torch-facing side of the CUDA extension ``fastgan._C``.

The extension sees only raw addresses, dtype codes, sizes/strides and a stream handle;
these launchers turn prepared tensors into those arguments. They mirror the Triton
launchers in ``fastgan.kernels`` argument for argument, so the op layer calls either.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastgan import _backend, _indexing

# Keep in sync with DtypeCode in csrc/common.h.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_NO_STRIDES = (0, 0, 0, 0)


def dtype_code(tensor: Optional[Tensor]) -> int:
    return 0 if tensor is None else DTYPE_CODES[tensor.dtype]


def address(tensor: Optional[Tensor]) -> int:
    return 0 if tensor is None else tensor.data_ptr()


# The current stream's raw handle without building a torch.cuda.Stream object (what compiled
# code launches with; a microsecond or more per launch through torch.cuda.current_stream).
_current_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def stream_handle(tensor: Tensor) -> int:
    """The current CUDA stream of ``tensor``'s device, as the integer handle the kernels take.

    The extension launches on the calling thread's current device, so a tensor on another
    device is refused rather than launched into the wrong context. CPU tensors (the emulated
    build, ``FASTGAN_CUDA_EMULATE=1``) have no stream: 0.
    """
    if not tensor.is_cuda:
        return 0
    index, current = tensor.get_device(), torch.cuda.current_device()
    if index != current:
        raise RuntimeError(
            f"fastgan: the cuda backend launches on the current device (cuda:{current}) but the tensor is on "
            f"{tensor.device}; wrap the call in `with torch.cuda.device({index}):`"
        )
    if _current_raw_stream is not None:
        return _current_raw_stream(index)
    return torch.cuda.current_stream(tensor.device).cuda_stream


def launch_bce_with_logits_forward(
    input, target, weight, pos_weight, loss, partials, grad, target_value, grad_scale, loss_scale, reduce, plan, launch
):
    """CUDA twin of ``fastgan.kernels.bce.launch_bce_with_logits_forward``.

    The kernels read every per-element operand in one dtype; mixed operands are cast (exactly)
    to the loss dtype, their promotion, and a gradient of another dtype is written through a
    buffer of that dtype, rounded once."""
    common = loss.dtype
    # Spelled out rather than any() over a generator: a microsecond of a 256-logit call.
    if (input.dtype != common or (target is not None and target.dtype != common)
            or (weight is not None and weight.dtype != common)
            or (pos_weight is not None and pos_weight.dtype != common)):
        operands = (input, target, weight, pos_weight)
        # A cast copy of a broadcast (expanded) operand is dense: plan the new strides.
        input, target, weight, pos_weight = (t if t is None else t.to(common) for t in operands)
        plan = _indexing.plan(input.shape, [input] + [input if t is None else t for t in (target, weight, pos_weight)])
        if plan is None:  # more than 4 dimensions that do not merge: dense copies always plan
            input, target, weight, pos_weight = (t if t is None else t.contiguous() for t in (input, target, weight,
                                                                                              pos_weight))
            plan = _indexing.plan(input.shape, [input] + [input if t is None else t for t in (target, weight, pos_weight)])
    grad_buffer = grad if grad is None or grad.dtype == common else torch.empty_like(grad, dtype=common)
    in_s, tg_s, w_s, pw_s = plan.strides
    _backend.extension().bce_with_logits_forward(
        address(input), dtype_code(input), in_s,
        address(target), dtype_code(target), tg_s if target is not None else _NO_STRIDES,
        address(weight), dtype_code(weight), w_s if weight is not None else _NO_STRIDES,
        address(pos_weight), dtype_code(pos_weight), pw_s if pos_weight is not None else _NO_STRIDES,
        address(loss), dtype_code(loss), address(partials), address(grad_buffer), dtype_code(grad_buffer),
        target_value, grad_scale, loss_scale, plan.numel, plan.sizes, plan.contiguous, reduce,
        launch.num_programs, stream_handle(input),
    )
    if grad_buffer is not grad:
        grad.copy_(grad_buffer)


def launch_gan_bce_forward(
    real, fake, d_loss, g_loss, partials, grad_real, grad_fake_d, grad_fake_g,
    real_target, fake_target, inv_n_real, inv_n_fake, real_launch, fake_launch, needs_int64
):
    """CUDA twin of ``fastgan.kernels.bce.launch_gan_bce_forward`` (always 64-bit indexing)."""
    codes = DTYPE_CODES
    # Addresses and codes written out rather than through address()/dtype_code(): a function
    # call each is host time a 256-logit loss cannot spare (as in the batch-norm launchers).
    _backend.extension().gan_bce_forward(
        real.data_ptr(), codes[real.dtype], real.numel(), real.stride(0),
        fake.data_ptr(), codes[fake.dtype], fake.numel(), fake.stride(0),
        d_loss.data_ptr(), codes[d_loss.dtype], g_loss.data_ptr(), codes[g_loss.dtype],
        0 if partials is None else partials.data_ptr(),
        0 if grad_real is None else grad_real.data_ptr(), 0 if grad_fake_d is None else grad_fake_d.data_ptr(),
        0 if grad_fake_g is None else grad_fake_g.data_ptr(),
        real_target, fake_target, inv_n_real, inv_n_fake, real_launch.num_programs, stream_handle(real),
    )


def _renyi_row_geometry(rows: Tensor) -> tuple[int, int, int, int]:
    """(rows, n, row stride, column stride) of a (rows, n) view, or of a 1-d tensor taken as one row."""
    if rows.dim() == 1:
        return 1, rows.shape[0], 0, rows.stride(0)
    num_rows, n = rows.shape
    return num_rows, n, rows.stride(0), rows.stride(1)


def launch_renyi_forward(rows, out, shift, expsum, partials, beta, inv_beta, log_n, splits, cols_per_split,
                         needs_int64, block):
    """CUDA twin of ``fastgan.kernels.renyi.launch_renyi_forward`` (always 64-bit indexing)."""
    codes = DTYPE_CODES
    num_rows, n, row_stride, col_stride = _renyi_row_geometry(rows)
    _backend.extension().renyi_forward(
        rows.data_ptr(), codes[rows.dtype], num_rows, n, row_stride, col_stride,
        out.data_ptr(), codes[out.dtype], shift.data_ptr(), expsum.data_ptr(),
        0 if partials is None else partials.data_ptr(),
        beta, inv_beta, log_n, cols_per_split, splits, stream_handle(rows),
    )


def launch_renyi_backward(rows, grad_out, shift, expsum, grad, beta, needs_int64, block):
    """CUDA twin of ``fastgan.kernels.renyi.launch_renyi_backward`` (always 64-bit indexing)."""
    codes = DTYPE_CODES
    num_rows, n, row_stride, col_stride = _renyi_row_geometry(rows)
    _backend.extension().renyi_backward(
        rows.data_ptr(), codes[rows.dtype], num_rows, n, row_stride, col_stride,
        grad_out.data_ptr(), codes[grad_out.dtype], grad_out.stride(0) if grad_out.dim() else 0,
        shift.data_ptr(), expsum.data_ptr(), grad.data_ptr(), codes[grad.dtype], beta, stream_handle(rows),
    )


_NO_STRIDES_3D = (0, 0, 0)

# The batch-norm bindings take 11-34 arguments, passed positionally in the order of their
# py::arg lists in csrc/bindings.cpp (keywords cost pybind11 a name match per argument on every
# call: 2.2 µs against 0.6 for the forward's 29); the emulated cuda tests run every launcher.
# Sizes and strides come from the plan (fastgan.ops.batch_norm.BatchNormPlan): the tensors are
# (N, C, *) in its geometry, and the op layer has put the incoming gradient in its layout.


def launch_batch_norm_forward_train(x, y, weight, bias, running_mean, running_var, num_batches_tracked, mean, invstd,
                                    partials, *, plan, momentum, cumulative, eps, slope, mean_residual=None):
    """CUDA twin of ``fastgan.kernels.batch_norm.launch_batch_norm_forward_train`` (always 64-bit offsets)."""
    n, c, s = plan.shape
    codes = DTYPE_CODES
    # The optional operands' addresses and codes written out, not through address()/dtype_code():
    # 0.15-0.35 µs less per launch, about 0.5 µs of a block's fwd+bwd (the two launchers
    # a training step of every block makes; host time is the cost of a small block).
    _backend.extension().batch_norm_forward_train(
        x.data_ptr(), codes[x.dtype], plan.x_strides, y.data_ptr(), codes[y.dtype], plan.out_strides, n, c, s,
        0 if weight is None else weight.data_ptr(), 0 if weight is None else codes[weight.dtype],
        0 if bias is None else bias.data_ptr(), 0 if bias is None else codes[bias.dtype],
        0 if running_mean is None else running_mean.data_ptr(), 0 if running_mean is None else codes[running_mean.dtype],
        0 if running_var is None else running_var.data_ptr(), 0 if running_var is None else codes[running_var.dtype],
        num_batches_tracked.data_ptr() if cumulative and num_batches_tracked is not None else 0,
        mean.data_ptr(), invstd.data_ptr(), 0 if mean_residual is None else mean_residual.data_ptr(),
        partials.data_ptr(), plan.splits, plan.positions_per_split,
        float(momentum) if momentum is not None else 0.0, bool(cumulative), float(eps), float(slope), stream_handle(x),
    )


def launch_batch_norm_forward_eval(x, y, weight, bias, running_mean, running_var, *, plan, eps, slope):
    """CUDA twin of ``fastgan.kernels.batch_norm.launch_batch_norm_forward_eval`` (always 64-bit offsets)."""
    n, c, s = plan.shape
    _backend.extension().batch_norm_forward_eval(
        x.data_ptr(), DTYPE_CODES[x.dtype], plan.x_strides, y.data_ptr(), DTYPE_CODES[y.dtype], plan.out_strides, n, c, s,
        address(weight), dtype_code(weight), address(bias), dtype_code(bias),
        address(running_mean), dtype_code(running_mean), address(running_var), dtype_code(running_var),
        float(eps), float(slope), stream_handle(x),
    )


def launch_batch_norm_backward(grad_out, x, weight, bias, mean, stat, grad_x, grad_weight, grad_bias, partials,
                               coefficients, *, plan, training, stat_is_invstd, eps, slope, mean_residual=None):
    """CUDA twin of ``fastgan.kernels.batch_norm.launch_batch_norm_backward`` (always 64-bit offsets).

    The reduction and finalize run when ``training`` or a parameter gradient is asked for; the
    elementwise dx pass when ``grad_x`` is given."""
    n, c, s = plan.shape
    codes = DTYPE_CODES
    # Optional operands written out, as in launch_batch_norm_forward_train.
    _backend.extension().batch_norm_backward(
        grad_out.data_ptr(), codes[grad_out.dtype], plan.grad_strides, x.data_ptr(), codes[x.dtype], plan.x_strides,
        0 if grad_x is None else grad_x.data_ptr(), 0 if grad_x is None else codes[grad_x.dtype],
        _NO_STRIDES_3D if grad_x is None else plan.out_strides, n, c, s,
        0 if weight is None else weight.data_ptr(), 0 if weight is None else codes[weight.dtype],
        0 if bias is None else bias.data_ptr(), 0 if bias is None else codes[bias.dtype],
        mean.data_ptr(), codes[mean.dtype], 0 if mean_residual is None else mean_residual.data_ptr(),
        stat.data_ptr(), codes[stat.dtype], bool(stat_is_invstd),
        0 if grad_weight is None else grad_weight.data_ptr(), 0 if grad_weight is None else codes[grad_weight.dtype],
        0 if grad_bias is None else grad_bias.data_ptr(), 0 if grad_bias is None else codes[grad_bias.dtype],
        partials.data_ptr(), 0 if coefficients is None else coefficients.data_ptr(),
        plan.splits, plan.positions_per_split, bool(training), float(eps), float(slope), stream_handle(x),
    )


def launch_batch_norm_statistics(x, partials, merged, *, plan):
    """CUDA twin of ``fastgan.kernels.batch_norm.launch_batch_norm_statistics``."""
    n, c, s = plan.shape
    _backend.extension().batch_norm_statistics(
        x.data_ptr(), DTYPE_CODES[x.dtype], plan.x_strides, n, c, s, partials.data_ptr(), merged.data_ptr(),
        plan.splits, plan.positions_per_split, stream_handle(x),
    )


def launch_batch_norm_forward_from_statistics(x, y, weight, bias, running_mean, running_var, num_batches_tracked, mean,
                                              invstd, statistics, *, plan, momentum, cumulative, eps, slope,
                                              mean_residual=None):
    """CUDA twin of ``fastgan.kernels.batch_norm.launch_batch_norm_forward_from_statistics``."""
    n, c, s = plan.shape
    _backend.extension().batch_norm_forward_from_statistics(
        x.data_ptr(), DTYPE_CODES[x.dtype], plan.x_strides, y.data_ptr(), DTYPE_CODES[y.dtype], plan.out_strides, n, c, s,
        address(weight), dtype_code(weight), address(bias), dtype_code(bias),
        address(running_mean), dtype_code(running_mean), address(running_var), dtype_code(running_var),
        address(num_batches_tracked) if cumulative else 0,
        mean.data_ptr(), invstd.data_ptr(), address(mean_residual), statistics.data_ptr(), statistics.shape[0],
        float(momentum) if momentum is not None else 0.0, bool(cumulative), float(eps), float(slope),
        stream_handle(x),
    )


def launch_batch_norm_backward_sums(grad_out, x, weight, bias, mean, invstd, grad_weight, grad_bias, partials, sums, *,
                                    plan, eps, slope, mean_residual=None):
    """CUDA twin of ``fastgan.kernels.batch_norm.launch_batch_norm_backward_sums``."""
    n, c, s = plan.shape
    _backend.extension().batch_norm_backward_sums(
        grad_out.data_ptr(), DTYPE_CODES[grad_out.dtype], plan.grad_strides,
        x.data_ptr(), DTYPE_CODES[x.dtype], plan.x_strides, n, c, s,
        address(weight), dtype_code(weight), address(bias), dtype_code(bias),
        mean.data_ptr(), address(mean_residual), invstd.data_ptr(),
        address(grad_weight), dtype_code(grad_weight), address(grad_bias), dtype_code(grad_bias),
        partials.data_ptr(), sums.data_ptr(), plan.splits, plan.positions_per_split, float(eps), float(slope),
        stream_handle(x),
    )


def launch_batch_norm_backward_input(grad_out, x, grad_x, weight, bias, mean, invstd, coefficients, *, plan, eps,
                                     slope, mean_residual=None):
    """CUDA twin of ``fastgan.kernels.batch_norm.launch_batch_norm_backward_input``."""
    n, c, s = plan.shape
    _backend.extension().batch_norm_backward_input(
        grad_out.data_ptr(), DTYPE_CODES[grad_out.dtype], plan.grad_strides,
        x.data_ptr(), DTYPE_CODES[x.dtype], plan.x_strides,
        grad_x.data_ptr(), DTYPE_CODES[grad_x.dtype], plan.out_strides, n, c, s,
        address(weight), dtype_code(weight), address(bias), dtype_code(bias),
        mean.data_ptr(), address(mean_residual), invstd.data_ptr(), coefficients.data_ptr(),
        float(eps), float(slope), stream_handle(x),
    )
