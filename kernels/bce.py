"""Triton kernels for the BCE-with-logits family (installed as ``fastgan.kernels.bce``).

Math. For a logit x, target y, weight w and positive-class weight p:

    l(x, y)  = w * [ (1 - y) * x - (1 + (p - 1) * y) * log_sigmoid(x) ]
    log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|))              (never overflows)

Backward derivation: d log_sigmoid(x) / dx = sigmoid(-x), so

    dl/dx = w * [ (1 - y) - (1 + (p - 1) * y) * sigmoid(-x) ]     (= w * (sigmoid(x) - y) when p = 1)
    sigmoid(-x) = e / (1 + e) if x >= 0 else 1 / (1 + e),  e = exp(-|x|)

Both use only e = exp(-|x|) <= 1, so logits of +-1e4 give finite values; +-inf and NaN
follow the same formula order as PyTorch and so give what PyTorch gives.

Fused forward+backward: when a gradient is needed, the forward also writes
``grad_scale * dl/dx`` (grad_scale = 1/N for a mean), so the backward only multiplies
by the incoming gradient and the inputs are read once.

Reductions are deterministic: each program sums its blocks in fp32 and writes one
partial; a single-program launch writes the final value itself (the latency regime: one
launch), otherwise a one-program finishing kernel sums the partials in a fixed order.
"""

import triton
import triton.language as tl


@triton.jit
def _log1p_small(e):
    """log(1 + e) for 0 <= e <= 1 without log1p: Goldberg's correction keeps full
    relative precision when 1 + e rounds to 1."""
    u = 1.0 + e
    rounded_to_one = u == 1.0
    return tl.where(rounded_to_one, e, tl.log(u) * (e / tl.where(rounded_to_one, 1.0, u - 1.0)))


@triton.jit
def _log_sigmoid_and_sigmoid_neg(x):
    """(log_sigmoid(x), sigmoid(-x)) in fp32, stable for any finite x."""
    e = tl.exp(-tl.abs(x))
    log_sigmoid = tl.minimum(x, 0.0) - _log1p_small(e)
    sigmoid_neg = tl.where(x >= 0, e, 1.0) / (1.0 + e)
    return log_sigmoid, sigmoid_neg


@triton.jit
def _coordinates(idx, size1, size2, size3):
    """Split linear indices over a (size0, size1, size2, size3) walk into coordinates."""
    i3 = idx % size3
    rest = idx // size3
    i2 = rest % size2
    rest = rest // size2
    i1 = rest % size1
    i0 = rest // size1
    return i0, i1, i2, i3


@triton.jit
def _load(ptrs, mask, other, MASKED: tl.constexpr):
    """A load that carries a mask only where the block can run past the end: an unmasked
    load of an aligned, contiguous block compiles to 128-bit accesses."""
    if MASKED:
        value = tl.load(ptrs, mask=mask, other=other)
    else:
        value = tl.load(ptrs)
    return value


@triton.jit
def _store(ptrs, value, mask, MASKED: tl.constexpr):
    if MASKED:
        tl.store(ptrs, value, mask=mask)
    else:
        tl.store(ptrs, value)


@triton.jit
def _bce_block(
    idx, bound, input_ptr, target_ptr, weight_ptr, pos_weight_ptr, loss_ptr, grad_ptr, target_value, grad_scale,
    size1, size2, size3, in_s0, in_s1, in_s2, in_s3, tg_s0, tg_s1, tg_s2, tg_s3,
    w_s0, w_s1, w_s2, w_s3, pw_s0, pw_s1, pw_s2, pw_s3,
    TARGET_IS_TENSOR: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_POS_WEIGHT: tl.constexpr,
    CONTIGUOUS: tl.constexpr, REDUCE: tl.constexpr, WRITE_GRAD: tl.constexpr, MASKED: tl.constexpr,
):
    """Loss and gradient of the elements ``idx`` (those below ``bound`` when MASKED); stores
    the gradient (and the per-element loss unless REDUCE); returns the loss, 0 where masked."""
    mask = idx < bound
    if CONTIGUOUS:
        in_off = idx
        tg_off = idx
        w_off = idx
        pw_off = idx
    else:
        i0, i1, i2, i3 = _coordinates(idx, size1, size2, size3)
        in_off = i0 * in_s0 + i1 * in_s1 + i2 * in_s2 + i3 * in_s3
        tg_off = i0 * tg_s0 + i1 * tg_s1 + i2 * tg_s2 + i3 * tg_s3
        w_off = i0 * w_s0 + i1 * w_s1 + i2 * w_s2 + i3 * w_s3
        pw_off = i0 * pw_s0 + i1 * pw_s1 + i2 * pw_s2 + i3 * pw_s3
    x = _load(input_ptr + in_off, mask, 0.0, MASKED).to(tl.float32)
    if TARGET_IS_TENSOR:
        y = _load(target_ptr + tg_off, mask, 0.0, MASKED).to(tl.float32)
    else:
        y = tl.zeros(idx.shape, dtype=tl.float32) + target_value
    log_sigmoid, sigmoid_neg = _log_sigmoid_and_sigmoid_neg(x)
    if HAS_POS_WEIGHT:
        p = _load(pos_weight_ptr + pw_off, mask, 1.0, MASKED).to(tl.float32)
        log_weight = 1.0 + (p - 1.0) * y
    else:
        log_weight = tl.zeros(idx.shape, dtype=tl.float32) + 1.0
    loss = (1.0 - y) * x - log_weight * log_sigmoid
    grad = (1.0 - y) - log_weight * sigmoid_neg
    if HAS_WEIGHT:
        w = _load(weight_ptr + w_off, mask, 0.0, MASKED).to(tl.float32)
        loss = loss * w
        grad = grad * w
    if WRITE_GRAD:
        _store(grad_ptr + idx, (grad * grad_scale).to(grad_ptr.dtype.element_ty), mask, MASKED)
    if not REDUCE:
        _store(loss_ptr + idx, loss.to(loss_ptr.dtype.element_ty), mask, MASKED)
    if MASKED:
        loss = tl.where(mask, loss, 0.0)
    return loss


@triton.jit
def bce_with_logits_forward_kernel(
    input_ptr,  # logits x: fp32/fp16/bf16, read through input_stride*
    target_ptr,  # targets y (same dtype family), read if TARGET_IS_TENSOR
    weight_ptr,  # per-element weight w (a stride-0 expanded view is fine), read if HAS_WEIGHT
    pos_weight_ptr,  # positive-class weight p (expanded view), read if HAS_POS_WEIGHT
    loss_ptr,  # REDUCE: the scalar result (written by a single program); else contiguous per-element loss
    partial_ptr,  # REDUCE with several programs: fp32 [num_programs] partial sums
    grad_ptr,  # WRITE_GRAD: contiguous grad_scale * dl/dx, dtype of the input
    target_value,  # fp32 target used for every element when not TARGET_IS_TENSOR
    grad_scale,  # fp32 factor folded into the gradient (1/N for mean, else 1)
    loss_scale,  # fp32 factor applied to the reduced loss (1/N for mean, else 1)
    numel,  # number of elements to walk
    numel_vec,  # numel rounded down to a multiple of 16 (so masks against it stay vectorisable)
    size1, size2, size3,  # inner sizes of the coalesced 4-d walk (size0 = numel / (size1*size2*size3))
    in_s0, in_s1, in_s2, in_s3,  # input strides in elements
    tg_s0, tg_s1, tg_s2, tg_s3,  # target strides
    w_s0, w_s1, w_s2, w_s3,  # weight strides
    pw_s0, pw_s1, pw_s2, pw_s3,  # pos_weight strides
    TARGET_IS_TENSOR: tl.constexpr,  # False: use target_value
    HAS_WEIGHT: tl.constexpr,
    HAS_POS_WEIGHT: tl.constexpr,
    CONTIGUOUS: tl.constexpr,  # every operand dense: offset == linear index
    REDUCE: tl.constexpr,  # sum the loss instead of storing it per element
    SINGLE_PROGRAM: tl.constexpr,  # REDUCE with one program: write the final scaled scalar
    WRITE_GRAD: tl.constexpr,
    HAS_TAIL: tl.constexpr,  # numel is not a multiple of BLOCK
    HAS_REMAINDER: tl.constexpr,  # numel is not a multiple of 16
    INT64: tl.constexpr,  # 64-bit indexing (numel or an offset beyond int32)
    BLOCK: tl.constexpr,  # elements per block iteration (power of two, >= 16)
):
    # Full blocks are walked in grid-stride order without masks; the one partial block (the
    # tail) goes to the program whose turn it would be, masked against numel_vec so that its
    # accesses stay vectorised, and its last numel % 16 elements (the remainder) masked
    # against numel.
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    full_blocks = numel // BLOCK
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for block in range(pid, full_blocks, num_programs):
        start = block * BLOCK
        if INT64:
            start = tl.cast(block, tl.int64) * BLOCK
        acc += _bce_block(
            start + tl.arange(0, BLOCK), numel, input_ptr, target_ptr, weight_ptr, pos_weight_ptr, loss_ptr,
            grad_ptr, target_value, grad_scale, size1, size2, size3, in_s0, in_s1, in_s2, in_s3,
            tg_s0, tg_s1, tg_s2, tg_s3, w_s0, w_s1, w_s2, w_s3, pw_s0, pw_s1, pw_s2, pw_s3,
            TARGET_IS_TENSOR, HAS_WEIGHT, HAS_POS_WEIGHT, CONTIGUOUS, REDUCE, WRITE_GRAD, False,
        )
    total = tl.sum(acc, axis=0)
    if HAS_TAIL:
        if pid == full_blocks % num_programs:
            start = full_blocks * BLOCK
            if INT64:
                start = tl.cast(full_blocks, tl.int64) * BLOCK
            tail = _bce_block(
                start + tl.arange(0, BLOCK), numel_vec, input_ptr, target_ptr, weight_ptr, pos_weight_ptr, loss_ptr,
                grad_ptr, target_value, grad_scale, size1, size2, size3, in_s0, in_s1, in_s2, in_s3,
                tg_s0, tg_s1, tg_s2, tg_s3, w_s0, w_s1, w_s2, w_s3, pw_s0, pw_s1, pw_s2, pw_s3,
                TARGET_IS_TENSOR, HAS_WEIGHT, HAS_POS_WEIGHT, CONTIGUOUS, REDUCE, WRITE_GRAD, True,
            )
            total += tl.sum(tail, axis=0)
            if HAS_REMAINDER:
                start = numel_vec
                if INT64:
                    start = tl.cast(numel_vec, tl.int64)
                remainder = _bce_block(
                    start + tl.arange(0, 16), numel, input_ptr, target_ptr, weight_ptr, pos_weight_ptr, loss_ptr,
                    grad_ptr, target_value, grad_scale, size1, size2, size3, in_s0, in_s1, in_s2, in_s3,
                    tg_s0, tg_s1, tg_s2, tg_s3, w_s0, w_s1, w_s2, w_s3, pw_s0, pw_s1, pw_s2, pw_s3,
                    TARGET_IS_TENSOR, HAS_WEIGHT, HAS_POS_WEIGHT, CONTIGUOUS, REDUCE, WRITE_GRAD, True,
                )
                total += tl.sum(remainder, axis=0)
    if REDUCE:
        if SINGLE_PROGRAM:
            tl.store(loss_ptr, (total * loss_scale).to(loss_ptr.dtype.element_ty))
        else:
            tl.store(partial_ptr + pid, total)


@triton.jit
def sum_partials_kernel(
    partial_ptr,  # fp32 [count] partial sums, summed in index order (deterministic)
    out_ptr,  # scalar result, any float dtype
    count,  # number of partials (<= BLOCK)
    scale,  # fp32 factor applied to the sum (1/N for mean)
    BLOCK: tl.constexpr,  # power of two >= count
):
    offs = tl.arange(0, BLOCK)
    partials = tl.load(partial_ptr + offs, mask=offs < count, other=0.0)
    tl.store(out_ptr, (tl.sum(partials, axis=0) * scale).to(out_ptr.dtype.element_ty))


@triton.jit
def _gan_bce_block(idx, bound, logits_ptr, stride, target, inv_n, grad_d_ptr, grad_g_ptr,
                   WRITE_GRAD: tl.constexpr, WRITE_G_GRAD: tl.constexpr, MASKED: tl.constexpr):
    """BCE(x, target) and softplus(-x) of the logits ``idx`` (0 where masked); writes
    d BCE/dx · inv_n and, when WRITE_G_GRAD, -sigmoid(-x) · inv_n."""
    mask = idx < bound
    x = _load(logits_ptr + idx * stride, mask, 0.0, MASKED).to(tl.float32)
    log_sigmoid, sigmoid_neg = _log_sigmoid_and_sigmoid_neg(x)
    if WRITE_GRAD:
        _store(grad_d_ptr + idx, (((1.0 - target) - sigmoid_neg) * inv_n).to(grad_d_ptr.dtype.element_ty), mask,
               MASKED)
        if WRITE_G_GRAD:
            _store(grad_g_ptr + idx, (-sigmoid_neg * inv_n).to(grad_g_ptr.dtype.element_ty), mask, MASKED)
    d_term = (1.0 - target) * x - log_sigmoid
    g_term = -log_sigmoid
    if MASKED:
        d_term = tl.where(mask, d_term, 0.0)
        g_term = tl.where(mask, g_term, 0.0)
    return d_term, g_term


@triton.jit
def _gan_bce_sums(logits_ptr, n, n_vec, stride, target, inv_n, grad_d_ptr, grad_g_ptr, pid, num_programs,
                  WRITE_GRAD: tl.constexpr, WRITE_G_GRAD: tl.constexpr, HAS_TAIL: tl.constexpr,
                  HAS_REMAINDER: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
    """This program's share of Σ BCE(x, target) and Σ softplus(-x) over n logits: unmasked
    full blocks in grid-stride order, then the tail (masked against n_vec, a multiple of 16,
    so it stays vectorised) and its last n % 16 logits (the remainder)."""
    d_acc = tl.zeros([BLOCK], dtype=tl.float32)
    g_acc = tl.zeros([BLOCK], dtype=tl.float32)
    full_blocks = n // BLOCK
    for block in range(pid, full_blocks, num_programs):
        start = block * BLOCK
        if INT64:
            start = tl.cast(block, tl.int64) * BLOCK
        d_term, g_term = _gan_bce_block(start + tl.arange(0, BLOCK), n, logits_ptr, stride, target, inv_n,
                                        grad_d_ptr, grad_g_ptr, WRITE_GRAD, WRITE_G_GRAD, False)
        d_acc += d_term
        g_acc += g_term
    d_sum = tl.sum(d_acc, axis=0)
    g_sum = tl.sum(g_acc, axis=0)
    if HAS_TAIL:
        if pid == full_blocks % num_programs:
            start = full_blocks * BLOCK
            if INT64:
                start = tl.cast(full_blocks, tl.int64) * BLOCK
            d_term, g_term = _gan_bce_block(start + tl.arange(0, BLOCK), n_vec, logits_ptr, stride, target, inv_n,
                                            grad_d_ptr, grad_g_ptr, WRITE_GRAD, WRITE_G_GRAD, True)
            d_sum += tl.sum(d_term, axis=0)
            g_sum += tl.sum(g_term, axis=0)
            if HAS_REMAINDER:
                start = n_vec
                if INT64:
                    start = tl.cast(n_vec, tl.int64)
                d_term, g_term = _gan_bce_block(start + tl.arange(0, 16), n, logits_ptr, stride, target, inv_n,
                                                grad_d_ptr, grad_g_ptr, WRITE_GRAD, WRITE_G_GRAD, True)
                d_sum += tl.sum(d_term, axis=0)
                g_sum += tl.sum(g_term, axis=0)
    return d_sum, g_sum


@triton.jit
def gan_bce_forward_kernel(
    real_ptr,  # logits of real samples, fp32/fp16/bf16, element i at real_ptr + i * real_stride
    fake_ptr,  # logits of generated samples, element i at fake_ptr + i * fake_stride
    d_loss_ptr,  # scalar: mean BCE(real, real_target) + mean BCE(fake, fake_target), written by a single program
    g_loss_ptr,  # scalar: mean softplus(-fake), the non-saturating generator loss
    partial_ptr,  # several programs: fp32 [3, num_programs] partial sums (d_real, d_fake, g_fake)
    grad_real_ptr,  # WRITE_GRAD: d d_loss / d real = (sigmoid(r) - real_target) / n_real
    grad_fake_d_ptr,  # WRITE_GRAD: d d_loss / d fake = (sigmoid(f) - fake_target) / n_fake
    grad_fake_g_ptr,  # WRITE_GRAD: d g_loss / d fake = -sigmoid(-f) / n_fake
    real_target,  # fp32 label for real samples (1.0, or 0.9 for one-sided smoothing)
    fake_target,  # fp32 label for generated samples (usually 0.0)
    n_real,  # number of real logits
    n_fake,  # number of fake logits
    n_real_vec,  # n_real rounded down to a multiple of 16
    n_fake_vec,  # n_fake rounded down to a multiple of 16
    real_stride,  # element stride of the (flattened) real logits: 1 when dense, >1 for a slice like d_out[:, 0]
    fake_stride,  # element stride of the fake logits
    inv_n_real,  # fp32 1/n_real (NaN when n_real == 0: the mean of nothing)
    inv_n_fake,  # fp32 1/n_fake (NaN when n_fake == 0)
    SINGLE_PROGRAM: tl.constexpr,  # one program: write the final scalars directly (one launch)
    WRITE_GRAD: tl.constexpr,
    REAL_TAIL: tl.constexpr, REAL_REMAINDER: tl.constexpr,  # n_real % BLOCK != 0, n_real % 16 != 0
    FAKE_TAIL: tl.constexpr, FAKE_REMAINDER: tl.constexpr,  # the same for n_fake
    INT64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    sum_d_real, _ = _gan_bce_sums(real_ptr, n_real, n_real_vec, real_stride, real_target, inv_n_real, grad_real_ptr,
                                  grad_real_ptr, pid, num_programs, WRITE_GRAD, False, REAL_TAIL, REAL_REMAINDER,
                                  INT64, BLOCK)
    sum_d_fake, sum_g_fake = _gan_bce_sums(fake_ptr, n_fake, n_fake_vec, fake_stride, fake_target, inv_n_fake,
                                           grad_fake_d_ptr, grad_fake_g_ptr, pid, num_programs, WRITE_GRAD, True,
                                           FAKE_TAIL, FAKE_REMAINDER, INT64, BLOCK)
    if SINGLE_PROGRAM:
        tl.store(d_loss_ptr, (sum_d_real * inv_n_real + sum_d_fake * inv_n_fake).to(d_loss_ptr.dtype.element_ty))
        tl.store(g_loss_ptr, (sum_g_fake * inv_n_fake).to(g_loss_ptr.dtype.element_ty))
    else:
        tl.store(partial_ptr + pid, sum_d_real)
        tl.store(partial_ptr + num_programs + pid, sum_d_fake)
        tl.store(partial_ptr + 2 * num_programs + pid, sum_g_fake)


@triton.jit
def gan_bce_finish_kernel(
    partial_ptr,  # fp32 [3, count] partial sums from gan_bce_forward_kernel
    d_loss_ptr,  # scalar outputs, any float dtype
    g_loss_ptr,
    count,  # programs that wrote partials (<= BLOCK)
    inv_n_real,  # fp32 1/n_real (NaN for an empty input)
    inv_n_fake,  # fp32 1/n_fake
    BLOCK: tl.constexpr,
):
    offs = tl.arange(0, BLOCK)
    mask = offs < count
    sum_d_real = tl.sum(tl.load(partial_ptr + offs, mask=mask, other=0.0), axis=0)
    sum_d_fake = tl.sum(tl.load(partial_ptr + count + offs, mask=mask, other=0.0), axis=0)
    sum_g_fake = tl.sum(tl.load(partial_ptr + 2 * count + offs, mask=mask, other=0.0), axis=0)
    tl.store(d_loss_ptr, (sum_d_real * inv_n_real + sum_d_fake * inv_n_fake).to(d_loss_ptr.dtype.element_ty))
    tl.store(g_loss_ptr, (sum_g_fake * inv_n_fake).to(g_loss_ptr.dtype.element_ty))


def _tail_flags(numel: int, block: int) -> tuple[int, bool, bool]:
    """(numel rounded down to a multiple of 16, whether a partial block remains, whether a
    partial 16-element group remains): the kernels mask only those, so that every other
    access can be vectorised."""
    return numel - numel % VECTOR_GROUP, numel % block != 0, numel % VECTOR_GROUP != 0


VECTOR_GROUP = 16  # the tail is masked in groups of 16 elements (whole 128-bit vectors of any dtype here)


def launch_bce_with_logits_forward(
    input, target, weight, pos_weight, loss, partials, grad, target_value, grad_scale, loss_scale, reduce, plan, launch
):
    """Launch :func:`bce_with_logits_forward_kernel` (and the finisher) for prepared operands.

    ``target``/``weight``/``pos_weight`` are None or views expanded to ``input``'s shape;
    ``loss`` is the scalar result when ``reduce`` else the per-element loss; ``partials`` is an
    fp32 buffer of ``launch.num_programs`` sums when reducing with several programs; ``plan`` is a :class:`fastgan._indexing.StridedPlan` over (input, target, weight, pos_weight)
    and ``launch`` a :class:`fastgan.ops._launch.LaunchShape`.
    """
    in_s, tg_s, w_s, pw_s = plan.strides
    numel_vec, has_tail, has_remainder = _tail_flags(plan.numel, launch.block)
    bce_with_logits_forward_kernel[(launch.num_programs,)](
        input, target if target is not None else input, weight if weight is not None else input,
        pos_weight if pos_weight is not None else input,
        loss, partials if partials is not None else loss, grad if grad is not None else input,
        target_value, grad_scale, loss_scale,
        plan.numel, numel_vec, plan.sizes[1], plan.sizes[2], plan.sizes[3],
        *in_s, *tg_s, *w_s, *pw_s,
        TARGET_IS_TENSOR=target is not None, HAS_WEIGHT=weight is not None, HAS_POS_WEIGHT=pos_weight is not None,
        CONTIGUOUS=plan.contiguous, REDUCE=reduce, SINGLE_PROGRAM=launch.num_programs == 1,
        WRITE_GRAD=grad is not None, HAS_TAIL=has_tail, HAS_REMAINDER=has_remainder, INT64=plan.needs_int64,
        BLOCK=launch.block,
    )
    if reduce and launch.num_programs > 1:
        sum_partials_kernel[(1,)](partials, loss, launch.num_programs, loss_scale, BLOCK=launch.finish_block)


def _gan_warps(real, fake) -> int:
    """Warps per program of the GAN kernel: 8 when both inputs are float32 (4 logits, one
    128-bit vector, per thread and block; half the registers of 4 warps), else 4 (16-bit
    logits need 8 per thread for 128-bit accesses)."""
    return 8 if min(real.element_size(), fake.element_size()) >= 4 else 4


def launch_gan_bce_forward(
    real, fake, d_loss, g_loss, partials, grad_real, grad_fake_d, grad_fake_g,
    real_target, fake_target, inv_n_real, inv_n_fake, real_launch, fake_launch, needs_int64
):
    """Launch :func:`gan_bce_forward_kernel` (and the finisher) on 1-d (possibly strided) logits.

    ``real_launch``/``fake_launch`` share ``num_programs``. Gradient buffers are all None or
    all tensors.
    """
    num_programs = real_launch.num_programs
    write_grad = grad_real is not None
    n_real, n_fake = real.numel(), fake.numel()
    real_vec, real_tail, real_remainder = _tail_flags(n_real, real_launch.block)
    fake_vec, fake_tail, fake_remainder = _tail_flags(n_fake, fake_launch.block)
    gan_bce_forward_kernel[(num_programs,)](
        real, fake, d_loss, g_loss, partials if num_programs > 1 else d_loss,
        grad_real if write_grad else real, grad_fake_d if write_grad else fake, grad_fake_g if write_grad else fake,
        real_target, fake_target, n_real, n_fake, real_vec, fake_vec, real.stride(0), fake.stride(0),
        inv_n_real, inv_n_fake,
        SINGLE_PROGRAM=num_programs == 1, WRITE_GRAD=write_grad, REAL_TAIL=real_tail, REAL_REMAINDER=real_remainder,
        FAKE_TAIL=fake_tail, FAKE_REMAINDER=fake_remainder, INT64=needs_int64, BLOCK=real_launch.block,
        num_warps=_gan_warps(real, fake),
    )
    if num_programs > 1:
        gan_bce_finish_kernel[(1,)](
            partials, d_loss, g_loss, num_programs, inv_n_real, inv_n_fake, BLOCK=real_launch.finish_block
        )
