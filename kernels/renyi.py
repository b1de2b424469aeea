"""Triton kernels for the Rényi-α divergence reduction (installed as ``fastgan.kernels.renyi``).

Math. Each row holds N discriminator logits r on generator samples; with β = 1 − α:

    D_α = 1/(α−1) · (logsumexp(β·r) − log N) = −(m + log A) / β,
    m = max_i β·r_i,  A = (1/N) Σ exp(β·r_i − m)                 (so 1/N ≤ A ≤ 1)
    log A = log1p(S/N), S = Σ expm1(β·r_i − m)   when A > 1/2,   else log(E) − log N, E = N·A

β = 0 (α = 1) is the reverse-KL limit −Σr/N, taken from a running sum of r. E and S sum
terms of one sign, so neither cancels, and log1p keeps log A exact in the near-uniform
(α → 1) regime: the result is continuous through α = 1.

Online form: each lane keeps (m, E, S, count, Σr) over the columns it visits; a new maximum
m' rescales E' = E·e^(m−m') and S' = S·e^(m−m') + count·expm1(m−m'). Lanes, then blocks of a
split row, merge the same way.

Infinities: a difference u − m is 0 when u = m, also for the same infinity, so values tied
with an infinite maximum weigh 1 (the limit of equal large logits): one β·r = −∞ adds 0 to E
and −1 to S (r = [0, 0, 0, +∞] at α = 2 gives log 0.75), and a row with m = ±∞ gives
D_α = ∓∞/β, as (logsumexp(β·r) − log N)/(α − 1) does with torch.logsumexp's infinities.
β·r is taken as 0 at β = 0 (the weights are uniform there, even for infinite r).

Backward derivation: dD/dr_i = −(1/β)·β·exp(β·r_i − m)/E = −softmax(β·r)_i, so the backward
kernel reads r once more with the saved per-row (m, E): grad_i = −g·exp(β·r_i − m)/E (for an
infinite m, uniform over the entries tied with it).
"""

import triton
import triton.language as tl


@triton.jit
def _merge_lanes(m, e, s, count, total):
    """Merge per-lane (m, E, S, count, Σr) into one (M, E, S, count, Σr) for the block."""
    big_m = tl.max(m, axis=0)
    rel = _offset(m, big_m)  # -inf for lanes below the maximum; lanes that saw nothing have e = s = count = 0
    e_all = tl.sum(e * tl.exp(rel), axis=0)
    s_all = tl.sum(s * tl.exp(rel) + count * tl.where(count > 0, _expm1(rel), 0.0), axis=0)
    return big_m, e_all, s_all, tl.sum(count, axis=0), tl.sum(total, axis=0)


@triton.jit
def _merge_two(m_a, e_a, s_a, count_a, total_a, m_b, e_b, s_b, count_b, total_b):
    """Merge two merged states (as _merge_lanes merges lanes); a state that saw nothing
    (m = -inf, E = S = count = 0) changes nothing."""
    big_m = tl.maximum(m_a, m_b)
    rel_a = _offset(m_a, big_m)
    rel_b = _offset(m_b, big_m)
    e_all = e_a * tl.exp(rel_a) + e_b * tl.exp(rel_b)
    s_all = (s_a * tl.exp(rel_a) + count_a * tl.where(count_a > 0, _expm1(rel_a), 0.0)
             + s_b * tl.exp(rel_b) + count_b * tl.where(count_b > 0, _expm1(rel_b), 0.0))
    return big_m, e_all, s_all, count_a + count_b, total_a + total_b


@triton.jit
def _offset(x, m):
    """x − m, with equal values (also the same infinity) at distance 0: values tied with an
    infinite maximum weigh 1, the limit of equal large logits, instead of giving NaN."""
    return tl.where(x == m, 0.0, x - m)


@triton.jit
def _expm1(x):
    """exp(x) − 1 with full relative precision for small |x| (x ≤ 0 here): a short series
    below |x| = 1e-2, where exp(x) − 1 would cancel, else exp(x) − 1."""
    small = tl.abs(x) < 1e-2
    xs = tl.where(small, x, 0.0)
    series = xs * (1.0 + xs * (0.5 + xs * (1.0 / 6.0 + xs * (1.0 / 24.0 + xs * (1.0 / 120.0)))))
    return tl.where(small, series, tl.exp(x) - 1.0)


@triton.jit
def _finalize(big_m, e_all, s_all, total, n, beta, inv_beta, log_n):
    """D_α of one row from its merged statistics (see the module docstring)."""
    near_uniform = e_all > 0.5 * n
    log_mean = tl.where(
        near_uniform,
        _log1p(tl.where(near_uniform, s_all / n, 0.0)),
        tl.log(tl.where(near_uniform, 1.0, e_all)) - log_n,
    )
    return tl.where(beta == 0.0, -total / n, -(big_m + log_mean) * inv_beta)


@triton.jit
def _log1p(x):
    """log(1 + x) for −1/2 ≤ x ≤ 0 with full relative precision (Goldberg's correction)."""
    u = 1.0 + x
    exact = u == 1.0
    return tl.where(exact, x, tl.log(u) * (x / tl.where(exact, 1.0, u - 1.0)))


@triton.jit
def _online_update(m, e, s, count, total, row_ptr, col, bound, col_stride, beta, MASKED: tl.constexpr):
    """Fold the columns ``col`` (those below ``bound`` when MASKED) into the per-lane state."""
    mask = col < bound
    if MASKED:
        r = tl.load(row_ptr + col * col_stride, mask=mask, other=0.0).to(tl.float32)
    else:
        r = tl.load(row_ptr + col * col_stride).to(tl.float32)
    x = tl.where(beta == 0.0, 0.0, beta * r)  # β = 0: uniform weights
    if MASKED:
        x = tl.where(mask, x, float("-inf"))
    m_new = tl.maximum(m, x)
    delta = _offset(m, m_new)  # ≤ 0; -inf when a lane's first value above -inf arrives
    rel = _offset(x, m_new)
    if MASKED:
        rel = tl.where(mask, rel, 0.0)
    rescale = tl.exp(delta)
    fresh_e = tl.exp(rel)
    fresh_s = _expm1(rel)
    if MASKED:
        fresh_e = tl.where(mask, fresh_e, 0.0)
        fresh_s = tl.where(mask, fresh_s, 0.0)
    e = e * rescale + fresh_e
    s = s * rescale + count * tl.where(count > 0, _expm1(delta), 0.0) + fresh_s
    if MASKED:
        count += mask.to(tl.float32)
    else:
        count += 1.0
    total += r
    return m_new, e, s, count, total


@triton.jit
def renyi_forward_kernel(
    rows_ptr,  # logits r, a (rows, n) view: element (i, j) at rows_ptr + i*row_stride + j*col_stride
    out_ptr,  # SINGLE_SPLIT: D_α per row [rows], output dtype
    shift_ptr,  # SINGLE_SPLIT: fp32 per-row max m of β·r, saved for the backward
    expsum_ptr,  # SINGLE_SPLIT: fp32 per-row E = Σ exp(β·r − m), saved for the backward
    partial_ptr,  # several splits: fp32 [rows, splits, 5] of (m, E, S, count, Σr)
    n,  # columns per row (the reduced dimension), > 0
    n_vec,  # n rounded down to a multiple of 16 (masks against it stay vectorisable)
    row_stride_units,  # elements between rows / ROW_ALIGN (0 for a single row)
    col_stride,  # elements between columns
    beta,  # fp32 β = 1 − α
    inv_beta,  # fp32 1/β (0 when β = 0; unused then)
    log_n,  # fp32 log n
    blocks_per_split,  # columns each split covers / BLOCK
    SINGLE_SPLIT: tl.constexpr,  # one program per row: finish the row here
    HAS_TAIL: tl.constexpr,  # n % BLOCK != 0
    HAS_REMAINDER: tl.constexpr,  # n % 16 != 0
    ROW_ALIGN: tl.constexpr,  # a power of two dividing the row stride, so row starts keep their alignment
    INT64: tl.constexpr,  # 64-bit offsets
    BLOCK: tl.constexpr,  # columns per iteration (power of two, >= 16)
):
    # Full blocks without masks; the row's one partial block (the tail, in the split that
    # holds it) masked against n_vec so that it stays vectorised, then its last n % 16
    # columns (the remainder) masked against n.
    row = tl.program_id(0)
    split = tl.program_id(1)
    if INT64:
        row = row.to(tl.int64)
        split = split.to(tl.int64)
    row_ptr = rows_ptr + row * (row_stride_units * ROW_ALIGN)
    m = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    e = tl.zeros([BLOCK], dtype=tl.float32)
    s = tl.zeros([BLOCK], dtype=tl.float32)
    count = tl.zeros([BLOCK], dtype=tl.float32)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    full_blocks = n // BLOCK
    first = split * blocks_per_split
    last = tl.minimum(first + blocks_per_split, full_blocks)
    for block in range(first, last):
        m, e, s, count, total = _online_update(m, e, s, count, total, row_ptr, block * BLOCK + tl.arange(0, BLOCK),
                                               n, col_stride, beta, False)
    if HAS_TAIL:
        if split == full_blocks // blocks_per_split:
            m, e, s, count, total = _online_update(m, e, s, count, total, row_ptr,
                                                   full_blocks * BLOCK + tl.arange(0, BLOCK), n_vec, col_stride,
                                                   beta, True)
    big_m, e_all, s_all, count_all, total_all = _merge_lanes(m, e, s, count, total)
    if HAS_REMAINDER:  # the last n % 16 columns, on 16 lanes of their own, merged in after
        if split == full_blocks // blocks_per_split:
            rest = _online_update(tl.full([16], float("-inf"), dtype=tl.float32), tl.zeros([16], dtype=tl.float32),
                                  tl.zeros([16], dtype=tl.float32), tl.zeros([16], dtype=tl.float32),
                                  tl.zeros([16], dtype=tl.float32), row_ptr, n_vec + tl.arange(0, 16), n, col_stride,
                                  beta, True)
            rest_m, rest_e, rest_s, rest_count, rest_total = _merge_lanes(*rest)
            big_m, e_all, s_all, count_all, total_all = _merge_two(
                big_m, e_all, s_all, count_all, total_all, rest_m, rest_e, rest_s, rest_count, rest_total)
    if SINGLE_SPLIT:
        result = _finalize(big_m, e_all, s_all, total_all, n, beta, inv_beta, log_n)
        tl.store(out_ptr + row, result.to(out_ptr.dtype.element_ty))
        tl.store(shift_ptr + row, big_m)
        tl.store(expsum_ptr + row, e_all)
    else:
        base = partial_ptr + (row * tl.num_programs(1) + split) * 5
        tl.store(base + 0, big_m)
        tl.store(base + 1, e_all)
        tl.store(base + 2, s_all)
        tl.store(base + 3, count_all)
        tl.store(base + 4, total_all)


@triton.jit
def renyi_finish_kernel(
    partial_ptr,  # fp32 [rows, splits, 5] from renyi_forward_kernel
    out_ptr,  # D_α per row [rows], output dtype
    shift_ptr,  # fp32 per-row m
    expsum_ptr,  # fp32 per-row E
    splits,  # splits per row (<= SPLIT_BLOCK)
    n,
    beta,
    inv_beta,
    log_n,
    SPLIT_BLOCK: tl.constexpr,  # power of two >= splits
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, SPLIT_BLOCK)
    mask = offs < splits
    base = partial_ptr + (row * splits + offs) * 5
    m = tl.load(base + 0, mask=mask, other=float("-inf"))
    e = tl.load(base + 1, mask=mask, other=0.0)
    s = tl.load(base + 2, mask=mask, other=0.0)
    count = tl.load(base + 3, mask=mask, other=0.0)
    total = tl.load(base + 4, mask=mask, other=0.0)
    big_m, e_all, s_all, count_all, total_all = _merge_lanes(m, e, s, count, total)
    result = _finalize(big_m, e_all, s_all, total_all, n, beta, inv_beta, log_n)
    tl.store(out_ptr + row, result.to(out_ptr.dtype.element_ty))
    tl.store(shift_ptr + row, big_m)
    tl.store(expsum_ptr + row, e_all)


@triton.jit
def _renyi_grad_block(row_ptr, grad_row_ptr, col, bound, col_stride, g, shift, expsum, beta, MASKED: tl.constexpr):
    mask = col < bound
    if MASKED:
        r = tl.load(row_ptr + col * col_stride, mask=mask, other=0.0).to(tl.float32)
    else:
        r = tl.load(row_ptr + col * col_stride).to(tl.float32)
    grad = -g * tl.exp(_offset(tl.where(beta == 0.0, 0.0, beta * r), shift)) / expsum
    grad = grad.to(grad_row_ptr.dtype.element_ty)
    if MASKED:
        tl.store(grad_row_ptr + col, grad, mask=mask)
    else:
        tl.store(grad_row_ptr + col, grad)


@triton.jit
def renyi_backward_kernel(
    rows_ptr,  # logits r, the (rows, n) view the forward read
    grad_out_ptr,  # incoming gradient per row, element i at grad_out_ptr + i * grad_out_stride
    shift_ptr,  # fp32 per-row m from the forward
    expsum_ptr,  # fp32 per-row E from the forward
    grad_ptr,  # contiguous (rows, n) gradient −g·exp(β·r − m)/E, input dtype
    n,
    n_vec,  # n rounded down to a multiple of 16
    row_stride_units,  # rows' row stride / ROW_ALIGN (0 for a single row)
    grad_row_stride_units,  # n / ROW_ALIGN (0 for a single row)
    col_stride,
    grad_out_stride,
    beta,  # fp32 β
    blocks_per_row,  # ceil(n / BLOCK); the 1-d grid covers rows x blocks_per_row
    HAS_REMAINDER: tl.constexpr,  # n % 16 != 0
    ROW_ALIGN: tl.constexpr,  # a power of two dividing both row strides
    INT64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    row = pid // blocks_per_row
    block = pid % blocks_per_row
    row_ptr = rows_ptr + row * (row_stride_units * ROW_ALIGN)
    grad_row_ptr = grad_ptr + row * (grad_row_stride_units * ROW_ALIGN)
    g = tl.load(grad_out_ptr + row * grad_out_stride).to(tl.float32)
    shift = tl.load(shift_ptr + row)
    expsum = tl.load(expsum_ptr + row)
    col = block * BLOCK + tl.arange(0, BLOCK)
    if block < n // BLOCK:
        _renyi_grad_block(row_ptr, grad_row_ptr, col, n, col_stride, g, shift, expsum, beta, False)
    else:
        _renyi_grad_block(row_ptr, grad_row_ptr, col, n_vec, col_stride, g, shift, expsum, beta, True)
        if HAS_REMAINDER:
            _renyi_grad_block(row_ptr, grad_row_ptr, n_vec + tl.arange(0, 16), n, col_stride, g, shift, expsum,
                              beta, True)


VECTOR_GROUP = 16  # tails are masked in groups of 16 columns (whole 128-bit vectors of any dtype here)


def _reduction_warps(rows) -> int:
    """Warps per program of the forward: 8 for float32 (4 values, one 128-bit vector, per
    thread and block; half the registers of 4 warps, so twice the occupancy), 4 for 16-bit
    dtypes (8 per thread, which 8 warps would cut to 64-bit accesses)."""
    return 8 if rows.element_size() >= 4 else 4


def _row_align(*strides: int) -> int:
    """The largest power of two (at most 16) dividing every row stride; 16 when there are none."""
    align = 16
    for stride in strides:
        while stride % align:
            align //= 2
    return align


def _row_geometry(rows) -> tuple[int, int, int, int]:
    """(rows, n, row stride, column stride) of a (rows, n) view, or of a 1-d tensor taken as
    one row (the common case, passed without an unsqueeze: host time)."""
    if rows.dim() == 1:
        return 1, rows.shape[0], 0, rows.stride(0)
    num_rows, n = rows.shape
    return num_rows, n, rows.stride(0) if num_rows > 1 else 0, rows.stride(1)


def launch_renyi_forward(rows, out, shift, expsum, partials, beta, inv_beta, log_n, splits, cols_per_split,
                         needs_int64, block):
    """Launch the forward (and, for split rows, the finishing kernel) on a (rows, n) view or
    a 1-d tensor (one row)."""
    num_rows, n, row_stride, col_stride = _row_geometry(rows)
    align = _row_align(row_stride)
    renyi_forward_kernel[(num_rows, splits)](
        rows, out, shift, expsum, partials if partials is not None else shift,
        n, n - n % VECTOR_GROUP, row_stride // align, col_stride, beta, inv_beta, log_n, cols_per_split // block,
        SINGLE_SPLIT=splits == 1, HAS_TAIL=n % block != 0, HAS_REMAINDER=n % VECTOR_GROUP != 0, ROW_ALIGN=align,
        INT64=needs_int64, BLOCK=block, num_warps=_reduction_warps(rows),
    )
    if splits > 1:
        renyi_finish_kernel[(num_rows,)](
            partials, out, shift, expsum, splits, n, beta, inv_beta, log_n,
            SPLIT_BLOCK=max(16, triton.next_power_of_2(splits)),
        )


def launch_renyi_backward(rows, grad_out, shift, expsum, grad, beta, needs_int64, block):
    """Launch the backward on the forward's (rows, n) view or 1-d row; ``grad`` is contiguous
    and shaped like ``rows``, ``grad_out`` has one value per row (0-d for a 1-d row)."""
    num_rows, n, row_stride, col_stride = _row_geometry(rows)
    blocks_per_row = triton.cdiv(n, block)
    grad_row_stride = n if num_rows > 1 else 0
    align = _row_align(row_stride, grad_row_stride)
    renyi_backward_kernel[(num_rows * blocks_per_row,)](
        rows, grad_out, shift, expsum, grad, n, n - n % VECTOR_GROUP, row_stride // align, grad_row_stride // align,
        col_stride, grad_out.stride(0) if grad_out.dim() else 0, beta, blocks_per_row,
        HAS_REMAINDER=n % VECTOR_GROUP != 0, ROW_ALIGN=align, INT64=needs_int64, BLOCK=block,
    )
