"""BCE-with-logits: the drop-in op and the fused GAN real/fake form.

The discriminator of a GAN is a classifier between data (label 1) and generated samples
(label 0); trained with BCE-with-logits, its logit estimates log p_data/p_g (at the
optimum D* = p_data / (p_data + p_g)). Per element, with logit x, target y, weight w and
positive-class weight p:

    l = w * [ (1 - y) * x - (1 + (p - 1) * y) * log_sigmoid(x) ]
    dl/dx = w * [ (1 - y) - (1 + (p - 1) * y) * sigmoid(-x) ]

Public functions: :func:`bce_with_logits` (same contract as
``torch.nn.functional.binary_cross_entropy_with_logits``) and :func:`gan_bce_losses`
(the discriminator's two BCE terms and the generator's non-saturating loss in one kernel
launch). Each picks a backend per call (see :mod:`fastgan._backend`); the references
beside them are the ``torch`` backend. On the CPU the torch backend runs PyTorch's own op,
except for contiguous float32/bfloat16 (logits, labels) of one dtype: those go to fastgan's
one-pass native CPU kernel (csrc/cpu/bce.cpp, :class:`_NativeBCEFunction`) when it is built.

Autograd. The kernels write the input gradient during the forward (scaled by 1/N for a
mean), so the backward is one multiply by the incoming gradient. Gradients for
``target``/``weight``/``pos_weight`` and second-order gradients (``create_graph=True``,
e.g. an R1 penalty) are computed from the closed-form derivatives in differentiable
PyTorch, so double backward is exact rather than an error.

Registration. The kernel paths are ``torch.library`` custom ops (``fastgan::bce_with_logits``,
``fastgan::gan_bce_losses``) with fake implementations, used under ``torch.compile``;
eager calls enter the same implementation through an ``autograd.Function`` because the
custom-op dispatcher costs several microseconds per call, which a loss over 64-1024
logits cannot afford.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastgan import _backend, _indexing, _native
from fastgan.ops import _launch
from fastgan.ops._cache import BoundedCache

REDUCTIONS = ("none", "mean", "sum")
_REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}
_NONE, _MEAN, _SUM = 0, 1, 2


class GanBCELosses(NamedTuple):
    """The two losses :func:`gan_bce_losses` returns (0-d tensors).

    ``d_loss``: mean BCE(real, real_target) + mean BCE(fake, fake_target), the discriminator loss.
    ``g_loss``: mean softplus(-fake) = mean BCE(fake, 1), the non-saturating generator loss.
    """

    d_loss: Tensor
    g_loss: Tensor


# --------------------------------------------------------------------------------------
# References (the torch backend): plain differentiable PyTorch.
# --------------------------------------------------------------------------------------


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision math runs in float32 (as the kernels do); float32/float64 as is."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _as(value, dtype: torch.dtype):
    return value.to(dtype) if isinstance(value, torch.Tensor) else value


def bce_with_logits_reference(
    input: Tensor,
    target: Tensor | float,
    weight: Optional[Tensor] = None,
    pos_weight: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """BCE-with-logits in plain PyTorch; ``target`` may be a Python float. Shapes as
    :func:`bce_with_logits`. float16/bfloat16 operands are computed in float32 and the
    result rounded once to the promoted dtype."""
    out_dtype = _result_dtype(input, *(t for t in (target, weight, pos_weight) if isinstance(t, torch.Tensor)))
    compute = _compute_dtype(out_dtype)
    x, target, weight, pos_weight = (_as(t, compute) for t in (input, target, weight, pos_weight))
    log_sigmoid = F.logsigmoid(x)
    if pos_weight is None:
        loss = (1 - target) * x - log_sigmoid
    else:
        loss = (1 - target) * x - (1 + (pos_weight - 1) * target) * log_sigmoid
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction).to(out_dtype)


def gan_bce_losses_reference(
    real_logits: Tensor, fake_logits: Tensor, real_target: float = 1.0, fake_target: float = 0.0
) -> GanBCELosses:
    """:func:`gan_bce_losses` in plain PyTorch (half precision computed in float32)."""
    d_dtype = torch.promote_types(real_logits.dtype, fake_logits.dtype)
    real = real_logits.to(_compute_dtype(d_dtype))
    fake = fake_logits.to(_compute_dtype(d_dtype))
    d_loss = bce_with_logits_reference(real, real_target) + bce_with_logits_reference(fake, fake_target)
    g_loss = -F.logsigmoid(fake_logits.to(_compute_dtype(fake_logits.dtype))).mean()
    return GanBCELosses(d_loss.to(d_dtype), g_loss.to(fake_logits.dtype))


class _GanBCELossesTorchFunction(torch.autograd.Function):
    """The torch backend's form of :func:`gan_bce_losses`: the same math as the reference in
    fewer passes and autograd nodes, so that on the CPU it is faster than eager PyTorch's
    composite of three BCE calls. The reference stays the test oracle.

    With softplus(x) = −log_sigmoid(−x), BCE(x, t) = t·softplus(−x) + (1 − t)·softplus(x): each
    mean is a sum of one-signed terms (no cancellation), and only the sums the targets need are
    taken: Σ log_sigmoid(real) and Σ softplus(fake) for the usual labels 1 and 0, and
    Σ log_sigmoid(fake) for the generator. Sums accumulate in float32 (float64 for float64)
    and are combined before one rounding to the result dtype. The backward computes sigmoid(±x)
    from the saved logits (eager saves the logits too), so nothing of size N is kept beyond them:

        d/d real = (sigmoid(real) − t_r)·ḡ_d/N_r   (−sigmoid(−real)·ḡ_d/N_r for t_r = 1, exact
                                                     where sigmoid(real) rounds to 1)
        d/d fake = (sigmoid(fake) − t_f)·ḡ_d/N_f − sigmoid(−fake)·ḡ_g/N_f
                 = sigmoid(fake)·(ḡ_d + ḡ_g)/N_f − (t_f·ḡ_d + ḡ_g)/N_f   (one sigmoid)
    """

    @staticmethod
    def forward(ctx, real: Tensor, fake: Tensor, real_target: float, fake_target: float):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(real, fake)
        ctx.real_target, ctx.fake_target = real_target, fake_target
        return _gan_torch_losses(real, fake, real_target, fake_target)

    @staticmethod
    def backward(ctx, grad_d, grad_g):
        real, fake = ctx.saved_tensors
        need_real, need_fake = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():  # create_graph: the same forms, out of place, so they are tracked
            return *_gan_closed_form_grads(real, fake, grad_d, grad_g, ctx.real_target, ctx.fake_target,
                                           need_real, need_fake), None, None
        inv_real, inv_fake = 1.0 / real.numel(), 1.0 / fake.numel()
        d_real = d_fake = None
        if need_real and grad_d is not None:
            if ctx.real_target == 1.0:
                d_real = torch.sigmoid(real.neg()).mul_(grad_d * -inv_real)
            else:
                d_real = torch.sigmoid(real).sub_(ctx.real_target).mul_(grad_d * inv_real)
        if need_fake and grad_g is not None and grad_d is None:
            d_fake = torch.sigmoid(fake.neg()).mul_(grad_g * -inv_fake)
        elif need_fake and grad_d is not None:
            weight = grad_d if grad_g is None else grad_d + grad_g
            d_fake = torch.sigmoid(fake).mul_(weight * inv_fake)
            if ctx.fake_target != 0.0:
                d_fake.sub_(grad_d, alpha=ctx.fake_target * inv_fake)
            if grad_g is not None:
                d_fake.sub_(grad_g, alpha=inv_fake)
        return d_real, d_fake, None, None


def _gan_torch_losses(real: Tensor, fake: Tensor, real_target: float, fake_target: float) -> tuple[Tensor, Tensor]:
    """(d_loss, g_loss) of :class:`_GanBCELossesTorchFunction` (no graph): the sums by the native
    BCE kernel where it applies, else by PyTorch's softplus."""
    if _native_softplus_sums_apply(real, fake):
        losses = _gan_native_losses(real, fake, real_target, fake_target)
        if losses is not None:
            return losses
    accumulate = torch.float64 if real.dtype == torch.float64 else torch.float32
    inv_real, inv_fake = 1.0 / real.numel(), 1.0 / fake.numel()
    d_loss = _log_sigmoid_sum(real, accumulate).mul_(-real_target * inv_real)
    if real_target != 1.0:
        d_loss.add_(F.softplus(real).sum(dtype=accumulate), alpha=(1.0 - real_target) * inv_real)
    g_loss = _log_sigmoid_sum(fake, accumulate)
    if fake_target != 0.0:
        d_loss.sub_(g_loss, alpha=fake_target * inv_fake)
    if fake_target != 1.0:
        d_loss.add_(F.softplus(fake).sum(dtype=accumulate), alpha=(1.0 - fake_target) * inv_fake)
    return d_loss.to(real.dtype), g_loss.mul_(-inv_fake).to(fake.dtype)


def _native_softplus_sums_apply(real: Tensor, fake: Tensor) -> bool:
    """Contiguous float32/bfloat16 CPU logits of one dtype, nothing that needs PyTorch's
    dispatch, and the native kernels built (they are loaded here: a dtype test first)."""
    return (real.dtype == fake.dtype and real.dtype in _NATIVE_DTYPE_CODES and real.device.type == "cpu"
            and fake.device.type == "cpu" and real.is_contiguous() and fake.is_contiguous()
            and not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()
            and not torch._C._has_torch_function((real, fake)) and _native.module() is not None)


def _native_softplus_sum(x: Tensor, label: float) -> float:
    """Σ BCE(x, label) for a constant label, in float64 from one read of x (csrc/cpu/bce.cpp with
    no target): label 1 gives Σ softplus(−x) = −Σ log_sigmoid(x), label 0 gives Σ softplus(x)."""
    numel = x.numel()
    return _native.module().bce_with_logits_forward(x.data_ptr(), 0, 0, 0, _NATIVE_DTYPE_CODES[x.dtype], _SUM, 1.0,
                                                    numel, _native.threads_for(numel), label)


def _gan_native_losses(real: Tensor, fake: Tensor, real_target: float, fake_target: float):
    """:func:`_gan_torch_losses` from the native kernel's float64 sums: one read of each input
    per sum and no temporaries (PyTorch's softplus writes a logit-sized buffer per sum). None
    where a sum is NaN: the kernel keeps BCE's order of terms, 0·∞ at an infinite logit with
    label 1, where softplus gives the limit, so those inputs (and NaN ones) take softplus."""
    inv_real, inv_fake = 1.0 / real.numel(), 1.0 / fake.numel()
    fake_softplus_neg = _native_softplus_sum(fake, 1.0)
    d_loss = real_target * _native_softplus_sum(real, 1.0) * inv_real
    if real_target != 1.0:
        d_loss += (1.0 - real_target) * _native_softplus_sum(real, 0.0) * inv_real
    if fake_target != 0.0:
        d_loss += fake_target * fake_softplus_neg * inv_fake
    if fake_target != 1.0:
        d_loss += (1.0 - fake_target) * _native_softplus_sum(fake, 0.0) * inv_fake
    if math.isnan(d_loss) or math.isnan(fake_softplus_neg):
        return None
    return _loss_tensor(d_loss, real.dtype), _loss_tensor(fake_softplus_neg * inv_fake, fake.dtype)


_LARGEST = {dtype: torch.finfo(dtype).max for dtype in (torch.float32, torch.bfloat16)}


def _loss_tensor(value: float, dtype: torch.dtype) -> Tensor:
    """``torch.tensor(value, dtype=dtype)``, a 0-d loss: through ``torch.scalar_tensor`` (0.9 µs
    against 1.8, host time at 256 logits; the same rounding) where ``value`` fits the dtype.
    Beyond it scalar_tensor refuses to overflow (a mean of two float32 losses near 3e38 can),
    where torch.tensor rounds to ±inf, as the PyTorch form does."""
    if -_LARGEST[dtype] <= value <= _LARGEST[dtype]:
        return torch.scalar_tensor(value, dtype=dtype)
    return torch.tensor(value, dtype=dtype)


def _log_sigmoid_sum(x: Tensor, accumulate: torch.dtype) -> Tensor:
    """Σ log_sigmoid(x) as a 0-d ``accumulate`` tensor in one pass: softplus with β = −1 is
    −softplus(−x), without the extra buffer ``F.logsigmoid`` writes on the CPU."""
    return F.softplus(x, beta=-1.0).sum(dtype=accumulate)


def _gan_closed_form_grads(real, fake, grad_d, grad_g, real_target, fake_target, need_real, need_fake):
    """(d/d real, d/d fake) of grad_d·d_loss + grad_g·g_loss in differentiable PyTorch (None
    where not needed or no incoming gradient): the second-order path of both the kernel and
    the torch backend's forms."""
    d_real = d_fake = None
    if need_real and grad_d is not None:
        d_real = grad_d * (torch.sigmoid(real) - real_target) / real.numel()
    if need_fake:
        if grad_d is not None:
            d_fake = grad_d * (torch.sigmoid(fake) - fake_target) / fake.numel()
        if grad_g is not None:
            g_term = grad_g * -torch.sigmoid(-fake) / fake.numel()
            d_fake = g_term if d_fake is None else d_fake + g_term
    return d_real, d_fake


def bce_with_logits_grads(
    input: Tensor,
    target: Tensor | float,
    weight: Optional[Tensor],
    pos_weight: Optional[Tensor],
    wanted: tuple[bool, bool, bool, bool],
) -> list[Optional[Tensor]]:
    """Closed-form elementwise derivatives of the unreduced loss, differentiable themselves.

    Returns [d/d input, d/d target, d/d weight, d/d pos_weight], None where ``wanted`` is False.
    """
    log_sigmoid = F.logsigmoid(input)
    log_weight = 1 if pos_weight is None else 1 + (pos_weight - 1) * target
    w = 1 if weight is None else weight
    d_input = d_target = d_weight = d_pos_weight = None
    if wanted[0]:
        d_input = w * ((1 - target) - log_weight * torch.sigmoid(-input))
    if wanted[1]:
        d_target = -input if pos_weight is None else -input - (pos_weight - 1) * log_sigmoid
        d_target = w * d_target
    if wanted[2]:
        d_weight = (1 - target) * input - log_weight * log_sigmoid
    if wanted[3]:
        d_pos_weight = -w * target * log_sigmoid
    return [d_input, d_target, d_weight, d_pos_weight]


# --------------------------------------------------------------------------------------
# Argument checks (shared by every backend).
# --------------------------------------------------------------------------------------


def _check_tensor(value, name: str, input: Tensor, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.device != input.device:
        raise RuntimeError(f"{name} is on {value.device} but input is on {input.device}")


def _check_broadcastable(value: Optional[Tensor], name: str, input: Tensor) -> None:
    if value is None:
        return
    try:
        shape = torch.broadcast_shapes(value.shape, input.shape)
    except RuntimeError:
        shape = None
    if shape != input.shape:
        raise RuntimeError(
            f"{name} of size {tuple(value.shape)} cannot be broadcast to the input size {tuple(input.shape)}"
        )


def _check_bce_args(input, target, weight, pos_weight, reduction) -> tuple[Optional[Tensor], float]:
    """Validate like PyTorch; returns (target tensor or None, scalar target value)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got {input.dtype}")
    if reduction not in _REDUCTION_CODES:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    if isinstance(target, torch.Tensor):
        _check_tensor(target, "target", input)
        if target.size() != input.size():
            raise ValueError(
                f"Target size ({target.size()}) must be the same as input size ({input.size()})"
            )
        target_tensor, target_value = target, 0.0
    elif isinstance(target, numbers.Real) and not isinstance(target, bool):
        target_tensor, target_value = None, float(target)
    else:
        raise TypeError(f"target must be a torch.Tensor or a Python float, got {type(target).__name__}")
    for value, name in ((weight, "weight"), (pos_weight, "pos_weight")):
        _check_tensor(value, name, input, optional=True)
        _check_broadcastable(value, name, input)
    return target_tensor, target_value


def _kernel_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """The dtype the backend must handle: the first operand dtype the kernels lack, else the input's."""
    present = [t for t in tensors if t is not None]
    for t in present:
        if t.dtype not in _backend.KERNEL_DTYPES:
            return t.dtype
    return present[0].dtype


def _result_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


@functools.lru_cache(maxsize=None)
def _launcher(backend: str, name: str):
    """The launch function ``name`` of the triton (``fastgan.kernels.bce``) or cuda backend."""
    if backend == "triton":
        from fastgan.kernels import bce as triton_bce

        return getattr(triton_bce, "launch_" + name)
    from fastgan import _cuda  # its launchers mirror the triton ones argument for argument

    return getattr(_cuda, "launch_" + name)


# --------------------------------------------------------------------------------------
# bce_with_logits: kernel path.
# --------------------------------------------------------------------------------------


class _BceCall(NamedTuple):
    """Everything about one bce_with_logits kernel call that depends only on its arguments'
    shapes, strides, dtypes and flags: planned once, then reused (a training loop makes the
    same call every step, and at 64-1024 logits the host time is the cost)."""

    target_value: float
    reduction: int
    write_grad: bool
    backend: str
    out_dtype: torch.dtype
    loss_shape: tuple
    # Eager calls of plain tensors reduced: the loss's _launch.loss_template (else None).
    loss_template: Optional[Tensor]
    grad_shape: tuple
    grad_like_input: bool  # the gradient is written and allocated as empty_like(input) (contiguous input)
    expand: tuple  # (target, weight, pos_weight): expanded to the input's shape first
    copy_contiguous: bool  # more than 4 non-mergeable dimensions: operands copied first
    plan: object  # _indexing.StridedPlan
    launch: object  # _launch.LaunchShape
    mean_scale: float
    partials: int  # fp32 partial sums the reduction needs (0: a single program)
    direct: bool  # operands passed as they are: no expansion, copy or partials, some elements
    launch_arguments: tuple  # the launcher's arguments after the tensors, in order (positional: 0.15 µs
    # less a call than keywords)


_MAX_CACHED_CALLS = 4096
_BCE_CALLS = BoundedCache(_MAX_CACHED_CALLS)


def _tensor_key(t: Optional[Tensor]):
    """What a cached validation of ``t`` depends on (its class too: a look-alike object with a
    tensor's attributes must not pass as one); None for None."""
    return None if t is None else (t.__class__, t.shape, t.stride(), t.dtype, t.device)


def _arguments_key(input, target, weight, pos_weight, reduction: int) -> tuple:
    """What validation, dtype and planning depend on: every tensor's shape, strides, dtype, device."""
    return (_tensor_key(input), _tensor_key(target), _tensor_key(weight), _tensor_key(pos_weight), reduction)


def _bce_call(input, target, target_value, weight, pos_weight, reduction, write_grad, backend,
              arguments_key=None, eager=False) -> _BceCall:
    """The cached plan of a kernel call (see :class:`_BceCall`); ``eager``: for the eager
    Functions rather than the ``torch.library`` op (only those plans keep a loss template)."""
    if arguments_key is None:
        arguments_key = _arguments_key(input, target, weight, pos_weight, reduction)
    key = (arguments_key, target_value, write_grad, backend, eager)
    call = _BCE_CALLS.get(key)
    if call is None:
        call = _BCE_CALLS.store(key, _plan_bce_call(input, target, target_value, weight, pos_weight, reduction,
                                                    write_grad, backend, eager))
    return call


def _plan_bce_call(input, target, target_value, weight, pos_weight, reduction, write_grad, backend,
                   eager) -> _BceCall:
    shape = input.shape
    numel = input.numel()
    reduce = reduction != _NONE
    expand = tuple(t is not None and t.shape != shape for t in (target, weight, pos_weight))
    expanded = [t.expand(shape) if grow else t for t, grow in zip((target, weight, pos_weight), expand)]
    plan = _indexing.plan(shape, [input] + [input if t is None else t for t in expanded]) if numel else None
    copy_contiguous = bool(numel) and plan is None
    if copy_contiguous:
        plan = _indexing.plan(shape, [input.contiguous()] + [input.contiguous()] * 3)
    if reduce:
        blocks = -(-numel // _launch.BLOCK)
        launch = _launch.reduction(numel, _launch.program_budget(input.device, max(blocks, 1)))
    else:
        launch = _launch.elementwise(numel)
    mean_scale = 1.0 / numel if reduction == _MEAN and numel else 1.0
    out_dtype = _result_dtype(input, target, weight, pos_weight)
    partials = launch.num_programs if reduce and launch.num_programs > 1 else 0
    return _BceCall(
        target_value=target_value, reduction=reduction, write_grad=write_grad, backend=backend,
        out_dtype=out_dtype, loss_shape=() if reduce else tuple(shape),
        # A subclass's loss keeps its class through new_empty; a template would make it a Tensor.
        loss_template=_launch.loss_template(input.device, out_dtype) if (
            eager and reduce and type(input) is torch.Tensor) else None,
        grad_shape=tuple(shape) if write_grad else (0,), grad_like_input=write_grad and input.is_contiguous(),
        expand=expand, copy_contiguous=copy_contiguous, plan=plan,
        launch=launch, mean_scale=mean_scale, partials=partials,
        direct=plan is not None and not any(expand) and not copy_contiguous and not partials,
        launch_arguments=(target_value, mean_scale, mean_scale, reduce, plan, launch),
    )


def _bce_kernel_forward(
    input: Tensor,
    target: Optional[Tensor],
    target_value: float,
    weight: Optional[Tensor],
    pos_weight: Optional[Tensor],
    reduction: int,
    write_grad: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """Run the fused kernel; returns (loss, grad_scale * dl/dx or an empty tensor)."""
    call = _bce_call(input, target, target_value, weight, pos_weight, reduction, write_grad, backend)
    return _run_bce_call(input, target, weight, pos_weight, call)


def _new_outputs(input: Tensor, call: _BceCall) -> tuple[Tensor, Optional[Tensor]]:
    """(loss, gradient buffer or None when the call writes none), allocated as its plan says."""
    if call.loss_template is not None:
        loss = _launch.output_like(call.loss_template)
    else:
        loss = _launch.output(input, call.loss_shape, call.out_dtype)
    if call.grad_like_input:
        return loss, _launch.output_like(input)
    return loss, (_launch.output(input, call.grad_shape) if call.write_grad else None)


def _run_bce_call(input, target, weight, pos_weight, call: _BceCall) -> tuple[Tensor, Tensor]:
    """(loss, gradient; an empty tensor when none is written, as the custom op returns)."""
    loss, grad = _new_outputs(input, call)
    if grad is None:
        grad = _launch.output(input, (0,))
    operands, partials = (target, weight, pos_weight), None
    if not call.direct:  # the common case has nothing to prepare
        if call.plan is None:  # no elements
            if call.reduction != _NONE:
                loss.fill_(float("nan") if call.reduction == _MEAN else 0.0)
            return loss, grad
        if any(call.expand):
            operands = [t.expand(input.shape) if grow else t for t, grow in zip(operands, call.expand)]
        if call.copy_contiguous:
            _backend.warn_once(
                "bce_with_logits:rank",
                "fastgan.ops.bce_with_logits: operands with more than 4 non-mergeable dimensions "
                "are copied to contiguous memory first",
            )
            input = input.contiguous()
            operands = [None if t is None else t.contiguous() for t in operands]
        if call.partials:
            partials = torch.empty(call.partials, dtype=torch.float32, device=input.device)
    _launcher(call.backend, "bce_with_logits_forward")(
        input, *operands, loss, partials, grad if call.write_grad else None, *call.launch_arguments)
    return loss, grad


@torch.library.custom_op("fastgan::bce_with_logits", mutates_args=())
def _bce_with_logits_op(
    input: Tensor,
    target: Optional[Tensor],
    target_value: float,
    weight: Optional[Tensor],
    pos_weight: Optional[Tensor],
    reduction: int,
    write_grad: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    return _bce_kernel_forward(input, target, target_value, weight, pos_weight, reduction, write_grad, backend)


@_bce_with_logits_op.register_fake
def _bce_with_logits_fake(input, target, target_value, weight, pos_weight, reduction, write_grad, backend):
    out_dtype = _result_dtype(input, target, weight, pos_weight)
    loss = input.new_empty(() if reduction != _NONE else input.shape, dtype=out_dtype)
    return loss, input.new_empty(input.shape if write_grad else (0,))


def _bce_setup_context(ctx, inputs, output):
    input, target, target_value, weight, pos_weight, reduction, write_grad, _ = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(input, target, weight, pos_weight, output[1] if write_grad else None)
    ctx.target_value = target_value
    ctx.reduction = reduction


def _scaled_saved_grad(grad_loss: Tensor, saved_grad: Tensor, input: Tensor) -> Tensor:
    """d loss/d input from the kernel's saved gradient: one multiply, in the input's dtype."""
    grad = grad_loss * saved_grad
    return grad if grad.dtype == input.dtype else grad.to(input.dtype)


def _bce_grads(grad_loss, input, target, target_value, weight, pos_weight, saved_grad, reduction, wanted):
    """Gradients for (input, target, weight, pos_weight), None where not ``wanted``: the saved
    kernel gradient times the incoming one when that is all that is asked (one multiply), else
    the closed forms in differentiable PyTorch (exact second order, e.g. R1)."""
    result = [None] * 4
    if grad_loss is None or not any(wanted):
        return result
    fast_input_grad = wanted[0] and saved_grad is not None and not torch.is_grad_enabled()
    if fast_input_grad:
        result[0] = _scaled_saved_grad(grad_loss, saved_grad, input)
    slow = (wanted[0] and not fast_input_grad,) + tuple(wanted[1:])
    if any(slow):
        scale = grad_loss / input.numel() if reduction == _MEAN else grad_loss
        grads = bce_with_logits_grads(input, target if target is not None else target_value, weight, pos_weight, slow)
        for slot, grad, like in zip(range(4), grads, (input, target, weight, pos_weight)):
            if grad is not None:
                result[slot] = (scale * grad).sum_to_size(like.shape).to(like.dtype)
    return result


def _bce_backward(ctx, grad_loss, _grad_of_saved_grad):
    input, target, weight, pos_weight, saved_grad = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grads = _bce_grads(grad_loss, input, target, ctx.target_value, weight, pos_weight, saved_grad, ctx.reduction,
                       (needs[0], needs[1], needs[3], needs[4]))
    return grads[0], grads[1], None, grads[2], grads[3], None, None, None


_bce_with_logits_op.register_autograd(_bce_backward, setup_context=_bce_setup_context)


class _BCEWithLogitsFunction(torch.autograd.Function):
    """Eager entry to the kernel path (the same forward and gradients as the custom op).

    It takes the four tensors and the planned call (:class:`_BceCall`) only: ``Function.apply``
    pays per argument, and everything else is in the plan. ``forward`` takes ``ctx`` itself
    rather than defining ``setup_context``: with the latter, ``apply`` binds the arguments
    through ``inspect.signature`` on every call.
    """

    @staticmethod
    def forward(ctx, input, target, weight, pos_weight, call):
        loss, grad = _run_bce_call(input, target, weight, pos_weight, call)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, target, weight, pos_weight, grad if call.write_grad else None)
        ctx.call = call
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        input, target, weight, pos_weight, saved_grad = ctx.saved_tensors
        call = ctx.call
        needs = ctx.needs_input_grad
        grads = _bce_grads(grad_loss, input, target, call.target_value, weight, pos_weight, saved_grad,
                           call.reduction, needs[:4])
        return grads[0], grads[1], grads[2], grads[3], None


class _BCELabelsFunction(torch.autograd.Function):
    """:class:`_BCEWithLogitsFunction` for the commonest call, (logits, labels) of one dtype
    with no weights: two fewer arguments and saved tensors (host time at 64-1024 logits)."""

    @staticmethod
    def forward(ctx, input, target, call):
        if call.direct:  # _run_bce_call's common case, without its empty gradient (host time at 64-1024 logits)
            loss, grad = _new_outputs(input, call)
            _launcher(call.backend, "bce_with_logits_forward")(
                input, target, None, None, loss, None, grad, *call.launch_arguments)
        else:
            loss, grad = _run_bce_call(input, target, None, None, call)
            grad = grad if call.write_grad else None
        ctx.save_for_backward(input, target, grad)
        ctx.call = call
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        input, target, saved_grad = ctx.saved_tensors
        if saved_grad is not None and not ctx.needs_input_grad[1] and not torch.is_grad_enabled():
            # _bce_grads' fast case, without its general bookkeeping (host time at 64-1024 logits).
            # The product has the input's dtype: so do the loss (hence the incoming gradient,
            # which autograd casts to the loss's dtype) and the saved gradient.
            return grad_loss * saved_grad, None, None
        call, needs = ctx.call, ctx.needs_input_grad
        grads = _bce_grads(grad_loss, input, target, call.target_value, None, None, saved_grad, call.reduction,
                           (needs[0], needs[1], False, False))
        return grads[0], grads[1], None


# --------------------------------------------------------------------------------------
# bce_with_logits: the torch backend's native CPU path.
# --------------------------------------------------------------------------------------

_NATIVE_BCE_DTYPES = (torch.float32, torch.bfloat16)
_NATIVE_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 2}  # csrc/cpu/dtype.h


def _native_bce_applies(input: Tensor, target: Tensor) -> bool:
    """Whether a contiguous CPU (logits, labels) call can take the native kernel: it is built and
    on, and nothing needs PyTorch's dispatch (torch.compile tracing, torch.func transforms,
    tensor subclasses that override torch functions)."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    if torch._C._has_torch_function((input, target)):
        return False
    if _native.module() is None:
        if _native.enabled():
            _backend.warn_once("native-cpu", f"fastgan: the native CPU kernels are not used ({_native.status()}); "
                                             "bce_with_logits runs PyTorch's op on the CPU")
        return False
    return True


_NATIVE_LOSS_TEMPLATES: dict = {}  # dtype -> _launch.loss_template on the CPU, made on first use


def _native_bce_forward(input: Tensor, target: Tensor, reduction: int, write_grad: bool):
    """(loss, grad_scale·dl/dx or None) from the native kernel; input and target contiguous
    plain CPU tensors (so the outputs' empty_like of a template or of the input is theirs too)."""
    numel = input.numel()
    if reduction == _NONE:
        loss = _launch.output(input, input.shape)
    else:
        template = _NATIVE_LOSS_TEMPLATES.get(input.dtype)
        if template is None:
            template = _NATIVE_LOSS_TEMPLATES[input.dtype] = _launch.loss_template(input.device, input.dtype)
        loss = _launch.output_like(template)
    grad = _launch.output_like(input) if write_grad else None
    threads = _native.threads_for(numel)
    _native.module().bce_with_logits_forward(
        input.data_ptr(), target.data_ptr(), loss.data_ptr(), grad.data_ptr() if write_grad else 0,
        _NATIVE_DTYPE_CODES[input.dtype], reduction, 1.0 / numel if reduction == _MEAN and numel else 1.0, numel,
        threads)
    return loss, grad


class _NativeBCEFunction(torch.autograd.Function):
    """(logits, labels) of one dtype, contiguous, on the CPU: the loss and grad_scale·dl/dx from
    one read (csrc/cpu/bce.cpp), where PyTorch's op reads and writes memory about eight times
    for the loss and three more for the gradient. The backward is a multiply by the incoming
    gradient, or nothing when that is 1 (``loss.backward()``); target gradients and second
    order take the closed forms (:func:`_bce_grads`)."""

    @staticmethod
    def forward(ctx, input, target, reduction):
        loss, grad = _native_bce_forward(input, target, reduction, ctx.needs_input_grad[0])
        ctx.save_for_backward(input, target, grad)
        ctx.reduction = reduction
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        input, target, saved_grad = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if saved_grad is not None and not needs[1] and not torch.is_grad_enabled():
            if grad_loss.dim() == 0 and grad_loss.item() == 1.0:
                # The saved gradient is the answer. Autograd copies it where the graph is retained.
                return saved_grad, None, None
            return _scaled_saved_grad(grad_loss, saved_grad, input), None, None
        grads = _bce_grads(grad_loss, input, target, 0.0, None, None, saved_grad, ctx.reduction,
                           (needs[0], needs[1], False, False))
        return grads[0], grads[1], None


# Argument keys already validated, with the dtype the backend must handle.
_CHECKED_ARGUMENTS = BoundedCache(_MAX_CACHED_CALLS)
# (logits, labels) calls of one dtype already validated, with their plans (_BceCall).
_LABELS_CALLS = BoundedCache(_MAX_CACHED_CALLS)
# The torch backend runs PyTorch's binary_cross_entropy_with_logits itself for operands of one
# dtype: it is the op a drop-in replaces, so it is exactly as fast and as accurate.
_EAGER_BCE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def bce_with_logits(
    input: Tensor,
    target: Tensor | float,
    weight: Optional[Tensor] = None,
    pos_weight: Optional[Tensor] = None,
    reduction: str = "mean",
    *,
    backend: Optional[str] = None,
) -> Tensor:
    """Binary cross-entropy on logits; a drop-in for ``F.binary_cross_entropy_with_logits``.

    Args:
        input: logits, any shape ``(*)``, float32/float16/bfloat16 (float64 on the torch backend).
        target: labels of the same shape ``(*)``, or a Python float used for every element
            (e.g. 0.9 for one-sided label smoothing) without materialising a tensor.
        weight: rescales each element's loss; broadcastable to ``(*)``.
        pos_weight: weight of the positive term; broadcastable to ``(*)`` (commonly ``(C,)``
            for inputs ``(N, C)``).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        backend: ``"cuda"``, ``"triton"``, ``"torch"`` or ``"auto"``; default per :mod:`fastgan._backend`.

    Returns:
        A 0-d tensor, or the per-element loss of shape ``(*)`` for ``reduction="none"``,
        in the promoted dtype of the tensor arguments.
    """
    name = labels_key = None
    if (weight is None and pos_weight is None and isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor)
            and (input_dtype := input.dtype).is_floating_point and target.dtype == input_dtype
            and isinstance(reduction, str)
            and reduction in _REDUCTION_CODES):
        # The commonest call: (logits, labels) of one dtype, so that dtype is the kernel dtype.
        device = input.device
        name = _backend.select_backend("bce_with_logits", backend, device, input_dtype)
        if name == "torch":
            if input_dtype in _EAGER_BCE_DTYPES:
                # PyTorch's own op. With equal shapes, the ATen op itself: F's wrapper only
                # checks the shapes and maps the reduction name (0.4 µs a call); otherwise F,
                # which validates it as _check_bce_args would (same messages).
                if input.shape == target.shape:
                    if (input_dtype in _NATIVE_BCE_DTYPES and device.type == "cpu" and input.is_contiguous()
                            and target.is_contiguous() and _native_bce_applies(input, target)):
                        code = _REDUCTION_CODES[reduction]
                        if torch.is_grad_enabled() and (input.requires_grad or target.requires_grad):
                            return _NativeBCEFunction.apply(input, target, code)
                        return _native_bce_forward(input, target, code, False)[0]
                    return torch.binary_cross_entropy_with_logits(input, target, None, None,
                                                                  _REDUCTION_CODES[reduction])
                return F.binary_cross_entropy_with_logits(input, target, reduction=reduction)
        elif not torch.compiler.is_compiling():
            # A call seen before is validated and planned: one lookup (host time is the cost at 64-1024 logits).
            labels_key = (input.__class__, input.shape, input.stride(), target.shape, target.stride(), input_dtype, device,
                          target.device, reduction, torch.is_grad_enabled() and input.requires_grad, name)
            call = _LABELS_CALLS.get(labels_key)
            if call is not None:
                return _BCELabelsFunction.apply(input, target, call)
    if isinstance(target, torch.Tensor):
        target_tensor, target_value = target, 0.0
    elif isinstance(target, numbers.Real) and not isinstance(target, bool):
        target_tensor, target_value = None, float(target)
    else:
        target_tensor, target_value = None, None  # _check_bce_args says what is wrong
    code = _REDUCTION_CODES.get(reduction) if isinstance(reduction, str) else None
    tensors_or_none = all(t is None or isinstance(t, torch.Tensor) for t in (weight, pos_weight))
    if not isinstance(input, torch.Tensor) or target_value is None or code is None or not tensors_or_none:
        _check_bce_args(input, target, weight, pos_weight, reduction)  # raises
    # Validation and the kernel dtype depend only on shapes, strides, dtypes and devices.
    # Traced (torch.compile): validated in full, so no guard on the cache's contents joins the
    # graph (one would recompile it for every new batch size).
    key = None if torch.compiler.is_compiling() else _arguments_key(input, target_tensor, weight, pos_weight, code)
    dtype = _CHECKED_ARGUMENTS.get(key) if key is not None else None
    if dtype is None:
        _check_bce_args(input, target, weight, pos_weight, reduction)
        dtype = _kernel_dtype(input, target_tensor, weight, pos_weight)
        if key is not None:
            _CHECKED_ARGUMENTS.store(key, dtype)
    if name is None:
        name = _backend.select_backend("bce_with_logits", backend, input.device, dtype)
    if name == "torch":
        if dtype in _EAGER_BCE_DTYPES and all(
                t is None or t.dtype == dtype for t in (target_tensor, weight, pos_weight)) and (
                weight is None or not weight.requires_grad):
            # PyTorch's own op is the fastest torch form and as accurate as eager (it is eager);
            # mixed dtypes and a weight that needs a gradient (PyTorch's op gives none) take
            # the reference, computed in float32 for half precision.
            if target_tensor is None:
                target_tensor = torch.full((), target_value, dtype=dtype, device=input.device).expand(input.shape)
            return F.binary_cross_entropy_with_logits(input, target_tensor, weight, reduction=reduction,
                                                      pos_weight=pos_weight)
        if not torch.compiler.is_compiling():
            _backend.warn_once("bce_with_logits:reference",
                               "fastgan.ops.bce_with_logits: operands of mixed dtypes, or a weight that needs a "
                               "gradient, run the slower reference form on the torch backend")
        return bce_with_logits_reference(input, target, weight, pos_weight, reduction)
    write_grad = torch.is_grad_enabled() and input.requires_grad
    if torch.compiler.is_compiling():
        loss, _ = _bce_with_logits_op(input, target_tensor, target_value, weight, pos_weight, code, write_grad, name)
        return loss
    call = _bce_call(input, target_tensor, target_value, weight, pos_weight, code, write_grad, name, key, eager=True)
    if labels_key is not None:
        _LABELS_CALLS.store(labels_key, call)
        return _BCELabelsFunction.apply(input, target_tensor, call)
    return _BCEWithLogitsFunction.apply(input, target_tensor, weight, pos_weight, call)


# --------------------------------------------------------------------------------------
# gan_bce_losses: both GAN BCE losses in one launch.
# --------------------------------------------------------------------------------------


def _inverse_count(n: int) -> float:
    return 1.0 / n if n > 0 else float("nan")


def _shared_grad_layout(real: Tensor, fake: Tensor) -> Optional[int]:
    """Where d d_loss/d fake starts in the buffer it shares with d d_loss/d real (right after
    it), or None when the two cannot share one (different dtypes). Sharing makes the backward
    of d_loss one multiply instead of two; the fake part's vector stores stay 16-byte aligned
    when the real count is a multiple of 4 (float32) or 8 (16-bit dtypes), as batch sizes are."""
    return real.numel() if real.dtype == fake.dtype else None


@functools.lru_cache(maxsize=1024)
def _gan_launch_plan(n_real: int, real_stride: int, n_fake: int, fake_stride: int, device: torch.device,
                     real_dtype: torch.dtype, fake_dtype: torch.dtype, templates: bool):
    """(real launch, fake launch, programs, 64-bit indexing, d_loss template, g_loss template),
    planned once per shape: the latency regime counts the logits of both inputs together, so up
    to SINGLE_PROGRAM_MAX_BLOCKS * BLOCK of them take one program, hence one launch. The
    templates are 0-d tensors from :func:`fastgan.ops._launch.loss_template` when
    ``templates`` (eager calls of plain tensors), else None."""
    blocks = -(-(n_real + n_fake) // _launch.BLOCK)
    num_programs = _launch.program_budget(device, max(blocks, 1))
    largest_offset = max((n_real - 1) * real_stride, (n_fake - 1) * fake_stride, n_real, n_fake)
    d_template = g_template = None
    if templates:
        d_template = _launch.loss_template(device, torch.promote_types(real_dtype, fake_dtype))
        g_template = _launch.loss_template(device, fake_dtype)
    return (_launch.reduction(n_real, num_programs), _launch.reduction(n_fake, num_programs), num_programs,
            _indexing.needs_int64(largest_offset), d_template, g_template)


def _gan_kernel_forward(
    real: Tensor, fake: Tensor, real_target: float, fake_target: float, write_grad: bool, backend: str,
    eager: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (d_loss, g_loss, grad_d, grad_fake_d, grad_fake_g); the gradients are empty
    unless ``write_grad``, and already divided by the counts. ``grad_d`` holds d d_loss/d real
    (and, when real and fake share a dtype, d d_loss/d fake at :func:`_shared_grad_layout`'s
    offset, ``grad_fake_d`` then being empty); ``grad_fake_g`` = d g_loss/d fake, flat."""
    # reshape keeps a view where one stride suffices (a column d_out[:, 0] stays strided and
    # is read in place); only layouts no single stride describes are copied.
    real_flat = real if real.dim() == 1 else real.reshape(-1)
    fake_flat = fake if fake.dim() == 1 else fake.reshape(-1)
    n_real, n_fake = real_flat.numel(), fake_flat.numel()
    # Loss templates for eager calls of plain tensors (a subclass keeps its class through new_empty).
    templates = eager and type(real) is torch.Tensor and type(fake) is torch.Tensor
    real_launch, fake_launch, num_programs, needs_int64, d_template, g_template = _gan_launch_plan(
        n_real, real_flat.stride(0), n_fake, fake_flat.stride(0), real.device, real.dtype, fake.dtype, templates)
    if d_template is not None:
        d_loss, g_loss = _launch.output_like(d_template), _launch.output_like(g_template)
    else:
        d_loss = _launch.output(real, (), torch.promote_types(real.dtype, fake.dtype))
        g_loss = _launch.output(fake, ())
    fake_offset = _shared_grad_layout(real, fake)
    if not write_grad:
        grad_d = _launch.output(real, (0,))
        grad_fake_d = _launch.output(fake, (0,))
        grad_fake_g = _launch.output(fake, (0,))
    elif fake_offset is None:
        grad_d = _launch.output(real, (n_real,))
        grad_fake_d = _launch.output(fake, (n_fake,))
        grad_fake_g = _launch.output(fake, (n_fake,))
    else:
        grad_d = _launch.output(real, (fake_offset + n_fake,))
        grad_fake_d = _launch.output(fake, (0,))
        grad_fake_g = _launch.output(fake, (n_fake,))
    partials = None
    if num_programs > 1:
        partials = torch.empty(3 * num_programs, dtype=torch.float32, device=real.device)
    if write_grad:
        fake_d_part = grad_fake_d if fake_offset is None else grad_d[fake_offset:]
        # grad_d itself for d d_loss/d real: the launchers take its start and write n_real values.
        grads = (grad_d, fake_d_part, grad_fake_g)
    else:
        grads = (None, None, None)
    # Positional (the launcher's order; keywords cost 0.15-0.3 µs a call at 64-1024 logits):
    # real_target, fake_target, inv_n_real, inv_n_fake, real_launch, fake_launch, needs_int64.
    _launcher(backend, "gan_bce_forward")(
        real_flat, fake_flat, d_loss, g_loss, partials, *grads, real_target, fake_target,
        _inverse_count(n_real), _inverse_count(n_fake), real_launch, fake_launch, needs_int64,
    )
    return d_loss, g_loss, grad_d, grad_fake_d, grad_fake_g


@torch.library.custom_op("fastgan::gan_bce_losses", mutates_args=())
def _gan_bce_losses_op(
    real: Tensor, fake: Tensor, real_target: float, fake_target: float, write_grad: bool, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _gan_kernel_forward(real, fake, real_target, fake_target, write_grad, backend)


@_gan_bce_losses_op.register_fake
def _gan_bce_losses_fake(real, fake, real_target, fake_target, write_grad, backend):
    d_loss = real.new_empty((), dtype=torch.promote_types(real.dtype, fake.dtype))
    fake_offset = _shared_grad_layout(real, fake)
    if not write_grad:
        sizes = (0, 0, 0)
    elif fake_offset is None:
        sizes = (real.numel(), fake.numel(), fake.numel())
    else:
        sizes = (fake_offset + fake.numel(), 0, fake.numel())
    return d_loss, fake.new_empty(()), real.new_empty((sizes[0],)), fake.new_empty((sizes[1],)), \
        fake.new_empty((sizes[2],))


def _save_gan_context(ctx, real, fake, grads, real_target, fake_target, write_grad) -> None:
    """What :func:`_gan_backward` reads: the logits, the kernel's gradients when written, the labels."""
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(real, fake, *(grads if write_grad else (None, None, None)))
    ctx.real_target = real_target
    ctx.fake_target = fake_target


def _gan_setup_context(ctx, inputs, output):
    real, fake, real_target, fake_target, write_grad, _ = inputs
    ctx.mark_non_differentiable(*output[2:])
    _save_gan_context(ctx, real, fake, output[2:], real_target, fake_target, write_grad)


def _gan_backward(ctx, grad_d, grad_g, *_grads_of_saved):
    real, fake, grad_d_saved, grad_fake_d, grad_fake_g = ctx.saved_tensors
    need_real, need_fake = ctx.needs_input_grad[:2]
    d_real = d_fake = None
    if torch.is_grad_enabled() or grad_d_saved is None:
        # Second order, or no saved gradient: closed forms in differentiable PyTorch.
        d_real, d_fake = _gan_closed_form_grads(real, fake, grad_d, grad_g, ctx.real_target, ctx.fake_target,
                                                need_real, need_fake)
    else:
        fake_offset = _shared_grad_layout(real, fake)
        if grad_d is not None and (need_real or need_fake):
            if fake_offset is None:
                d_real = grad_d * grad_d_saved if need_real else None
                d_fake = grad_d * grad_fake_d if need_fake else None
            else:
                both = grad_d * grad_d_saved  # one launch for both inputs
                d_real = both[: real.numel()] if need_real else None
                d_fake = both[fake_offset:] if need_fake else None
        if need_fake and grad_g is not None:
            d_fake = grad_g * grad_fake_g if d_fake is None else torch.addcmul(d_fake, grad_g, grad_fake_g)
    if d_real is not None:
        d_real = _shaped_like(d_real, real)
    if d_fake is not None:
        d_fake = _shaped_like(d_fake, fake)
    return d_real, d_fake, None, None, None, None


def _shaped_like(grad: Tensor, like: Tensor) -> Tensor:
    """``grad`` in ``like``'s shape and dtype, without a call where it already is (host time)."""
    if grad.shape != like.shape:
        grad = grad.view(like.shape)
    return grad if grad.dtype == like.dtype else grad.to(like.dtype)


_gan_bce_losses_op.register_autograd(_gan_backward, setup_context=_gan_setup_context)


class _GanBCELossesFunction(torch.autograd.Function):
    """Eager entry to the fused GAN kernel path (the custom op's backward). Returns the two
    losses alone; the kernel's gradients stay in ctx (fewer outputs: less host time)."""

    @staticmethod
    def forward(ctx, real, fake, real_target, fake_target, write_grad, backend):
        d_loss, g_loss, *grads = _gan_kernel_forward(real, fake, real_target, fake_target, write_grad, backend,
                                                     eager=True)
        _save_gan_context(ctx, real, fake, grads, real_target, fake_target, write_grad)
        return d_loss, g_loss

    @staticmethod
    def backward(ctx, grad_d, grad_g):
        return _gan_backward(ctx, grad_d, grad_g)


def _check_label(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    return float(value)


def gan_bce_losses(
    real_logits: Tensor,
    fake_logits: Tensor,
    *,
    real_target: float = 1.0,
    fake_target: float = 0.0,
    backend: Optional[str] = None,
) -> GanBCELosses:
    """Both BCE losses of a GAN step, their gradients fused into one kernel launch.

    Args:
        real_logits: discriminator logits on data, any shape ``(*R)``.
        fake_logits: discriminator logits on generated samples, any shape ``(*F)``.
        real_target: label for real samples (1.0; 0.9 gives one-sided label smoothing).
        fake_target: label for generated samples (0.0).
        backend: ``"cuda"``, ``"triton"``, ``"torch"`` or ``"auto"``.

    Returns:
        :class:`GanBCELosses` ``(d_loss, g_loss)``, 0-d tensors:
        ``d_loss = mean BCE(real, real_target) + mean BCE(fake, fake_target)`` and
        ``g_loss = mean softplus(-fake)`` (the non-saturating generator loss). Backpropagate
        ``d_loss`` into the discriminator (with ``fake_logits`` computed from detached
        samples) and ``g_loss`` into the generator; both gradients come from the one launch.
        Empty inputs give NaN means, as ``Tensor.mean`` does.
    """
    for value, name in ((real_logits, "real_logits"), (fake_logits, "fake_logits")):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    device = real_logits.device
    if fake_logits.device != device:
        raise RuntimeError(f"fake_logits is on {fake_logits.device} but real_logits is on {device}")
    if type(real_target) is not float or type(fake_target) is not float:  # Python floats pass as they are
        real_target = _check_label(real_target, "real_target")
        fake_target = _check_label(fake_target, "fake_target")
    same_dtype = real_logits.dtype == fake_logits.dtype
    dtype = real_logits.dtype if same_dtype else _kernel_dtype(real_logits, fake_logits)
    name = _backend.select_backend("gan_bce_losses", backend, device, dtype)
    write_grad = torch.is_grad_enabled() and (real_logits.requires_grad or fake_logits.requires_grad)
    if name == "torch":
        if not same_dtype and not torch.compiler.is_compiling():
            _backend.warn_once("gan_bce_losses:mixed-dtypes",
                               "fastgan.ops.gan_bce_losses: real_logits and fake_logits of different dtypes run "
                               "the slower reference form on the torch backend; pass one dtype for the fast one")
        if not same_dtype or real_logits.numel() == 0 or fake_logits.numel() == 0 or torch.compiler.is_compiling():
            # Empty inputs need no speed; torch.compile fuses the reference anyway.
            return gan_bce_losses_reference(real_logits, fake_logits, real_target, fake_target)
        if not write_grad:
            return GanBCELosses(*_gan_torch_losses(real_logits, fake_logits, real_target, fake_target))
        return GanBCELosses(*_GanBCELossesTorchFunction.apply(real_logits, fake_logits, real_target, fake_target))
    args = (real_logits, fake_logits, real_target, fake_target, write_grad, name)
    if torch.compiler.is_compiling():
        outputs = _gan_bce_losses_op(*args)
        return GanBCELosses(outputs[0], outputs[1])
    return GanBCELosses(*_GanBCELossesFunction.apply(*args))
