"""Triton kernels for fused BatchNorm + LeakyReLU (installed as ``fastgan.kernels.batch_norm``).

Layout. Every tensor is seen as (N, C, S): S = the flattened spatial positions, element
(n, c, s) at n·stride_n + c·stride_c + s·stride_s. Contiguous NCHW has stride_s = 1,
channels_last has stride_c = 1; a tile is BLOCK_C channels × BLOCK_P positions, where a
position p = n·S + s runs over all N·S = P samples of a channel. The block shape is picked
by the caller so that the unit-stride dimension is the long one.

Forward (training), three launches:
  1. partial statistics: each (channel block, split) program walks its range of positions
     and keeps per channel (count, mean, M2) with Welford/Chan merges of two-pass tile
     statistics: tile mean, then tile M2 = Σ(x − tile mean)² (never E[x²] − E[x]²);
     merging (n_a, μ_a, M2_a) with (n_b, μ_b, M2_b): δ = μ_b − μ_a, n = n_a + n_b,
     μ = μ_a + δ·n_b/n, M2 = M2_a + M2_b + δ²·n_a·n_b/n.
  2. finalize: merge the splits, var = M2/P (biased, for normalising), invstd =
     1/sqrt(var + eps); update the running statistics in place with the unbiased
     M2/(P − 1) and factor = momentum, or 1/num_batches_tracked (cumulative average) read
     on the device, so no host synchronisation.
  3. elementwise: y = leaky_relu(x·a + b) with a = w·invstd, b = bias − mean·a.
Eval is launch 3 alone with a, b from the running statistics.

Synchronised (multi-device) training splits this between the devices' launches: each
device merges its splits into one (count, mean, M2) row [3, C] (bn_merge_partials_kernel),
the caller all-gathers the rows into [devices, 3, C], and the finalize merges those rows
exactly as it merges splits (Chan's formula is associative), with P the global count.

Backward. With x̂ = (x − μ)·invstd, z = w·x̂ + bias, y = z if z > 0 else slope·z:
    dz = dy if z > 0 else slope·dy
    dbias = Σ dz,   dw = Σ dz·x̂                 (sums over the P positions of a channel)
    training: dx = w·invstd·(dz − Σdz/P − x̂·Σ(dz·x̂)/P)   (μ and σ depend on x)
    eval:     dx = w·invstd·dz
Two data passes: a reduction (per-split partial Σdz, Σdz·x̂), a tiny finalize over C (dw,
dbias, and the two coefficients), and the elementwise dx pass. Only x is saved.
Synchronised: the finalize writes the device's raw sums (scale 1 instead of 1/P), the caller
sums them over the devices and divides by the global P, and the dx pass reads the result;
dw and dbias stay the device's own sums, as in nn.SyncBatchNorm (data parallelism reduces
parameter gradients itself).
"""

import triton
import triton.language as tl


@triton.jit
def _aligned(value, ALIGN: tl.constexpr):
    """``value`` itself, written so the compiler knows it is a multiple of ALIGN (the launcher
    guarantees it is): masks and offsets built from it then keep runs of ALIGN elements
    contiguous and aligned, which is what 128-bit accesses need."""
    return (value // ALIGN) * ALIGN


@triton.jit
def _tile_offsets(channels, positions, S, stride_n, stride_c, stride_s, INT64: tl.constexpr,
                  CHANNELS_LAST: tl.constexpr, ALIGN: tl.constexpr):
    """Element offsets of a (BLOCK_C, BLOCK_P) tile; positions p = n·S + s. ALIGN divides the
    sizes and strides the contiguous dimension's addresses depend on (see _layout_alignment)."""
    if INT64:
        positions = positions.to(tl.int64)
        channels = channels.to(tl.int64)
    if CHANNELS_LAST:
        stride_n = _aligned(stride_n, ALIGN)
        stride_s = _aligned(stride_s, ALIGN)
    else:
        S = _aligned(S, ALIGN)
        stride_n = _aligned(stride_n, ALIGN)
        stride_c = _aligned(stride_c, ALIGN)
    n = positions // S
    s = positions - n * S
    return n[None, :] * stride_n + channels[:, None] * stride_c + s[None, :] * stride_s


@triton.jit
def _channel_count(C, CHANNELS_LAST: tl.constexpr, ALIGN: tl.constexpr):
    """C, written as a multiple of ALIGN for channels_last (where the launcher guarantees it),
    so that the per-channel vectors and their rows in [k, C] buffers are accessed whole
    vectors at a time too."""
    if CHANNELS_LAST:
        C = _aligned(C, ALIGN)
    return C


@triton.jit
def _tile_mask(channels, positions, C, end, CHANNELS_LAST: tl.constexpr, ALIGN: tl.constexpr):
    """In-bounds lanes of a tile: channels < C and positions < end, with the bound of the
    contiguous dimension written as a multiple of ALIGN so that the mask is constant over
    whole vectors."""
    if CHANNELS_LAST:
        C = _aligned(C, ALIGN)
    else:
        end = _aligned(end, ALIGN)
    return (channels < C)[:, None] & (positions < end)[None, :]


@triton.jit
def _normalise_coefficients(channels, c_mask, mean_ptr, stat_ptr, weight_ptr, bias_ptr, eps,
                            STAT_IS_INVSTD: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Per-channel (mean, invstd, w, bias) in fp32; stat is invstd (saved batch statistics)
    or a variance (running statistics, eval) turned into 1/sqrt(var + eps)."""
    mean = tl.load(mean_ptr + channels, mask=c_mask, other=0.0).to(tl.float32)
    stat = tl.load(stat_ptr + channels, mask=c_mask, other=1.0).to(tl.float32)
    if STAT_IS_INVSTD:
        invstd = stat
    else:
        invstd = 1.0 / tl.sqrt(stat + eps)
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + channels, mask=c_mask, other=1.0).to(tl.float32)
    else:
        w = tl.full(mean.shape, 1.0, tl.float32)
    if HAS_BIAS:
        b = tl.load(bias_ptr + channels, mask=c_mask, other=0.0).to(tl.float32)
    else:
        b = tl.zeros(mean.shape, tl.float32)
    return mean, invstd, w, b


@triton.jit
def bn_partial_statistics_kernel(
    x_ptr,                 # input x, (N, C, S) with the strides below
    partials_ptr,          # fp32 [splits, 3, C]: (count, mean, M2) of each split's positions
    C, S, P,               # channels, spatial positions per sample, P = N·S
    stride_n, stride_c, stride_s,
    positions_per_split,   # positions each split covers (a multiple of BLOCK_P)
    INT64: tl.constexpr,   # 64-bit offsets (tensors beyond 2^31 elements)
    CHANNELS_LAST: tl.constexpr,  # channels are the contiguous dimension (else positions are)
    ALIGN: tl.constexpr,   # power of two dividing the contiguous dimension's sizes and strides
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    channels = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    C = _channel_count(C, CHANNELS_LAST, ALIGN)
    c_mask = channels < C
    start = split * positions_per_split
    end = tl.minimum(start + positions_per_split, P)
    count = tl.zeros([BLOCK_C], tl.float32)
    mean = tl.zeros([BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_C], tl.float32)
    for p0 in range(start, end, BLOCK_P):
        positions = p0 + tl.arange(0, BLOCK_P)
        mask = _tile_mask(channels, positions, C, end, CHANNELS_LAST, ALIGN)
        offsets = _tile_offsets(channels, positions, S, stride_n, stride_c, stride_s, INT64, CHANNELS_LAST, ALIGN)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tile_count = tl.minimum(end - p0, BLOCK_P).to(tl.float32)
        tile_mean = tl.sum(x, axis=1) / tile_count
        centred = tl.where(mask, x - tile_mean[:, None], 0.0)
        tile_m2 = tl.sum(centred * centred, axis=1)
        total = count + tile_count
        delta = tile_mean - mean
        mean += delta * (tile_count / total)
        m2 += tile_m2 + delta * delta * (count * tile_count / total)
        count = total
    out = partials_ptr + split * 3 * C + channels
    tl.store(out, count, mask=c_mask)
    tl.store(out + C, mean, mask=c_mask)
    tl.store(out + 2 * C, m2, mask=c_mask)


@triton.jit
def _merge_rows(partials_ptr, rows, C, channels, c_mask, BLOCK_C: tl.constexpr):
    """Chan's merge of ``rows`` (count, mean, M2) rows of fp32 [rows, 3, C], in order
    (deterministic); rows with count 0 (an empty split or device) change nothing."""
    count = tl.zeros([BLOCK_C], tl.float32)
    mean = tl.zeros([BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_C], tl.float32)
    for index in range(0, rows):
        row = partials_ptr + index * 3 * C + channels
        n_b = tl.load(row, mask=c_mask, other=0.0)
        mean_b = tl.load(row + C, mask=c_mask, other=0.0)
        m2_b = tl.load(row + 2 * C, mask=c_mask, other=0.0)
        total = count + n_b
        delta = mean_b - mean
        ratio = tl.where(total > 0, n_b / tl.maximum(total, 1.0), 0.0)
        mean += delta * ratio
        m2 += m2_b + delta * delta * count * ratio
        count = total
    return count, mean, m2


@triton.jit
def bn_merge_partials_kernel(
    partials_ptr,          # fp32 [splits, 3, C] from bn_partial_statistics_kernel
    merged_ptr,            # fp32 [3, C] out: (count, mean, M2) of all the splits, one row of the same form
    splits, C,
    BLOCK_C: tl.constexpr,
):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = channels < C
    count, mean, m2 = _merge_rows(partials_ptr, splits, C, channels, c_mask, BLOCK_C)
    tl.store(merged_ptr + channels, count, mask=c_mask)
    tl.store(merged_ptr + C + channels, mean, mask=c_mask)
    tl.store(merged_ptr + 2 * C + channels, m2, mask=c_mask)


@triton.jit
def bn_finalize_statistics_kernel(
    partials_ptr,          # fp32 [splits, 3, C] (count, mean, M2) rows: the splits, or every device's merged row
    mean_ptr,              # fp32 [C] out: batch mean, saved for the backward
    invstd_ptr,            # fp32 [C] out: 1/sqrt(biased var + eps), saved for the backward
    running_mean_ptr,      # [C] running mean, updated in place (any float dtype) when HAS_RUNNING
    running_var_ptr,       # [C] running variance (unbiased estimate), updated in place
    num_batches_tracked_ptr,  # int64 [1], already incremented; read when CUMULATIVE
    splits, C,             # splits: the number of rows in partials
    momentum,              # running-statistics factor (unused when CUMULATIVE)
    eps,
    HAS_RUNNING: tl.constexpr, CUMULATIVE: tl.constexpr,  # CUMULATIVE: momentum=None, factor 1/num_batches_tracked
    BLOCK_C: tl.constexpr,
):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = channels < C
    count, mean, m2 = _merge_rows(partials_ptr, splits, C, channels, c_mask, BLOCK_C)
    invstd = 1.0 / tl.sqrt(m2 / count + eps)
    tl.store(mean_ptr + channels, mean, mask=c_mask)
    tl.store(invstd_ptr + channels, invstd, mask=c_mask)
    if HAS_RUNNING:
        if CUMULATIVE:
            factor = 1.0 / tl.load(num_batches_tracked_ptr).to(tl.float32)
        else:
            factor = momentum
        running_mean = tl.load(running_mean_ptr + channels, mask=c_mask, other=0.0).to(tl.float32)
        running_var = tl.load(running_var_ptr + channels, mask=c_mask, other=0.0).to(tl.float32)
        unbiased = m2 / (count - 1.0)
        tl.store(running_mean_ptr + channels, running_mean + factor * (mean - running_mean), mask=c_mask)
        tl.store(running_var_ptr + channels, running_var + factor * (unbiased - running_var), mask=c_mask)


@triton.jit
def bn_leaky_relu_forward_kernel(
    x_ptr, y_ptr,          # input and output, (N, C, S) each with its own strides
    mean_ptr, stat_ptr,    # per-channel mean and invstd (training) or running mean and variance (eval)
    weight_ptr, bias_ptr,  # affine parameters [C] (absent: 1 and 0)
    C, S, P,
    x_stride_n, x_stride_c, x_stride_s,
    y_stride_n, y_stride_c, y_stride_s,
    eps,                   # used only when the stat is a variance
    slope,                 # LeakyReLU negative slope (0: ReLU)
    STAT_IS_INVSTD: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    INT64: tl.constexpr, CHANNELS_LAST: tl.constexpr, ALIGN: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    positions = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    C = _channel_count(C, CHANNELS_LAST, ALIGN)
    c_mask = channels < C
    mask = _tile_mask(channels, positions, C, P, CHANNELS_LAST, ALIGN)
    mean, invstd, w, b = _normalise_coefficients(
        channels, c_mask, mean_ptr, stat_ptr, weight_ptr, bias_ptr, eps, STAT_IS_INVSTD, HAS_WEIGHT, HAS_BIAS
    )
    scale = w * invstd
    shift = b - mean * scale
    x = tl.load(x_ptr + _tile_offsets(channels, positions, S, x_stride_n, x_stride_c, x_stride_s, INT64,
                                      CHANNELS_LAST, ALIGN),
                mask=mask, other=0.0).to(tl.float32)
    z = x * scale[:, None] + shift[:, None]
    y = tl.where(z > 0, z, z * slope)
    tl.store(y_ptr + _tile_offsets(channels, positions, S, y_stride_n, y_stride_c, y_stride_s, INT64,
                                   CHANNELS_LAST, ALIGN),
             y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _activation_grad(x, dy, mean, invstd, w, b, slope):
    """(x̂, dz) of a tile: dz = dy where z = w·x̂ + bias > 0, else slope·dy."""
    xhat = (x - mean[:, None]) * invstd[:, None]
    z = xhat * w[:, None] + b[:, None]
    return xhat, tl.where(z > 0, dy, dy * slope)


@triton.jit
def bn_leaky_relu_backward_reduce_kernel(
    grad_out_ptr, x_ptr,   # dy and the saved input, (N, C, S) with their own strides
    mean_ptr, stat_ptr, weight_ptr, bias_ptr,  # as in the forward
    partials_ptr,          # fp32 [splits, 2, C] out: per split Σdz and Σdz·x̂
    C, S, P,
    g_stride_n, g_stride_c, g_stride_s,
    x_stride_n, x_stride_c, x_stride_s,
    positions_per_split, eps, slope,
    STAT_IS_INVSTD: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    INT64: tl.constexpr, CHANNELS_LAST: tl.constexpr, ALIGN: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(1)
    C = _channel_count(C, CHANNELS_LAST, ALIGN)
    c_mask = channels < C
    mean, invstd, w, b = _normalise_coefficients(
        channels, c_mask, mean_ptr, stat_ptr, weight_ptr, bias_ptr, eps, STAT_IS_INVSTD, HAS_WEIGHT, HAS_BIAS
    )
    start = split * positions_per_split
    end = tl.minimum(start + positions_per_split, P)
    # Per-lane sums, reduced across the tile once after the loop: a cross-thread reduction
    # per tile would cost shared memory and registers in every iteration.
    acc_dz = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    acc_dz_xhat = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    for p0 in range(start, end, BLOCK_P):
        positions = p0 + tl.arange(0, BLOCK_P)
        mask = _tile_mask(channels, positions, C, end, CHANNELS_LAST, ALIGN)
        x = tl.load(x_ptr + _tile_offsets(channels, positions, S, x_stride_n, x_stride_c, x_stride_s, INT64,
                                          CHANNELS_LAST, ALIGN),
                    mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(grad_out_ptr + _tile_offsets(channels, positions, S, g_stride_n, g_stride_c, g_stride_s, INT64,
                                                  CHANNELS_LAST, ALIGN),
                     mask=mask, other=0.0).to(tl.float32)
        xhat, dz = _activation_grad(x, dy, mean, invstd, w, b, slope)
        acc_dz += dz
        acc_dz_xhat += tl.where(mask, dz * xhat, 0.0)
    sum_dz = tl.sum(acc_dz, axis=1)
    sum_dz_xhat = tl.sum(acc_dz_xhat, axis=1)
    out = partials_ptr + split * 2 * C + channels
    tl.store(out, sum_dz, mask=c_mask)
    tl.store(out + C, sum_dz_xhat, mask=c_mask)


@triton.jit
def bn_leaky_relu_backward_finalize_kernel(
    partials_ptr,          # fp32 [splits, 2, C] from the reduce kernel
    grad_weight_ptr,       # [C] out: Σdz·x̂ (when HAS_GRAD_WEIGHT), the weight's dtype
    grad_bias_ptr,         # [C] out: Σdz (when HAS_GRAD_BIAS)
    coefficients_ptr,      # fp32 [2, C] out: Σdz/P and Σdz·x̂/P (training only)
    splits, C, inv_p,      # inv_p = 1/P (1: the raw sums, for a caller that adds devices' sums first)
    TRAINING: tl.constexpr, HAS_GRAD_WEIGHT: tl.constexpr, HAS_GRAD_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = channels < C
    sum_dz = tl.zeros([BLOCK_C], tl.float32)
    sum_dz_xhat = tl.zeros([BLOCK_C], tl.float32)
    for split in range(0, splits):
        row = partials_ptr + split * 2 * C + channels
        sum_dz += tl.load(row, mask=c_mask, other=0.0)
        sum_dz_xhat += tl.load(row + C, mask=c_mask, other=0.0)
    if HAS_GRAD_WEIGHT:
        tl.store(grad_weight_ptr + channels, sum_dz_xhat.to(grad_weight_ptr.dtype.element_ty), mask=c_mask)
    if HAS_GRAD_BIAS:
        tl.store(grad_bias_ptr + channels, sum_dz.to(grad_bias_ptr.dtype.element_ty), mask=c_mask)
    if TRAINING:
        tl.store(coefficients_ptr + channels, sum_dz * inv_p, mask=c_mask)
        tl.store(coefficients_ptr + C + channels, sum_dz_xhat * inv_p, mask=c_mask)


@triton.jit
def bn_leaky_relu_backward_input_kernel(
    grad_out_ptr, x_ptr, grad_x_ptr,  # dy, saved x, dx: (N, C, S) each with its own strides
    mean_ptr, stat_ptr, weight_ptr, bias_ptr,
    coefficients_ptr,      # fp32 [2, C] from the finalize kernel (training only)
    C, S, P,
    g_stride_n, g_stride_c, g_stride_s,
    x_stride_n, x_stride_c, x_stride_s,
    dx_stride_n, dx_stride_c, dx_stride_s,
    eps, slope,
    TRAINING: tl.constexpr, STAT_IS_INVSTD: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    INT64: tl.constexpr, CHANNELS_LAST: tl.constexpr, ALIGN: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    positions = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    C = _channel_count(C, CHANNELS_LAST, ALIGN)
    c_mask = channels < C
    mask = _tile_mask(channels, positions, C, P, CHANNELS_LAST, ALIGN)
    mean, invstd, w, b = _normalise_coefficients(
        channels, c_mask, mean_ptr, stat_ptr, weight_ptr, bias_ptr, eps, STAT_IS_INVSTD, HAS_WEIGHT, HAS_BIAS
    )
    x = tl.load(x_ptr + _tile_offsets(channels, positions, S, x_stride_n, x_stride_c, x_stride_s, INT64,
                                      CHANNELS_LAST, ALIGN),
                mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(grad_out_ptr + _tile_offsets(channels, positions, S, g_stride_n, g_stride_c, g_stride_s, INT64,
                                              CHANNELS_LAST, ALIGN),
                 mask=mask, other=0.0).to(tl.float32)
    xhat, dz = _activation_grad(x, dy, mean, invstd, w, b, slope)
    if TRAINING:
        mean_dz = tl.load(coefficients_ptr + channels, mask=c_mask, other=0.0)
        mean_dz_xhat = tl.load(coefficients_ptr + C + channels, mask=c_mask, other=0.0)
        dz = dz - mean_dz[:, None] - xhat * mean_dz_xhat[:, None]
    dx = dz * (w * invstd)[:, None]
    tl.store(grad_x_ptr + _tile_offsets(channels, positions, S, dx_stride_n, dx_stride_c, dx_stride_s, INT64,
                                        CHANNELS_LAST, ALIGN),
             dx.to(grad_x_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------
# Launchers: 3-d (N, C, S) views and a plan from fastgan.ops.batch_norm; the CUDA twins in
# fastgan._cuda take the same arguments.
# --------------------------------------------------------------------------------------


# Warps per program: the channels_last tile (32 x 64) over 8 warps holds half the values per
# thread that 4 would, which keeps the backward reduction near 50 registers (fp32) instead
# of 72 and raises its occupancy; the channels-first tile (2 x 512) is small enough for 4.
_CHANNELS_LAST_WARPS = 8
_CHANNELS_FIRST_WARPS = 4


def _tile_launch(plan, *tensors) -> dict:
    """The launch keywords of a tile kernel: num_warps (see above), CHANNELS_LAST (the tile's
    contiguous dimension is the channels) and ALIGN, the largest
    power of two up to 16 dividing every size and stride the contiguous dimension's addresses
    depend on, for all of ``tensors`` (N, C, S views): the channel count and the position
    strides for channels_last, the spatial size and the sample/channel strides otherwise.
    Strides of size-1 dimensions are left out (that coordinate is always 0). 1 when the
    contiguous dimension is not unit-stride in every tensor."""
    n, c, s = tensors[0].shape
    channels_last = plan.channels_last
    unit = 1 if channels_last else 2
    warps = _CHANNELS_LAST_WARPS if channels_last else _CHANNELS_FIRST_WARPS
    if any(t.stride(unit) != 1 for t in tensors if t.shape[unit] > 1):
        return dict(CHANNELS_LAST=channels_last, ALIGN=1, num_warps=warps)
    values = [c] if channels_last else [s]
    for t in tensors:
        others = (0, 2) if channels_last else (0, 1)
        values += [t.stride(d) for d in others if t.shape[d] > 1]
    align = 16
    for value in values:
        while value % align:
            align //= 2
    return dict(CHANNELS_LAST=channels_last, ALIGN=align, num_warps=warps)


def _finalize_block(channels: int) -> int:
    return min(1024, max(16, triton.next_power_of_2(channels)))


def launch_batch_norm_forward_train(x, y, weight, bias, running_mean, running_var, num_batches_tracked, mean, invstd,
                                    partials, *, plan, momentum, cumulative, eps, slope):
    """Statistics, finalize (running statistics updated in place) and the elementwise pass."""
    _launch_partial_statistics(x, partials, plan)
    launch_batch_norm_forward_from_statistics(
        x, y, weight, bias, running_mean, running_var, num_batches_tracked, mean, invstd, partials,
        plan=plan, momentum=momentum, cumulative=cumulative, eps=eps, slope=slope,
    )


def launch_batch_norm_statistics(x, partials, merged, *, plan):
    """The first stage of a synchronised training forward: the per-split statistics of ``x``
    into ``partials`` (fp32 [splits, 3, C]), merged into ``merged`` (fp32 [3, C], one
    (count, mean, M2) row; zeros for an empty ``x``)."""
    c = x.shape[1]
    _launch_partial_statistics(x, partials, plan)
    block = _finalize_block(c)
    bn_merge_partials_kernel[(triton.cdiv(c, block),)](partials, merged, plan.splits, c, BLOCK_C=block)


def launch_batch_norm_forward_from_statistics(x, y, weight, bias, running_mean, running_var, num_batches_tracked, mean,
                                              invstd, statistics, *, plan, momentum, cumulative, eps, slope):
    """Finalize over the rows of ``statistics`` (fp32 [rows, 3, C]: the splits of ``x``, or
    every device's merged row), updating the running statistics, then the elementwise pass."""
    c = x.shape[1]
    has_running = running_mean is not None
    block = _finalize_block(c)
    bn_finalize_statistics_kernel[(triton.cdiv(c, block),)](
        statistics, mean, invstd,
        running_mean if has_running else mean, running_var if has_running else invstd,
        num_batches_tracked if cumulative else mean,
        statistics.shape[0], c, momentum, eps,
        HAS_RUNNING=has_running, CUMULATIVE=cumulative, BLOCK_C=block,
    )
    _launch_elementwise(x, y, mean, invstd, weight, bias, plan=plan, eps=eps, slope=slope, stat_is_invstd=True)


def launch_batch_norm_forward_eval(x, y, weight, bias, running_mean, running_var, *, plan, eps, slope):
    """One elementwise pass normalising with the running statistics."""
    _launch_elementwise(x, y, running_mean, running_var, weight, bias, plan=plan, eps=eps, slope=slope,
                        stat_is_invstd=False)


def _launch_partial_statistics(x, partials, plan):
    n, c, s = x.shape
    bn_partial_statistics_kernel[(triton.cdiv(c, plan.block_c), plan.splits)](
        x, partials, c, s, n * s, *x.stride(), plan.positions_per_split,
        INT64=plan.needs_int64, BLOCK_C=plan.block_c, BLOCK_P=plan.block_p, **_tile_launch(plan, x),
    )


def _launch_elementwise(x, y, mean, stat, weight, bias, *, plan, eps, slope, stat_is_invstd):
    n, c, s = x.shape
    p = n * s
    if p == 0:  # an empty grid (a device with no samples in a synchronised batch)
        return
    grid = (triton.cdiv(c, plan.block_c), triton.cdiv(p, plan.block_p))
    bn_leaky_relu_forward_kernel[grid](
        x, y, mean, stat, weight if weight is not None else mean, bias if bias is not None else mean,
        c, s, p, *x.stride(), *y.stride(), eps, slope,
        STAT_IS_INVSTD=stat_is_invstd, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        INT64=plan.needs_int64, BLOCK_C=plan.block_c, BLOCK_P=plan.block_p, **_tile_launch(plan, x, y),
    )


def launch_batch_norm_backward(grad_out, x, weight, bias, mean, stat, grad_x, grad_weight, grad_bias, partials,
                               coefficients, *, plan, training, stat_is_invstd, eps, slope):
    """Reduction, finalize (dw, dbias) and, when ``grad_x`` is given, the elementwise dx pass."""
    n, c, s = x.shape
    p = n * s
    if training or grad_weight is not None or grad_bias is not None:
        _launch_backward_sums(grad_out, x, weight, bias, mean, stat, grad_weight, grad_bias, partials, coefficients,
                              plan=plan, training=training, stat_is_invstd=stat_is_invstd, inv_p=1.0 / p, eps=eps,
                              slope=slope)
    if grad_x is not None:
        _launch_backward_input(grad_out, x, grad_x, weight, bias, mean, stat, coefficients, plan=plan,
                               training=training, stat_is_invstd=stat_is_invstd, eps=eps, slope=slope)


def launch_batch_norm_backward_sums(grad_out, x, weight, bias, mean, invstd, grad_weight, grad_bias, partials, sums, *,
                                    plan, eps, slope):
    """The first stage of a synchronised training backward: this device's dw, dbias (when
    given) and raw sums (Σdz, Σdz·x̂) into ``sums`` (fp32 [2, C]; zeros for an empty ``x``)."""
    _launch_backward_sums(grad_out, x, weight, bias, mean, invstd, grad_weight, grad_bias, partials, sums, plan=plan,
                          training=True, stat_is_invstd=True, inv_p=1.0, eps=eps, slope=slope)


def launch_batch_norm_backward_input(grad_out, x, grad_x, weight, bias, mean, invstd, coefficients, *, plan, eps,
                                     slope):
    """The last stage of a synchronised training backward: dx from the global coefficients
    (fp32 [2, C]: Σdz/P and Σdz·x̂/P summed over every device, P the global count)."""
    _launch_backward_input(grad_out, x, grad_x, weight, bias, mean, invstd, coefficients, plan=plan, training=True,
                           stat_is_invstd=True, eps=eps, slope=slope)


def _backward_constants(weight, bias, plan, stat_is_invstd, *tensors):
    return dict(STAT_IS_INVSTD=stat_is_invstd, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
                INT64=plan.needs_int64, BLOCK_C=plan.block_c, BLOCK_P=plan.block_p,
                **_tile_launch(plan, *tensors))


def _launch_backward_sums(grad_out, x, weight, bias, mean, stat, grad_weight, grad_bias, partials, coefficients, *,
                          plan, training, stat_is_invstd, inv_p, eps, slope):
    n, c, s = x.shape
    bn_leaky_relu_backward_reduce_kernel[(triton.cdiv(c, plan.block_c), plan.splits)](
        grad_out, x, mean, stat, weight if weight is not None else mean, bias if bias is not None else mean, partials,
        c, s, n * s, *grad_out.stride(), *x.stride(), plan.positions_per_split, eps, slope,
        **_backward_constants(weight, bias, plan, stat_is_invstd, grad_out, x),
    )
    block = _finalize_block(c)
    bn_leaky_relu_backward_finalize_kernel[(triton.cdiv(c, block),)](
        partials,
        grad_weight if grad_weight is not None else partials,
        grad_bias if grad_bias is not None else partials,
        coefficients if coefficients is not None else partials,
        plan.splits, c, inv_p,
        TRAINING=training, HAS_GRAD_WEIGHT=grad_weight is not None, HAS_GRAD_BIAS=grad_bias is not None,
        BLOCK_C=block,
    )


def _launch_backward_input(grad_out, x, grad_x, weight, bias, mean, stat, coefficients, *, plan, training,
                           stat_is_invstd, eps, slope):
    n, c, s = x.shape
    p = n * s
    if p == 0:
        return
    grid = (triton.cdiv(c, plan.block_c), triton.cdiv(p, plan.block_p))
    bn_leaky_relu_backward_input_kernel[grid](
        grad_out, x, grad_x, mean, stat, weight if weight is not None else mean, bias if bias is not None else mean,
        coefficients if coefficients is not None else mean,
        c, s, p, *grad_out.stride(), *x.stride(), *grad_x.stride(), eps, slope,
        TRAINING=training, **_backward_constants(weight, bias, plan, stat_is_invstd, grad_out, x, grad_x),
    )
