"""Triton kernels for fused BatchNorm + LeakyReLU (installed as ``fastgan.kernels.batch_norm``);
the twin of csrc/batch_norm.cu, launch for launch.

Layout. Every tensor is seen as (N, C, S): S = the flattened spatial positions, element
(n, c, s) at n·stride_n + c·stride_c + s·stride_s. Contiguous NCHW has stride_s = 1,
channels_last has stride_c = 1; a tile is BLOCK_C channels × BLOCK_P positions, where a
position p = n·S + s runs over all N·S = P samples of a channel. The block shape is picked
by the caller so that the unit-stride dimension is the long one.

Accuracy when |mean| ≫ std (eager PyTorch's CPU float32 is the yardstick: it accumulates in
double): the statistics are of x − K, K = x[0, c, 0] the channel's pivot, which every split
reads, so float32 keeps the spread instead of the mean's digits; the per-channel merges and
scalars (mean, invstd, Σdz·x̂ = invstd·Σdz·(x − μ), eval's 1/sqrt(var + eps) and w·invstd) are
computed in float64 and rounded once (per-channel work: it costs nothing that matters); every
elementwise pass centres first, (x − μ)·(w·invstd) + b, never x·a + (bias − μ·a), which
cancels; the gradient sums are compensated: per lane in float32 (TwoSum, each product's
rounding error recovered exactly by an FMA; the reduction kernel is compiled without FP
contraction, which would fuse a product into its sum and break that), across a program's
lanes once in float64, and over the splits in float32 pairs again.

Forward (training), three launches:
  1. partial statistics: each (channel block, split) program walks its range of positions
     and keeps per channel (count, mean − K, M2) with Welford/Chan merges of two-pass tile
     statistics of the shifted values x − K: tile mean, then tile M2 = Σ(x − K − tile mean)²
     (never E[x²] − E[x]²); merging (n_a, μ_a, M2_a) with (n_b, μ_b, M2_b): δ = μ_b − μ_a,
     n = n_a + n_b, μ = μ_a + δ·n_b/n, M2 = M2_a + M2_b + δ²·n_a·n_b/n. Out: fp32
     [splits, 3, C].
  2. finalize (float64): merge the splits in order with the same formula, means relative to
     the first non-empty row's; μ = K + merged mean rounded once to float32, and its rounding
     residual ρ = μ_exact − μ; var = M2/P (biased, for normalising), invstd =
     1/sqrt(var + eps) rounded once; update the running statistics in place with the unbiased
     M2/(P − 1) and factor = momentum, or 1/num_batches_tracked (cumulative average) read on
     the device, so no host synchronisation. ρ goes to an fp32 [C] output saved for the
     backward (or, without one, to the first split row's count slots, which only this
     channel's program has read).
  3. elementwise: y = leaky_relu((x − μ)·a + b) with a = w·invstd, b = bias − ρ·a.
Eval is launch 3 alone with μ, var from the running statistics (ρ = 0).

Synchronised (multi-device) training splits this between the devices' launches: each
device merges its splits into one (count, mean, M2, mean residual) row [4, C]
(bn_merge_partials_kernel), the mean un-shifted (K + merged mean, rounded once, plus what the
rounding dropped) so that devices with different pivots combine as they are; the caller
all-gathers the rows into [devices, 4, C], and the finalize merges those rows exactly as it
merges splits (Chan's formula is associative; each row's mean is its float32 mean plus its
residual), with P the global count; ρ then goes to the saved output (or the first device row's residual
slots).

Backward. With x̂ = ((x − μ) − ρ)·invstd, z = (x − μ)·a + b as in the forward (training; ρ = 0
in eval), y = z if z > 0 else slope·z:
    dz = dy if z > 0 else slope·dy
    dbias = Σ dz,   dw = Σ dz·x̂ = invstd·Σ dz·((x − μ) − ρ)    (sums over the P positions of a channel)
Without ρ the backward's z would differ from the forward's by up to |ρ·a| (~1e-4·ulp(μ)·a),
enough to flip the activation's branch for elements near 0 when |mean| ≫ std.
    training: dx = w·invstd·(dz − Σdz/P − x̂·Σ(dz·x̂)/P)   (μ and σ depend on x)
    eval:     dx = w·invstd·dz
(the training line: y depends on x directly and through μ = Σx/P and invstd =
(Σ(x − μ)²/P + eps)^(−1/2); ∂μ/∂x = 1/P and ∂invstd/∂x = −invstd³·(x − μ)/P, so
∂L/∂x = w·invstd·dz − w·invstd·Σdz/P − w·invstd·x̂·Σ(dz·x̂)/P, the middle term from μ, the
last from invstd; the Σ(x − μ) = 0 term drops out.)
Two data passes: a reduction (per-split compensated Σdz, Σdz·(x − μ) and their rounding
errors, fp32 [splits, 4, C]), a tiny finalize over C (dw, dbias, and the two coefficients),
and the elementwise dx pass. Only x is saved. The backward's z leaves out the forward's ρ, a
change far below float32's resolution of z, like eager's float32 saved mean.
Synchronised: the finalize writes the device's raw sums (scale 1 instead of 1/P), the caller
sums them over the devices and divides by the global P, and the dx pass reads the result;
dw and dbias stay the device's own sums, as in nn.SyncBatchNorm (data parallelism reduces
parameter gradients itself).
"""

import functools

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
def _invstd_f64(stat, eps, STAT_IS_INVSTD: tl.constexpr):
    """invstd in float64: the saved float32 invstd, or 1/sqrt(var + eps) of a variance
    (running statistics) computed in float64, so what is derived from it is rounded once."""
    if STAT_IS_INVSTD:
        return stat.to(tl.float64)
    else:
        return 1.0 / tl.sqrt(stat.to(tl.float64) + eps)


@triton.jit
def _normalise_coefficients(channels, c_mask, mean_ptr, stat_ptr, weight_ptr, bias_ptr, residual_ptr, eps,
                            STAT_IS_INVSTD: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                            HAS_RESIDUAL: tl.constexpr):
    """Per-channel fp32 (mean, residual, invstd, scale = w·invstd, shift) with z = (x − mean)·scale
    + shift and x̂ = ((x − mean) − residual)·invstd: stat is invstd (saved batch statistics) or a
    variance (running statistics, eval), and shift = bias − residual·scale takes the mean's float32
    rounding residual (training, forward and backward alike, so that the backward's activation
    mask is the forward's; 0 without HAS_RESIDUAL)."""
    mean = tl.load(mean_ptr + channels, mask=c_mask, other=0.0).to(tl.float32)
    stat = tl.load(stat_ptr + channels, mask=c_mask, other=1.0)
    invstd = _invstd_f64(stat, eps, STAT_IS_INVSTD)
    if HAS_WEIGHT:
        scale = tl.load(weight_ptr + channels, mask=c_mask, other=1.0).to(tl.float64) * invstd
    else:
        scale = invstd
    scale = scale.to(tl.float32)
    if HAS_BIAS:
        shift = tl.load(bias_ptr + channels, mask=c_mask, other=0.0).to(tl.float32)
    else:
        shift = tl.zeros(mean.shape, tl.float32)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + channels, mask=c_mask, other=0.0).to(tl.float32)
        shift -= residual * scale
    else:
        residual = tl.zeros(mean.shape, tl.float32)
    return mean, residual, invstd.to(tl.float32), scale, shift


@triton.jit
def _channel_pivot(x_ptr, channels, c_mask, stride_c, P, INT64: tl.constexpr):
    """The statistics pivot K_c = x[0, c, 0] (0 for an empty batch): the reductions accumulate
    x − K_c, whose mean is O(std) rather than O(|mean|), so float32 loses nothing to
    |mean| ≫ std; every split of a channel reads the same K_c."""
    has_values = tl.zeros_like(channels) < P
    if INT64:
        channels = channels.to(tl.int64)
    return tl.load(x_ptr + channels * stride_c, mask=c_mask & has_values, other=0.0).to(tl.float32)


@triton.jit
def bn_partial_statistics_kernel(
    x_ptr,                 # input x, (N, C, S) with the strides below
    partials_ptr,          # fp32 [splits, 3, C]: (count, mean − K, M2) of each split's positions
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
    pivot = _channel_pivot(x_ptr, channels, c_mask, stride_c, P, INT64)
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
        shifted = tl.where(mask, x - pivot[:, None], 0.0)
        tile_count = tl.minimum(end - p0, BLOCK_P).to(tl.float32)
        tile_mean = tl.sum(shifted, axis=1) / tile_count
        centred = tl.where(mask, shifted - tile_mean[:, None], 0.0)
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
def _merge_rows(rows_ptr, rows, C, channels, c_mask, ROW: tl.constexpr, BLOCK_C: tl.constexpr):
    """Chan's merge in float64 of the ``rows`` rows of fp32 [rows, ROW, C], in order
    (deterministic): ROW = 3, (count, mean − K, M2) split rows, or ROW = 4, (count, mean, M2,
    mean residual) device rows, whose mean is mean + residual. Rows with count 0 (an empty
    split or device) change nothing. The means are merged relative to the first non-empty
    row's (``origin``, returned apart from the relative mean). float64 because M2 carries the
    δ² cross terms of every merge, which float32 would round at each step."""
    count = tl.zeros([BLOCK_C], tl.float64)
    origin = tl.zeros([BLOCK_C], tl.float64)
    mean = tl.zeros([BLOCK_C], tl.float64)
    m2 = tl.zeros([BLOCK_C], tl.float64)
    for index in range(0, rows):
        row = rows_ptr + index * ROW * C + channels
        n_b = tl.load(row, mask=c_mask, other=0.0).to(tl.float64)
        row_mean = tl.load(row + C, mask=c_mask, other=0.0).to(tl.float64)
        origin = tl.where(count == 0, row_mean, origin)
        mean_b = row_mean - origin
        if ROW == 4:
            mean_b += tl.load(row + 3 * C, mask=c_mask, other=0.0).to(tl.float64)
        m2_b = tl.load(row + 2 * C, mask=c_mask, other=0.0).to(tl.float64)
        total = count + n_b
        delta = mean_b - mean
        ratio = tl.where(total > 0, n_b / tl.maximum(total, 1.0), 0.0)
        mean += delta * ratio
        m2 += m2_b + delta * delta * count * ratio
        count = total
    return count, origin, mean, m2


@triton.jit
def bn_merge_partials_kernel(
    x_ptr,                 # the input x (its pivots x[0, c, 0])
    partials_ptr,          # fp32 [splits, 3, C] from bn_partial_statistics_kernel
    merged_ptr,            # fp32 [4, C] out: (count, mean, M2, mean − float32 mean) of all the splits
    splits, C, P, stride_c,
    INT64: tl.constexpr, BLOCK_C: tl.constexpr,
):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = channels < C
    count, origin, mean, m2 = _merge_rows(partials_ptr, splits, C, channels, c_mask, 3, BLOCK_C)
    exact_mean = _channel_pivot(x_ptr, channels, c_mask, stride_c, P, INT64).to(tl.float64) + (origin + mean)
    rounded_mean = exact_mean.to(tl.float32)
    tl.store(merged_ptr + channels, count.to(tl.float32), mask=c_mask)
    tl.store(merged_ptr + C + channels, rounded_mean, mask=c_mask)
    tl.store(merged_ptr + 2 * C + channels, m2.to(tl.float32), mask=c_mask)
    tl.store(merged_ptr + 3 * C + channels, (exact_mean - rounded_mean.to(tl.float64)).to(tl.float32), mask=c_mask)


@triton.jit
def bn_finalize_statistics_kernel(
    statistics_ptr,        # fp32 [rows, ROW, C]: split rows (ROW 3, shifted by the pivot) or device rows (ROW 4)
    x_ptr,                 # the input x (its pivots, when ROW == 3)
    mean_ptr,              # fp32 [C] out: batch mean, saved for the backward
    invstd_ptr,            # fp32 [C] out: 1/sqrt(biased var + eps), saved for the backward
    residual_ptr,          # fp32 [C] out: mean − float32 mean; may be a slot row of statistics (read first)
    running_mean_ptr,      # [C] running mean, updated in place (any float dtype) when HAS_RUNNING
    running_var_ptr,       # [C] running variance (unbiased estimate), updated in place
    num_batches_tracked_ptr,  # int64 [1], already incremented; read when CUMULATIVE
    rows, C, P, stride_c,  # rows: the number of rows in statistics; P, stride_c: x's (for the pivot)
    momentum,              # running-statistics factor (unused when CUMULATIVE)
    eps,
    ROW: tl.constexpr, INT64: tl.constexpr,
    HAS_RUNNING: tl.constexpr, CUMULATIVE: tl.constexpr,  # CUMULATIVE: momentum=None, factor 1/num_batches_tracked
    BLOCK_C: tl.constexpr,
):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = channels < C
    count, origin, merged_mean, m2 = _merge_rows(statistics_ptr, rows, C, channels, c_mask, ROW, BLOCK_C)
    exact_mean = origin + merged_mean
    if ROW == 3:
        exact_mean += _channel_pivot(x_ptr, channels, c_mask, stride_c, P, INT64).to(tl.float64)
    mean = exact_mean.to(tl.float32)
    invstd = (1.0 / tl.sqrt(m2 / count + eps)).to(tl.float32)
    tl.store(residual_ptr + channels, (exact_mean - mean.to(tl.float64)).to(tl.float32), mask=c_mask)
    tl.store(mean_ptr + channels, mean, mask=c_mask)
    tl.store(invstd_ptr + channels, invstd, mask=c_mask)
    if HAS_RUNNING:
        if CUMULATIVE:
            factor = 1.0 / tl.load(num_batches_tracked_ptr).to(tl.float32)
        else:
            factor = momentum
        running_mean = tl.load(running_mean_ptr + channels, mask=c_mask, other=0.0).to(tl.float32)
        running_var = tl.load(running_var_ptr + channels, mask=c_mask, other=0.0).to(tl.float32)
        unbiased = (m2 / (count - 1.0)).to(tl.float32)
        tl.store(running_mean_ptr + channels, running_mean + factor * (mean - running_mean), mask=c_mask)
        tl.store(running_var_ptr + channels, running_var + factor * (unbiased - running_var), mask=c_mask)


@triton.jit
def bn_leaky_relu_forward_kernel(
    x_ptr, y_ptr,          # input and output, (N, C, S) each with its own strides
    mean_ptr, stat_ptr,    # per-channel mean and invstd (training) or running mean and variance (eval)
    weight_ptr, bias_ptr,  # affine parameters [C] (absent: 1 and 0)
    residual_ptr,          # fp32 [C]: the mean's float32 rounding residual (training)
    C, S, P,
    x_stride_n, x_stride_c, x_stride_s,
    y_stride_n, y_stride_c, y_stride_s,
    eps,                   # used only when the stat is a variance
    slope,                 # LeakyReLU negative slope (0: ReLU)
    STAT_IS_INVSTD: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    INT64: tl.constexpr, CHANNELS_LAST: tl.constexpr, ALIGN: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    positions = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    C = _channel_count(C, CHANNELS_LAST, ALIGN)
    c_mask = channels < C
    mask = _tile_mask(channels, positions, C, P, CHANNELS_LAST, ALIGN)
    mean, _, _, scale, shift = _normalise_coefficients(
        channels, c_mask, mean_ptr, stat_ptr, weight_ptr, bias_ptr, residual_ptr, eps,
        STAT_IS_INVSTD, HAS_WEIGHT, HAS_BIAS, HAS_RESIDUAL,
    )
    x = tl.load(x_ptr + _tile_offsets(channels, positions, S, x_stride_n, x_stride_c, x_stride_s, INT64,
                                      CHANNELS_LAST, ALIGN),
                mask=mask, other=0.0).to(tl.float32)
    z = (x - mean[:, None]) * scale[:, None] + shift[:, None]
    y = tl.where(z > 0, z, z * slope)
    tl.store(y_ptr + _tile_offsets(channels, positions, S, y_stride_n, y_stride_c, y_stride_s, INT64,
                                   CHANNELS_LAST, ALIGN),
             y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _activation_grad(x, dy, mean, residual, scale, shift, slope):
    """((x − mean) − residual, dz) of a tile: dz = dy where z = (x − mean)·scale + shift > 0 (the
    forward's z), else slope·dy."""
    centred = x - mean[:, None]
    z = centred * scale[:, None] + shift[:, None]
    return centred - residual[:, None], tl.where(z > 0, dy, dy * slope)


@triton.jit
def _two_sum(a, b):
    """(a + b rounded, its exact rounding error): Knuth's TwoSum, branch-free."""
    total = a + b
    b_part = total - a
    return total, (a - (total - b_part)) + (b - b_part)


@triton.jit
def _add_compensated(total_a, error_a, total_b, error_b):
    """Sum of two compensated values (total, error)."""
    total, error = _two_sum(total_a, total_b)
    return total, error + (error_a + error_b)


@triton.jit
def _sum_lanes(total, error):
    """The per-lane compensated sums (total, error) of a [BLOCK_C, BLOCK_P] tile added across
    its lanes, as a float32 (sum, rounding error) pair per channel. Once per program, so in
    float64, which holds the sum of a few thousand float32 pairs to far below float32's
    resolution (a custom-combine tl.reduce would do it in float32 pairs, but Triton's
    interpreter runs those element by element)."""
    exact = tl.sum(total.to(tl.float64) + error.to(tl.float64), axis=1)
    rounded = exact.to(tl.float32)
    return rounded, (exact - rounded.to(tl.float64)).to(tl.float32)


@triton.jit
def bn_leaky_relu_backward_reduce_kernel(
    grad_out_ptr, x_ptr,   # dy and the saved input, (N, C, S) with their own strides
    mean_ptr, stat_ptr, weight_ptr, bias_ptr,  # as in the forward
    residual_ptr,          # fp32 [C]: the forward's mean rounding residual (when HAS_RESIDUAL)
    partials_ptr,          # fp32 [splits, 4, C] out: per split Σdz, Σdz·(x − mean) and their rounding errors
    C, S, P,
    g_stride_n, g_stride_c, g_stride_s,
    x_stride_n, x_stride_c, x_stride_s,
    positions_per_split, eps, slope,
    STAT_IS_INVSTD: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    INT64: tl.constexpr, CHANNELS_LAST: tl.constexpr, ALIGN: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(1)
    C = _channel_count(C, CHANNELS_LAST, ALIGN)
    c_mask = channels < C
    mean, residual, _, scale, shift = _normalise_coefficients(
        channels, c_mask, mean_ptr, stat_ptr, weight_ptr, bias_ptr, residual_ptr, eps, STAT_IS_INVSTD, HAS_WEIGHT,
        HAS_BIAS, HAS_RESIDUAL,
    )
    start = split * positions_per_split
    end = tl.minimum(start + positions_per_split, P)
    # Per-lane compensated sums (TwoSum; a product's rounding error dz·xc − fl(dz·xc) is exact
    # by FMA), reduced across the tile once after the loop: a cross-thread reduction per tile
    # would cost shared memory and registers in every iteration.
    sum_dz = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    error_dz = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    sum_dz_xc = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    error_dz_xc = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    for p0 in range(start, end, BLOCK_P):
        positions = p0 + tl.arange(0, BLOCK_P)
        mask = _tile_mask(channels, positions, C, end, CHANNELS_LAST, ALIGN)
        x = tl.load(x_ptr + _tile_offsets(channels, positions, S, x_stride_n, x_stride_c, x_stride_s, INT64,
                                          CHANNELS_LAST, ALIGN),
                    mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(grad_out_ptr + _tile_offsets(channels, positions, S, g_stride_n, g_stride_c, g_stride_s, INT64,
                                                  CHANNELS_LAST, ALIGN),
                     mask=mask, other=0.0).to(tl.float32)
        centred, dz = _activation_grad(x, dy, mean, residual, scale, shift, slope)
        centred = tl.where(mask, centred, 0.0)
        sum_dz, step_error = _two_sum(sum_dz, dz)
        error_dz += step_error
        product = dz * centred
        sum_dz_xc, step_error = _two_sum(sum_dz_xc, product)
        error_dz_xc += step_error + tl.fma(dz, centred, -product)
    sum_dz, error_dz = _sum_lanes(sum_dz, error_dz)
    sum_dz_xc, error_dz_xc = _sum_lanes(sum_dz_xc, error_dz_xc)
    out = partials_ptr + split * 4 * C + channels
    tl.store(out, sum_dz, mask=c_mask)
    tl.store(out + C, sum_dz_xc, mask=c_mask)
    tl.store(out + 2 * C, error_dz, mask=c_mask)
    tl.store(out + 3 * C, error_dz_xc, mask=c_mask)


@triton.jit
def bn_leaky_relu_backward_finalize_kernel(
    partials_ptr,          # fp32 [splits, 4, C] from the reduce kernel
    stat_ptr,              # [C] invstd (training) or running variance (eval)
    grad_weight_ptr,       # [C] out: Σdz·x̂ (when HAS_GRAD_WEIGHT), the weight's dtype
    grad_bias_ptr,         # [C] out: Σdz (when HAS_GRAD_BIAS)
    coefficients_ptr,      # fp32 [2, C] out: Σdz/P and Σdz·x̂/P (training only)
    splits, C, inv_p,      # inv_p = 1/P (1: the raw sums, for a caller that adds devices' sums first)
    eps,
    STAT_IS_INVSTD: tl.constexpr, TRAINING: tl.constexpr, HAS_GRAD_WEIGHT: tl.constexpr,
    HAS_GRAD_BIAS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = channels < C
    sum_dz = tl.zeros([BLOCK_C], tl.float32)
    error_dz = tl.zeros([BLOCK_C], tl.float32)
    sum_dz_xc = tl.zeros([BLOCK_C], tl.float32)
    error_dz_xc = tl.zeros([BLOCK_C], tl.float32)
    for split in range(0, splits):  # in order: deterministic
        row = partials_ptr + split * 4 * C + channels
        sum_dz, error_dz = _add_compensated(sum_dz, error_dz, tl.load(row, mask=c_mask, other=0.0),
                                            tl.load(row + 2 * C, mask=c_mask, other=0.0))
        sum_dz_xc, error_dz_xc = _add_compensated(sum_dz_xc, error_dz_xc, tl.load(row + C, mask=c_mask, other=0.0),
                                                  tl.load(row + 3 * C, mask=c_mask, other=0.0))
    invstd = _invstd_f64(tl.load(stat_ptr + channels, mask=c_mask, other=1.0), eps, STAT_IS_INVSTD)
    total_dz = sum_dz + error_dz
    total_dz_xhat = ((sum_dz_xc.to(tl.float64) + error_dz_xc.to(tl.float64)) * invstd).to(tl.float32)
    if HAS_GRAD_WEIGHT:
        tl.store(grad_weight_ptr + channels, total_dz_xhat.to(grad_weight_ptr.dtype.element_ty), mask=c_mask)
    if HAS_GRAD_BIAS:
        tl.store(grad_bias_ptr + channels, total_dz.to(grad_bias_ptr.dtype.element_ty), mask=c_mask)
    if TRAINING:
        tl.store(coefficients_ptr + channels, total_dz * inv_p, mask=c_mask)
        tl.store(coefficients_ptr + C + channels, total_dz_xhat * inv_p, mask=c_mask)


@triton.jit
def bn_leaky_relu_backward_input_kernel(
    grad_out_ptr, x_ptr, grad_x_ptr,  # dy, saved x, dx: (N, C, S) each with its own strides
    mean_ptr, stat_ptr, weight_ptr, bias_ptr,
    residual_ptr,          # fp32 [C]: the forward's mean rounding residual (when HAS_RESIDUAL)
    coefficients_ptr,      # fp32 [2, C] from the finalize kernel (training only)
    C, S, P,
    g_stride_n, g_stride_c, g_stride_s,
    x_stride_n, x_stride_c, x_stride_s,
    dx_stride_n, dx_stride_c, dx_stride_s,
    eps, slope,
    TRAINING: tl.constexpr, STAT_IS_INVSTD: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, INT64: tl.constexpr, CHANNELS_LAST: tl.constexpr, ALIGN: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    positions = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    C = _channel_count(C, CHANNELS_LAST, ALIGN)
    c_mask = channels < C
    mask = _tile_mask(channels, positions, C, P, CHANNELS_LAST, ALIGN)
    mean, residual, invstd, scale, shift = _normalise_coefficients(
        channels, c_mask, mean_ptr, stat_ptr, weight_ptr, bias_ptr, residual_ptr, eps, STAT_IS_INVSTD, HAS_WEIGHT,
        HAS_BIAS, HAS_RESIDUAL,
    )
    x = tl.load(x_ptr + _tile_offsets(channels, positions, S, x_stride_n, x_stride_c, x_stride_s, INT64,
                                      CHANNELS_LAST, ALIGN),
                mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(grad_out_ptr + _tile_offsets(channels, positions, S, g_stride_n, g_stride_c, g_stride_s, INT64,
                                              CHANNELS_LAST, ALIGN),
                 mask=mask, other=0.0).to(tl.float32)
    centred, dz = _activation_grad(x, dy, mean, residual, scale, shift, slope)
    if TRAINING:
        mean_dz = tl.load(coefficients_ptr + channels, mask=c_mask, other=0.0)
        mean_dz_xhat = tl.load(coefficients_ptr + C + channels, mask=c_mask, other=0.0)
        dz = dz - mean_dz[:, None] - centred * invstd[:, None] * mean_dz_xhat[:, None]
    dx = dz * scale[:, None]
    tl.store(grad_x_ptr + _tile_offsets(channels, positions, S, dx_stride_n, dx_stride_c, dx_stride_s, INT64,
                                        CHANNELS_LAST, ALIGN),
             dx.to(grad_x_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------
# Launchers: tensors of any (N, C, *) shape whose spatial dimensions merge, and a plan from
# fastgan.ops.batch_norm that holds their (N, C, S) geometry (x's strides, the outputs' and the
# incoming gradient's), so the op layer makes no view per call; the CUDA twins in
# fastgan._cuda take the same arguments.
# --------------------------------------------------------------------------------------


# Warps per program: the channels_last tile (32 x 64) over 8 warps holds half the values per
# thread that 4 would, which keeps register use and occupancy down; the channels-first tile
# (2 x 512) is small enough for 4. The backward reduction, with four compensated per-lane
# accumulators, doubles these where the element size allows (_reduce_constants).
_CHANNELS_LAST_WARPS = 8
_CHANNELS_FIRST_WARPS = 4


@functools.lru_cache(maxsize=1024)
def _tile_launch(plan, *strides) -> dict:
    """The launch keywords of a tile kernel: num_warps (see above), CHANNELS_LAST (the tile's
    contiguous dimension is the channels) and ALIGN, the largest
    power of two up to 16 dividing every size and stride the contiguous dimension's addresses
    depend on, for the (N, C, S) ``strides`` of every tensor the kernel walks (in ``plan``'s
    shape): the channel count and the position strides for channels_last, the spatial size and
    the sample/channel strides otherwise. Strides of size-1 dimensions are left out (that
    coordinate is always 0). 1 when the contiguous dimension is not unit-stride in every
    tensor. Cached per plan (host time is the cost of a small block); callers must not change
    the dict."""
    shape = plan.shape
    n, c, s = shape
    channels_last = plan.channels_last
    unit = 1 if channels_last else 2
    warps = _CHANNELS_LAST_WARPS if channels_last else _CHANNELS_FIRST_WARPS
    if shape[unit] > 1 and any(st[unit] != 1 for st in strides):
        return dict(CHANNELS_LAST=channels_last, ALIGN=1, num_warps=warps)
    values = [c] if channels_last else [s]
    others = (0, 2) if channels_last else (0, 1)
    for st in strides:
        values += [st[d] for d in others if shape[d] > 1]
    align = 16
    for value in values:
        while value % align:
            align //= 2
    return dict(CHANNELS_LAST=channels_last, ALIGN=align, num_warps=warps)


def _finalize_block(channels: int) -> int:
    # 256 channels per program at most: the finalize kernels hold float64 state per channel.
    return min(256, max(16, triton.next_power_of_2(channels)))


def launch_batch_norm_forward_train(x, y, weight, bias, running_mean, running_var, num_batches_tracked, mean, invstd,
                                    partials, *, plan, momentum, cumulative, eps, slope, mean_residual=None):
    """Statistics, finalize (running statistics updated in place) and the elementwise pass.
    ``partials``: fp32 [splits, 3, C] scratch. The mean's rounding residual goes to
    ``mean_residual`` (fp32 [C], for the backward) when given, else to the first row's count
    slots of ``partials``."""
    _launch_partial_statistics(x, partials, plan)
    _finalize_and_normalise(x, y, weight, bias, running_mean, running_var, num_batches_tracked, mean, invstd, partials,
                            partials[0, 0] if mean_residual is None else mean_residual, plan=plan, momentum=momentum,
                            cumulative=cumulative, eps=eps, slope=slope)


def launch_batch_norm_statistics(x, partials, merged, *, plan):
    """The first stage of a synchronised training forward: the per-split statistics of ``x``
    into ``partials`` (fp32 [splits, 3, C]), merged into ``merged`` (fp32 [4, C], one
    (count, mean, M2, mean residual) row; zeros for an empty ``x``)."""
    n, c, s = plan.shape
    _launch_partial_statistics(x, partials, plan)
    block = _finalize_block(c)
    bn_merge_partials_kernel[(triton.cdiv(c, block),)](
        x, partials, merged, plan.splits, c, n * s, plan.x_strides[1], INT64=plan.needs_int64, BLOCK_C=block,
    )


def launch_batch_norm_forward_from_statistics(x, y, weight, bias, running_mean, running_var, num_batches_tracked, mean,
                                              invstd, statistics, *, plan, momentum, cumulative, eps, slope,
                                              mean_residual=None):
    """Finalize over the device rows ``statistics`` (fp32 [devices, 4, C], every device's
    merged row), updating the running statistics, then the elementwise pass. The mean's
    rounding residual goes to ``mean_residual`` (fp32 [C]) when given, else to the first row's
    residual slots."""
    _finalize_and_normalise(x, y, weight, bias, running_mean, running_var, num_batches_tracked, mean, invstd,
                            statistics, statistics[0, 3] if mean_residual is None else mean_residual, plan=plan,
                            momentum=momentum, cumulative=cumulative, eps=eps, slope=slope)


def _finalize_and_normalise(x, y, weight, bias, running_mean, running_var, num_batches_tracked, mean, invstd,
                            statistics, residual, *, plan, momentum, cumulative, eps, slope):
    """Finalize over the rows of ``statistics`` (fp32 [splits, 3, C] shifted by the pivots, or
    [devices, 4, C]) into mean, invstd, ``residual`` (fp32 [C]) and the running statistics,
    then y."""
    n, c, s = plan.shape
    has_running = running_mean is not None
    block = _finalize_block(c)
    bn_finalize_statistics_kernel[(triton.cdiv(c, block),)](
        statistics, x, mean, invstd, residual,
        running_mean if has_running else mean, running_var if has_running else invstd,
        num_batches_tracked if cumulative else mean,
        statistics.shape[0], c, n * s, plan.x_strides[1], momentum, eps,
        ROW=statistics.shape[1], INT64=plan.needs_int64, HAS_RUNNING=has_running, CUMULATIVE=cumulative,
        BLOCK_C=block,
    )
    _launch_elementwise(x, y, mean, invstd, weight, bias, residual, plan=plan, eps=eps, slope=slope,
                        stat_is_invstd=True)


def launch_batch_norm_forward_eval(x, y, weight, bias, running_mean, running_var, *, plan, eps, slope):
    """One elementwise pass normalising with the running statistics."""
    _launch_elementwise(x, y, running_mean, running_var, weight, bias, None, plan=plan, eps=eps, slope=slope,
                        stat_is_invstd=False)


def _launch_partial_statistics(x, partials, plan):
    n, c, s = plan.shape
    bn_partial_statistics_kernel[(triton.cdiv(c, plan.block_c), plan.splits)](
        x, partials, c, s, n * s, *plan.x_strides, plan.positions_per_split,
        INT64=plan.needs_int64, BLOCK_C=plan.block_c, BLOCK_P=plan.block_p, **_tile_launch(plan, plan.x_strides),
    )


def _launch_elementwise(x, y, mean, stat, weight, bias, residual, *, plan, eps, slope, stat_is_invstd):
    n, c, s = plan.shape
    p = n * s
    if p == 0:  # an empty grid (a device with no samples in a synchronised batch)
        return
    grid = (triton.cdiv(c, plan.block_c), triton.cdiv(p, plan.block_p))
    bn_leaky_relu_forward_kernel[grid](
        x, y, mean, stat, weight if weight is not None else mean, bias if bias is not None else mean,
        residual if residual is not None else mean,
        c, s, p, *plan.x_strides, *plan.out_strides, eps, slope,
        STAT_IS_INVSTD=stat_is_invstd, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        HAS_RESIDUAL=residual is not None,
        INT64=plan.needs_int64, BLOCK_C=plan.block_c, BLOCK_P=plan.block_p, **_tile_launch(plan, plan.x_strides, plan.out_strides),
    )


def launch_batch_norm_backward(grad_out, x, weight, bias, mean, stat, grad_x, grad_weight, grad_bias, partials,
                               coefficients, *, plan, training, stat_is_invstd, eps, slope, mean_residual=None):
    """Reduction (``partials``: fp32 [splits, 4, C] scratch), finalize (dw, dbias) and, when
    ``grad_x`` is given, the elementwise dx pass. ``mean_residual``: the forward's (fp32 [C],
    training), so that the activation mask and x̂ are the forward's."""
    n, c, s = plan.shape
    p = n * s
    if training or grad_weight is not None or grad_bias is not None:
        _launch_backward_sums(grad_out, x, weight, bias, mean, stat, grad_weight, grad_bias, partials, coefficients,
                              plan=plan, training=training, stat_is_invstd=stat_is_invstd, inv_p=1.0 / p, eps=eps,
                              slope=slope, mean_residual=mean_residual)
    if grad_x is not None:
        _launch_backward_input(grad_out, x, grad_x, weight, bias, mean, stat, coefficients, plan=plan,
                               training=training, stat_is_invstd=stat_is_invstd, eps=eps, slope=slope,
                               mean_residual=mean_residual)


def launch_batch_norm_backward_sums(grad_out, x, weight, bias, mean, invstd, grad_weight, grad_bias, partials, sums, *,
                                    plan, eps, slope, mean_residual=None):
    """The first stage of a synchronised training backward: this device's dw, dbias (when
    given) and raw sums (Σdz, Σdz·x̂) into ``sums`` (fp32 [2, C]; zeros for an empty ``x``)."""
    _launch_backward_sums(grad_out, x, weight, bias, mean, invstd, grad_weight, grad_bias, partials, sums, plan=plan,
                          training=True, stat_is_invstd=True, inv_p=1.0, eps=eps, slope=slope,
                          mean_residual=mean_residual)


def launch_batch_norm_backward_input(grad_out, x, grad_x, weight, bias, mean, invstd, coefficients, *, plan, eps,
                                     slope, mean_residual=None):
    """The last stage of a synchronised training backward: dx from the global coefficients
    (fp32 [2, C]: Σdz/P and Σdz·x̂/P summed over every device, P the global count)."""
    _launch_backward_input(grad_out, x, grad_x, weight, bias, mean, invstd, coefficients, plan=plan, training=True,
                           stat_is_invstd=True, eps=eps, slope=slope, mean_residual=mean_residual)


def _backward_constants(weight, bias, mean_residual, plan, stat_is_invstd, *strides):
    return dict(STAT_IS_INVSTD=stat_is_invstd, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
                HAS_RESIDUAL=mean_residual is not None, INT64=plan.needs_int64, BLOCK_C=plan.block_c,
                BLOCK_P=plan.block_p,
                **_tile_launch(plan, *strides))


def _reduce_constants(weight, bias, mean_residual, plan, stat_is_invstd, x):
    """The backward reduction's launch keywords: twice the tile's warps for 4-byte (and wider)
    elements, which halves the four compensated per-lane accumulators each thread holds
    (fp32: 72-80 registers down to 40-58) while every thread still reads 16-byte runs; 2-byte
    elements keep the tile's warps, or a thread's run would shrink to 8 bytes."""
    constants = _backward_constants(weight, bias, mean_residual, plan, stat_is_invstd, plan.grad_strides,
                                    plan.x_strides)
    if x.element_size() >= 4:
        constants["num_warps"] *= 2
    return constants


def _launch_backward_sums(grad_out, x, weight, bias, mean, stat, grad_weight, grad_bias, partials, coefficients, *,
                          plan, training, stat_is_invstd, inv_p, eps, slope, mean_residual):
    n, c, s = plan.shape
    bn_leaky_relu_backward_reduce_kernel[(triton.cdiv(c, plan.block_c), plan.splits)](
        grad_out, x, mean, stat, weight if weight is not None else mean, bias if bias is not None else mean,
        mean_residual if mean_residual is not None else mean, partials,
        c, s, n * s, *plan.grad_strides, *plan.x_strides, plan.positions_per_split, eps, slope,
        # No FP contraction: fusing a product into its compensated sum would break the TwoSum.
        enable_fp_fusion=False, **_reduce_constants(weight, bias, mean_residual, plan, stat_is_invstd, x),
    )
    block = _finalize_block(c)
    bn_leaky_relu_backward_finalize_kernel[(triton.cdiv(c, block),)](
        partials, stat,
        grad_weight if grad_weight is not None else partials,
        grad_bias if grad_bias is not None else partials,
        coefficients if coefficients is not None else partials,
        plan.splits, c, inv_p, eps,
        STAT_IS_INVSTD=stat_is_invstd, TRAINING=training, HAS_GRAD_WEIGHT=grad_weight is not None,
        HAS_GRAD_BIAS=grad_bias is not None, BLOCK_C=block,
    )


def _launch_backward_input(grad_out, x, grad_x, weight, bias, mean, stat, coefficients, *, plan, training,
                           stat_is_invstd, eps, slope, mean_residual):
    n, c, s = plan.shape
    p = n * s
    if p == 0:
        return
    grid = (triton.cdiv(c, plan.block_c), triton.cdiv(p, plan.block_p))
    bn_leaky_relu_backward_input_kernel[grid](
        grad_out, x, grad_x, mean, stat, weight if weight is not None else mean, bias if bias is not None else mean,
        mean_residual if mean_residual is not None else mean, coefficients if coefficients is not None else mean,
        c, s, p, *plan.grad_strides, *plan.x_strides, *plan.out_strides, eps, slope,
        TRAINING=training,
        **_backward_constants(weight, bias, mean_residual, plan, stat_is_invstd, plan.grad_strides, plan.x_strides,
                                 plan.out_strides),
    )
