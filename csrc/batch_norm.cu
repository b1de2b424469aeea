// CUDA kernels for fused BatchNorm + LeakyReLU (Python side: fastgan/_cuda.py); the twin of
// the Triton kernels in kernels/batch_norm.py, launch for launch.
//
// Layout. Every tensor is seen as (N, C, S) with its own element strides; a position
// p = n·S + s runs over the P = N·S samples of a channel. Offsets are always 64-bit; the
// p → (n, s) division is done in 32 bits when P < 2^31 (a template switch), 64 bits otherwise.
// The activations x, y, dy and dx share one element dtype T, a template parameter (one host
// dispatch); per-channel vectors keep their own dtypes and are read once per thread.
//
// Walks. A block is CT × PT threads (blockDim = (CT, PT), threadIdx.x across channels,
// threadIdx.y a lane along positions); a warp is 32 consecutive linear thread ids, channel
// index fastest. Each thread owns CPT channels and, per step, reads U units PT apart:
//   * planar packed, tile (1, 256), CPT = 1, a unit = one 16-byte pack of W positions
//     (W = 4 fp32, 8 fp16/bf16): for NCHW-like tensors with unit position stride, S a
//     multiple of W and every other stride and base pointer 16-byte aligned, so no pack
//     crosses an image; a warp moves 512 contiguous bytes of one channel;
//   * channels-last packed, tile (8, 32), CPT = W, a unit = one position's W consecutive
//     channels in one 16-byte pack: for unit channel stride, C a multiple of W and aligned
//     strides/pointers; a warp moves 4 positions × 128 contiguous bytes;
//   * strided, the fallback for everything else, one element per unit, U = 4: tile (1, 256)
//     when positions are the smaller stride, (32, 8) when channels are (channels_last with C
//     not a multiple of W, (N, C) inputs, misaligned views).
// The walk is chosen once on the host from every tensor the kernel touches (x for the
// statistics; x, y for the forward; x, dy (and dx) for the backward), and the packed walks
// also need the reductions' split width to be a multiple of W (P is: S is).
//
// Accuracy when |mean| ≫ std (eager PyTorch's CPU float32 is the yardstick: it accumulates
// in double): the statistics are of x − K, K = x[0, c, 0] the channel's pivot, which every
// split reads, so float32 keeps the spread instead of the mean's digits; per-channel scalars
// (invstd, w·invstd, the bias) are computed in double and rounded once; every elementwise
// pass centres first, (x − mean)·w·invstd + bias, never x·a + (bias − mean·a), which cancels;
// the gradient sums are compensated (TwoSum, FMA-exact products).
//
// Forward (training): (1) per (channel, split) partial statistics (count, mean − K, M2) into
// fp32 [splits, 3, C]: each thread keeps Welford/Chan state over two-pass statistics of each
// step's values x − K of a channel (step mean, then Σ(x − K − step mean)²; never
// E[x²] − E[x]²), merged over the block's lanes by a fixed shared-memory tree
// (deterministic); (2) one thread per channel merges the splits in order with Chan's formula,
// writes mean = K + (mean − K) rounded once, invstd = 1/sqrt(M2/P + eps), the mean's rounding
// residual (into args.mean_residual, saved for the backward, or else into the splits' first
// row, which it has read), and updates the running statistics
// in place (unbiased M2/(P − 1); factor momentum or 1/num_batches_tracked read on the
// device); (3) elementwise y = leaky_relu((x − mean)·a + b), a = w·invstd,
// b = bias − residual·a. Eval is (3) alone, from the running statistics.
//
// Backward: z = (x − mean)·a + b as in the forward (training: with the saved residual, so the
// activation mask is the forward's), dz = dy if z > 0 else slope·dy, x̂ = ((x − mean) − residual)·invstd.
// (1) per-split compensated Σdz, Σdz·(x − mean − residual) with their rounding errors into fp32
// [splits, 4, C]; (2) per channel: grad_bias = Σdz, grad_weight = Σdz·x̂ = invstd·Σdz·(x − mean − residual),
// and in training the coefficients (Σdz/P, Σdz·x̂/P); (3) elementwise
// dx = w·invstd·(dz − Σdz/P − x̂·Σdz·x̂/P) in training, w·invstd·dz in eval.
//
// Synchronised (multi-device) training runs these as separately launched stages so that the
// caller can combine devices in between: forward (1) then a merge of the splits into one
// (count, mean, M2) row [3, C] per device, the mean un-shifted (K + (mean − K), rounded once)
// so that devices with different pivots combine as they are, all-gathered by the caller into
// [devices, 3, C], which (2) merges like splits (Chan's merge is associative; means relative to
// the first non-empty row's) before (3); backward (1) and (2) with the raw sums (scale 1
// instead of 1/P), summed over the devices and divided by the global P by the caller, then
// (3) from those coefficients.
#include "batch_norm.h"

#include "device_utils.cuh"

#include <cstdlib>
#include <initializer_list>
#include <type_traits>

namespace fastgan {
namespace {

constexpr int kStridedUnits = 4;       // strided walk: positions per thread per step (loads in flight)
constexpr int kPackedUnits = 2;        // packed walks: 16-byte packs per thread per step and tensor
constexpr int kFinalizeThreads = 256;  // finalize kernels: one thread per channel
constexpr int64_t kMaxGridY = 65535;
constexpr int kSplitRow = 3;   // a split's statistics row: (count, mean − K, M2)
constexpr int kDeviceRow = 4;  // a device's: (count, mean, M2, mean residual)

enum class Walk { kStrided, kPlanarPacked, kChannelsLastPacked };

template <int CT, int PT, bool WIDE>
struct Tile {
  static constexpr int kChannels = CT;  // blockDim.x
  static constexpr int kLanes = PT;     // blockDim.y, a power of two (tree reduction)
  static constexpr int kThreads = CT * PT;
  static constexpr bool kWide = WIDE;   // 64-bit p → (n, s) division
  static_assert(CT * PT == 256 && (PT & (PT - 1)) == 0, "tile shape");
};

using PlanarTile = Tile<1, 256, false>;
using PlanarTileWide = Tile<1, 256, true>;
using ChannelsLastTile = Tile<32, 8, false>;
using ChannelsLastTileWide = Tile<32, 8, true>;
using ChannelsLastPackedTile = Tile<8, 32, false>;

// p → (n, s) with p = n·S + s.
template <bool WIDE>
__device__ __forceinline__ void split_position(int64_t p, int64_t S, int64_t& n, int64_t& s) {
  if (WIDE) {
    n = p / S;
    s = p - n * S;
  } else {
    const uint32_t p32 = static_cast<uint32_t>(p);
    const uint32_t s32 = static_cast<uint32_t>(S);
    const uint32_t n32 = p32 / s32;
    n = n32;
    s = p32 - n32 * s32;
  }
}

__device__ __forceinline__ int64_t element_offset(const BnTensor& t, int64_t n, int64_t c, int64_t s) {
  return n * t.stride_n + c * t.stride_c + s * t.stride_s;
}

// How one thread walks its channels and positions (see the file header). Units are
// positions (strided, channels-last packed) or packs of W positions (planar packed).
//   kChannelsPerThread  CPT: channels c0 .. c0 + CPT − 1 of thread (blockIdx.x·CT + tx)·CPT
//   kUnits              units per thread per step, kLanes apart
//   kValues             values per channel per step (kUnits, or kUnits·W when planar)
//   kPositionsPerUnit   1, or W when planar
//   locate()            (n, s) of the step's units from `base`, and how many (a prefix) are < end
//   load(), store()     one tensor's values of the step, v[channel][value]
template <class T, class Tl, Walk WALK>
struct Walker {
  static constexpr int W = Pack<T>::kWidth;
  static constexpr bool kPlanar = WALK == Walk::kPlanarPacked;
  static constexpr int kChannelsPerThread = WALK == Walk::kChannelsLastPacked ? W : 1;
  static constexpr int kUnits = WALK == Walk::kStrided ? kStridedUnits : kPackedUnits;
  static constexpr int kPositionsPerUnit = kPlanar ? W : 1;
  static constexpr int kValues = kUnits * kPositionsPerUnit;
  static constexpr int64_t kStepUnits = static_cast<int64_t>(Tl::kLanes) * kUnits;
  using Values = float[kChannelsPerThread][kValues];

  static __device__ __forceinline__ int64_t first_channel() {
    return (static_cast<int64_t>(blockIdx.x) * Tl::kChannels + threadIdx.x) * kChannelsPerThread;
  }

  static __device__ __forceinline__ int locate(int64_t base, int64_t end, const BnShape& shape, int64_t (&n)[kUnits],
                                               int64_t (&s)[kUnits]) {
    int valid = 0;
#pragma unroll
    for (int j = 0; j < kUnits; ++j) {
      const int64_t unit = base + static_cast<int64_t>(j) * Tl::kLanes;
      n[j] = s[j] = 0;
      if (unit < end) {
        if (kPlanar) {  // pack → (n, first s): S/W packs per image
          split_position<false>(unit, shape.spatial / W, n[j], s[j]);
          s[j] *= W;
        } else {
          split_position<Tl::kWide>(unit, shape.spatial, n[j], s[j]);
        }
        ++valid;
      }
    }
    return valid;
  }

  static __device__ __forceinline__ void load(const BnTensor& t, int64_t c0, const int64_t (&n)[kUnits],
                                              const int64_t (&s)[kUnits], int valid, Values& v) {
#pragma unroll
    for (int j = 0; j < kUnits; ++j) {
      float unit[kPlanar || WALK == Walk::kChannelsLastPacked ? W : 1];
#pragma unroll
      for (int k = 0; k < static_cast<int>(sizeof(unit) / sizeof(float)); ++k) unit[k] = 0.0f;
      if (j < valid) {
        const int64_t offset = element_offset(t, n[j], c0, s[j]);
        if constexpr (WALK == Walk::kStrided) {
          unit[0] = load_element<T>(t.ptr, offset);
        } else {
          load_pack<T>(t.ptr, offset, unit);
        }
      }
#pragma unroll
      for (int k = 0; k < static_cast<int>(sizeof(unit) / sizeof(float)); ++k) {
        if (WALK == Walk::kChannelsLastPacked) {
          v[k][j] = unit[k];
        } else {
          v[0][j * kPositionsPerUnit + k] = unit[k];
        }
      }
    }
  }

  static __device__ __forceinline__ void store(const BnTensor& t, int64_t c0, const int64_t (&n)[kUnits],
                                               const int64_t (&s)[kUnits], int valid, const Values& v) {
#pragma unroll
    for (int j = 0; j < kUnits; ++j) {
      if (j < valid) {
        const int64_t offset = element_offset(t, n[j], c0, s[j]);
        if constexpr (WALK == Walk::kStrided) {
          store_element<T>(t.ptr, offset, v[0][j]);
        } else {
          float unit[W];
#pragma unroll
          for (int k = 0; k < W; ++k) unit[k] = WALK == Walk::kChannelsLastPacked ? v[k][j] : v[0][j * W + k];
          store_pack<T>(t.ptr, offset, unit);
        }
      }
    }
  }
};

struct Channel {
  float mean;
  float residual;  // the batch mean's float32 rounding residual (0 when absent)
  float invstd;
  float scale;  // w·invstd
  float b;
};

// invstd of channel c in double: the saved float32 invstd, or 1/sqrt(var + eps) (per-channel
// work, so double costs nothing that matters, and what is derived from it is rounded once).
__device__ __forceinline__ double channel_invstd(const BnChannelArgs& ch, int64_t c) {
  const double stat = load_scalar(ch.stat.ptr, ch.stat.dtype, c);
  return ch.stat_is_invstd ? stat : 1.0 / sqrt(stat + ch.eps);
}

__device__ __forceinline__ Channel load_channel(const BnChannelArgs& ch, int64_t c) {
  Channel result;
  result.mean = load_scalar(ch.mean.ptr, ch.mean.dtype, c);
  const double invstd = channel_invstd(ch, c);
  const double w = ch.weight.ptr ? load_scalar(ch.weight.ptr, ch.weight.dtype, c) : 1.0f;
  result.invstd = static_cast<float>(invstd);
  const double scale = w * invstd;
  result.scale = static_cast<float>(scale);
  const double bias = ch.bias.ptr ? load_scalar(ch.bias.ptr, ch.bias.dtype, c) : 0.0f;
  const double residual = ch.mean_residual ? ch.mean_residual[c] : 0.0f;
  result.residual = static_cast<float>(residual);
  result.b = static_cast<float>(bias - residual * scale);  // (x − mean − residual)·scale + bias
  return result;
}

// The LeakyReLU's input z = (x − mean)·w·invstd + bias, centred first: the folded
// x·scale + (bias − mean·scale) cancels catastrophically when |mean| ≫ std. The backward
// computes it alike, with the forward's mean residual (in p.b): without it, elements whose
// |z| is below |residual·scale| (up to ~1e-4·|mean|·invstd·ulp) would take the other branch
// of the activation than in the forward.
__device__ __forceinline__ float activation_input(float x, const Channel& p) { return (x - p.mean) * p.scale + p.b; }

// x − mean with the mean's residual: x̂ = centred(x)·invstd, as the forward normalised.
__device__ __forceinline__ float centred(float x, const Channel& p) { return (x - p.mean) - p.residual; }

// The channel's statistics pivot K_c = x[0, c, 0] (0 for an empty batch): the reductions
// accumulate x − K_c, whose mean is O(std) rather than O(|mean|), so float32 loses nothing to
// |mean| ≫ std; every split and block of a channel reads the same K_c.
__device__ __forceinline__ float channel_pivot(const BnTensor& x, const BnShape& shape, int64_t c) {
  return shape.positions > 0 ? load_scalar(x.ptr, x.dtype, element_offset(x, 0, c, 0)) : 0.0f;
}

struct Welford {
  float count;
  float mean;
  float m2;
};

// Chan's merge: δ = μ_b − μ_a, n = n_a + n_b, μ = μ_a + δ·n_b/n, M2 = M2_a + M2_b + δ²·n_a·n_b/n.
__device__ __forceinline__ Welford merge(const Welford& a, const Welford& b) {
  if (b.count == 0.0f) return a;
  if (a.count == 0.0f) return b;
  const float total = a.count + b.count;
  const float delta = b.mean - a.mean;
  const float ratio = b.count / total;
  return {total, a.mean + delta * ratio, a.m2 + b.m2 + delta * delta * a.count * ratio};
}

// A float32 sum carried with its rounding error (Knuth's TwoSum, exact products by FMA), so
// that the gradient sums, which cancel, come out close to correctly rounded as eager's
// double accumulation does; deterministic like any fixed-order sum.
struct Compensated {
  float sum;
  float error;
};

__device__ __forceinline__ Compensated two_sum(float a, float b) {
  const float sum = a + b;
  const float b_part = sum - a;
  return {sum, (a - (sum - b_part)) + (b - b_part)};
}

__device__ __forceinline__ void add_to(Compensated& acc, float value) {
  const Compensated step = two_sum(acc.sum, value);
  acc.sum = step.sum;
  acc.error += step.error;
}

// a·b rounded on its own: nvcc contracts a·b + c into one FMA unless told not to, which
// would leave the sum and fmaf(a, b, −product) describing different products. (The
// emulation's host compiler targets no FMA instructions and contracts nothing.)
__device__ __forceinline__ float uncontracted_product(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

__device__ __forceinline__ void add_product_to(Compensated& acc, float a, float b) {
  const float product = uncontracted_product(a, b);
  add_to(acc, product);
  acc.error += fmaf(a, b, -product);
}

__device__ __forceinline__ Compensated add(const Compensated& a, const Compensated& b) {
  Compensated result = two_sum(a.sum, b.sum);
  result.error += a.error + b.error;
  return result;
}

struct GradSums {
  Compensated dz;     // Σ dz
  Compensated dz_xc;  // Σ dz·(x − mean); × invstd once per channel gives Σ dz·x̂
};

struct MergeWelford {
  __device__ __forceinline__ Welford operator()(const Welford& a, const Welford& b) const { return merge(a, b); }
};

struct AddSums {
  __device__ __forceinline__ GradSums operator()(const GradSums& a, const GradSums& b) const {
    return {add(a.dz, b.dz), add(a.dz_xc, b.dz_xc)};
  }
};

// Combine the kLanes states of each channel column of the block (fixed tree order, so the
// result is deterministic); the result is valid in the threads with threadIdx.y == 0, the
// only ones that read the shared row 0 afterwards, so calls may follow each other directly.
// Every thread of the block must call it.
template <class Tl, class State, class Combine>
__device__ __forceinline__ State reduce_lanes(State value, Combine combine) {
  __shared__ State lanes[Tl::kLanes][Tl::kChannels];
  const int tx = threadIdx.x, ty = threadIdx.y;
  lanes[ty][tx] = value;
  __syncthreads();
#pragma unroll
  for (int stride = Tl::kLanes / 2; stride > 0; stride >>= 1) {
    if (ty < stride) lanes[ty][tx] = combine(lanes[ty][tx], lanes[ty + stride][tx]);
    __syncthreads();
  }
  return ty == 0 ? lanes[0][tx] : value;
}

// The split's positions [start, end) as units [first, last) of the walk.
template <class Wk>
__device__ __forceinline__ void split_units(const BnShape& shape, int64_t& first, int64_t& last) {
  const int64_t start = static_cast<int64_t>(blockIdx.y) * shape.positions_per_split;
  const int64_t end = min(start + shape.positions_per_split, shape.positions);  // start >= end: empty split
  first = start / Wk::kPositionsPerUnit;
  last = end / Wk::kPositionsPerUnit;
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

template <class T, class Tl, Walk WALK>
__global__ void __launch_bounds__(Tl::kThreads)
    bn_partial_statistics_kernel(BnTensor x, float* partials, BnShape shape) {
  using Wk = Walker<T, Tl, WALK>;
  constexpr int CPT = Wk::kChannelsPerThread;
  const int64_t C = shape.channels;
  const int64_t c0 = Wk::first_channel();
  int64_t first, last;
  split_units<Wk>(shape, first, last);
  Welford acc[CPT];
#pragma unroll
  for (int ch = 0; ch < CPT; ++ch) acc[ch] = {0.0f, 0.0f, 0.0f};
  if (c0 < C) {
    float pivot[CPT];
#pragma unroll
    for (int ch = 0; ch < CPT; ++ch) pivot[ch] = channel_pivot(x, shape, c0 + ch);  // CPT > 1: C % CPT == 0
    for (int64_t base = first + threadIdx.y; base < last; base += Wk::kStepUnits) {
      int64_t n[Wk::kUnits], s[Wk::kUnits];
      const int valid = Wk::locate(base, last, shape, n, s);  // >= 1 unit here
      typename Wk::Values v;
      Wk::load(x, c0, n, s, valid, v);
      // Two-pass statistics of this step's shifted values x − K (a prefix of `count`), then
      // Chan's merge into the running state.
      const int count = valid * Wk::kPositionsPerUnit;
#pragma unroll
      for (int ch = 0; ch < CPT; ++ch) {
#pragma unroll
        for (int j = 0; j < Wk::kValues; ++j) v[ch][j] = j < count ? v[ch][j] - pivot[ch] : 0.0f;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < Wk::kValues; ++j) sum += v[ch][j];
        const float step_mean = sum / static_cast<float>(count);
        float step_m2 = 0.0f;
#pragma unroll
        for (int j = 0; j < Wk::kValues; ++j) {
          const float centred = j < count ? v[ch][j] - step_mean : 0.0f;
          step_m2 += centred * centred;
        }
        acc[ch] = merge(acc[ch], Welford{static_cast<float>(count), step_mean, step_m2});
      }
    }
  }
#pragma unroll
  for (int ch = 0; ch < CPT; ++ch) {
    const Welford total = reduce_lanes<Tl>(acc[ch], MergeWelford{});
    const int64_t c = c0 + ch;
    if (threadIdx.y == 0 && c < C) {
      float* out = partials + static_cast<int64_t>(blockIdx.y) * 3 * C + c;
      out[0] = total.count;
      out[C] = total.mean;
      out[2 * C] = total.m2;
    }
  }
}

// Chan's merge of the `rows` rows of fp32 [rows, kSplitRow or kDeviceRow, C] for channel c,
// in order (deterministic); rows with count 0 (an empty split or device) change nothing. The
// means are merged relative to the first non-empty row's (`origin`, returned apart from the
// relative mean), device rows' with their residuals, so that the merged mean of devices
// with |mean| ≫ std is as exact as one device's.
// In double: one thread per channel over a few rows, and M2 carries the δ² cross terms of
// every merge, which float32 would round at each step (invstd then off by more than an ulp).
struct MergedRows {
  double count;
  double origin;
  double mean;  // relative to origin
  double m2;
};

template <int ROW>
__device__ __forceinline__ MergedRows merge_rows(const float* rows, int64_t count_rows, int64_t C, int64_t c) {
  double count = 0.0, origin = 0.0, mean = 0.0, m2 = 0.0;
  for (int64_t index = 0; index < count_rows; ++index) {
    const float* row = rows + index * ROW * C + c;
    const double n_b = row[0];
    if (count == 0.0) origin = row[C];
    const double mean_b = ROW == kDeviceRow ? (row[C] - origin) + row[3 * C] : row[C] - origin;
    const double m2_b = row[2 * C];
    const double total = count + n_b;
    const double delta = mean_b - mean;
    const double ratio = total > 0.0 ? n_b / total : 0.0;
    mean += delta * ratio;
    m2 += m2_b + delta * delta * count * ratio;
    count = total;
  }
  return {count, origin, mean, m2};
}

// One device's splits merged into its (count, mean, M2, mean residual) row [4, C]
// (synchronised training), the mean un-shifted as K + shifted mean rounded once plus what that
// rounding dropped, so that rows of devices with different pivots merge as they are.
__global__ void __launch_bounds__(kFinalizeThreads)
    bn_merge_partials_kernel(BnTensor x, BnShape shape, const float* partials, float* merged) {
  const int64_t C = shape.channels;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kFinalizeThreads + threadIdx.x;
  if (c >= C) return;
  const MergedRows total = merge_rows<kSplitRow>(partials, shape.splits, C, c);
  const double mean = channel_pivot(x, shape, c) + (total.origin + total.mean);
  const float mean_rounded = static_cast<float>(mean);
  merged[c] = static_cast<float>(total.count);
  merged[C + c] = mean_rounded;
  merged[2 * C + c] = static_cast<float>(total.m2);
  merged[3 * C + c] = static_cast<float>(mean - mean_rounded);
}

// statistics: the splits (args.partials, fp32 [rows, kSplitRow, C], means shifted by the
// pivot: `shifted`) or every device's merged row (fp32 [rows, kDeviceRow, C], un-shifted).
//
// residual (fp32 [C]): mean − float32 mean, written after this thread's channel of
// `statistics` is read, so it may be a slot row of `statistics` itself.
__global__ void __launch_bounds__(kFinalizeThreads)
    bn_finalize_statistics_kernel(BatchNormForwardTrainArgs args, const float* statistics, int64_t rows, bool shifted,
                                  float* residual) {
  const int64_t C = args.shape.channels;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kFinalizeThreads + threadIdx.x;
  if (c >= C) return;
  const MergedRows total =
      shifted ? merge_rows<kSplitRow>(statistics, rows, C, c) : merge_rows<kDeviceRow>(statistics, rows, C, c);
  const float pivot = shifted ? channel_pivot(args.x, args.shape, c) : 0.0f;
  // mean = pivot + origin + relative mean, rounded to float32 once; the residual keeps what
  // that rounding dropped for the forward's elementwise pass.
  const double exact_mean = pivot + (total.origin + total.mean);
  const float mean = static_cast<float>(exact_mean);
  residual[c] = static_cast<float>(exact_mean - mean);
  // Once per channel, so in double: invstd rounded once, as eager's.
  const float invstd = static_cast<float>(1.0 / sqrt(total.m2 / total.count + args.eps));
  args.mean[c] = mean;
  args.invstd[c] = invstd;
  if (args.running_mean.ptr != nullptr && args.running_var.ptr != nullptr) {
    const float factor =
        args.cumulative ? 1.0f / static_cast<float>(*args.num_batches_tracked) : args.momentum;
    const float running_mean = load_scalar(args.running_mean.ptr, args.running_mean.dtype, c);
    const float running_var = load_scalar(args.running_var.ptr, args.running_var.dtype, c);
    const float unbiased = static_cast<float>(total.m2 / (total.count - 1.0));
    store_scalar(args.running_mean.ptr, args.running_mean.dtype, c, running_mean + factor * (mean - running_mean));
    store_scalar(args.running_var.ptr, args.running_var.dtype, c, running_var + factor * (unbiased - running_var));
  }
}

// y = leaky_relu(x·a + b) over a grid of (channel tiles, position tiles of one step each),
// grid-striding over the position tiles (grid.y is capped at 65535).
template <class T, class Tl, Walk WALK>
__global__ void __launch_bounds__(Tl::kThreads)
    bn_forward_elementwise_kernel(BnTensor x, BnTensor y, BnChannelArgs channel, BnShape shape, float slope) {
  using Wk = Walker<T, Tl, WALK>;
  constexpr int CPT = Wk::kChannelsPerThread;
  const int64_t c0 = Wk::first_channel();
  if (c0 >= shape.channels) return;  // no block-wide synchronisation below
  Channel p[CPT];
#pragma unroll
  for (int ch = 0; ch < CPT; ++ch) p[ch] = load_channel(channel, c0 + ch);
  const int64_t units = shape.positions / Wk::kPositionsPerUnit;
  const int64_t tiles = (units + Wk::kStepUnits - 1) / Wk::kStepUnits;
  for (int64_t tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
    int64_t n[Wk::kUnits], s[Wk::kUnits];
    const int valid = Wk::locate(tile * Wk::kStepUnits + threadIdx.y, units, shape, n, s);
    typename Wk::Values v;
    Wk::load(x, c0, n, s, valid, v);
#pragma unroll
    for (int ch = 0; ch < CPT; ++ch) {
#pragma unroll
      for (int j = 0; j < Wk::kValues; ++j) {
        const float z = activation_input(v[ch][j], p[ch]);
        v[ch][j] = z > 0.0f ? z : z * slope;
      }
    }
    Wk::store(y, c0, n, s, valid, v);
  }
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------

template <class T, class Tl, Walk WALK>
__global__ void __launch_bounds__(Tl::kThreads) bn_backward_reduce_kernel(BatchNormBackwardArgs args) {
  using Wk = Walker<T, Tl, WALK>;
  constexpr int CPT = Wk::kChannelsPerThread;
  const BnShape& shape = args.shape;
  const int64_t C = shape.channels;
  const int64_t c0 = Wk::first_channel();
  int64_t first, last;
  split_units<Wk>(shape, first, last);
  GradSums acc[CPT];
#pragma unroll
  for (int ch = 0; ch < CPT; ++ch) acc[ch] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
  if (c0 < C) {
    Channel p[CPT];
#pragma unroll
    for (int ch = 0; ch < CPT; ++ch) p[ch] = load_channel(args.channel, c0 + ch);
    for (int64_t base = first + threadIdx.y; base < last; base += Wk::kStepUnits) {
      int64_t n[Wk::kUnits], s[Wk::kUnits];
      const int valid = Wk::locate(base, last, shape, n, s);
      typename Wk::Values xv, dy;
      Wk::load(args.x, c0, n, s, valid, xv);
      Wk::load(args.grad_out, c0, n, s, valid, dy);
      const int count = valid * Wk::kPositionsPerUnit;
#pragma unroll
      for (int ch = 0; ch < CPT; ++ch) {
#pragma unroll
        for (int j = 0; j < Wk::kValues; ++j) {
          if (j < count) {
            const float dz = activation_input(xv[ch][j], p[ch]) > 0.0f ? dy[ch][j] : dy[ch][j] * args.slope;
            add_to(acc[ch].dz, dz);
            add_product_to(acc[ch].dz_xc, dz, centred(xv[ch][j], p[ch]));
          }
        }
      }
    }
  }
#pragma unroll
  for (int ch = 0; ch < CPT; ++ch) {
    const GradSums total = reduce_lanes<Tl>(acc[ch], AddSums{});
    const int64_t c = c0 + ch;
    if (threadIdx.y == 0 && c < C) {
      float* out = args.partials + static_cast<int64_t>(blockIdx.y) * 4 * C + c;
      out[0] = total.dz.sum;
      out[C] = total.dz_xc.sum;
      out[2 * C] = total.dz.error;
      out[3 * C] = total.dz_xc.error;
    }
  }
}

// inv_p scales the coefficients: 1/P, or 1 for the raw sums of a synchronised backward.
__global__ void __launch_bounds__(kFinalizeThreads)
    bn_backward_finalize_kernel(BatchNormBackwardArgs args, float inv_p) {
  const int64_t C = args.shape.channels;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kFinalizeThreads + threadIdx.x;
  if (c >= C) return;
  Compensated dz = {0.0f, 0.0f}, dz_xc = {0.0f, 0.0f};
  for (int64_t split = 0; split < args.shape.splits; ++split) {  // in order: deterministic
    const float* row = args.partials + split * 4 * C + c;
    dz = add(dz, {row[0], row[2 * C]});
    dz_xc = add(dz_xc, {row[C], row[3 * C]});
  }
  const float sum_dz = dz.sum + dz.error;
  const float sum_dz_xhat =
      static_cast<float>((static_cast<double>(dz_xc.sum) + dz_xc.error) * channel_invstd(args.channel, c));
  if (args.grad_weight.ptr != nullptr) store_scalar(args.grad_weight.ptr, args.grad_weight.dtype, c, sum_dz_xhat);
  if (args.grad_bias.ptr != nullptr) store_scalar(args.grad_bias.ptr, args.grad_bias.dtype, c, sum_dz);
  if (args.training) {
    args.coefficients[c] = sum_dz * inv_p;
    args.coefficients[C + c] = sum_dz_xhat * inv_p;
  }
}

template <class T, class Tl, Walk WALK, bool TRAINING>
__global__ void __launch_bounds__(Tl::kThreads) bn_backward_input_kernel(BatchNormBackwardArgs args) {
  using Wk = Walker<T, Tl, WALK>;
  constexpr int CPT = Wk::kChannelsPerThread;
  const BnShape& shape = args.shape;
  const int64_t C = shape.channels;
  const int64_t c0 = Wk::first_channel();
  if (c0 >= C) return;  // no block-wide synchronisation below
  Channel p[CPT];
  float mean_dz[CPT], mean_dz_xhat[CPT];
#pragma unroll
  for (int ch = 0; ch < CPT; ++ch) {
    p[ch] = load_channel(args.channel, c0 + ch);
    mean_dz[ch] = TRAINING ? args.coefficients[c0 + ch] : 0.0f;
    mean_dz_xhat[ch] = TRAINING ? args.coefficients[C + c0 + ch] : 0.0f;
  }
  const int64_t units = shape.positions / Wk::kPositionsPerUnit;
  const int64_t tiles = (units + Wk::kStepUnits - 1) / Wk::kStepUnits;
  for (int64_t tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
    int64_t n[Wk::kUnits], s[Wk::kUnits];
    const int valid = Wk::locate(tile * Wk::kStepUnits + threadIdx.y, units, shape, n, s);
    typename Wk::Values xv, dy;
    Wk::load(args.x, c0, n, s, valid, xv);
    Wk::load(args.grad_out, c0, n, s, valid, dy);
#pragma unroll
    for (int ch = 0; ch < CPT; ++ch) {
#pragma unroll
      for (int j = 0; j < Wk::kValues; ++j) {
        float dz = activation_input(xv[ch][j], p[ch]) > 0.0f ? dy[ch][j] : dy[ch][j] * args.slope;
        if (TRAINING) dz = dz - mean_dz[ch] - centred(xv[ch][j], p[ch]) * p[ch].invstd * mean_dz_xhat[ch];
        xv[ch][j] = dz * p[ch].scale;
      }
    }
    Wk::store(args.grad_x, c0, n, s, valid, xv);
  }
}

// ---------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------

// The strided tile: channels-last when channels are the smaller stride (channels_last
// tensors, (N, C) inputs), else planar (NCHW-contiguous, and any layout where positions are
// closer).
bool channels_last_tile(const BnTensor& t, const BnShape& shape) {
  if (shape.channels <= 1) return false;
  const int64_t position_stride = shape.spatial > 1 ? std::llabs(t.stride_s) : std::llabs(t.stride_n);
  return std::llabs(t.stride_c) < position_stride;
}

// A stride that only matters when its dimension has more than one index.
bool stride_multiple(int64_t stride, int64_t size, int width) { return size <= 1 || stride % width == 0; }

// Whether every tensor in `tensors` (nullptr-terminated list of present ones) allows `walk`.
bool packed_walk_fits(Walk walk, const BnTensor* const* tensors, int count, const BnShape& shape, int width) {
  const int64_t N = shape.spatial > 0 ? shape.positions / shape.spatial : 0;
  const int64_t C = shape.channels, S = shape.spatial;
  for (int i = 0; i < count; ++i) {
    const BnTensor& t = *tensors[i];
    if (!aligned16(t.ptr) || !stride_multiple(t.stride_n, N, width)) return false;
    if (walk == Walk::kPlanarPacked) {
      if (t.stride_s != 1 || S % width != 0 || !stride_multiple(t.stride_c, C, width)) return false;
    } else {
      if (t.stride_c != 1 || C % width != 0 || !stride_multiple(t.stride_s, S, width)) return false;
    }
  }
  return true;
}

// Calls f(TypeTag<T>{}, Tile{}, std::integral_constant<Walk, ...>{}) for the walk the tensors
// allow: packed when every tensor fits (and, for reductions, the split width is a multiple
// of the pack width), else strided with the tile of `layout` (the first tensor, x).
template <class F>
void with_walk(std::initializer_list<const BnTensor*> tensors, const BnShape& shape, bool reduction, const char* op,
               F&& f) {
  const BnTensor& layout = **tensors.begin();
  for (const BnTensor* t : tensors) {
    if (t->dtype != layout.dtype) {
      throw std::runtime_error(std::string("fastgan.") + op +
                               ": the activations and their gradients must share one dtype");
    }
  }
  dispatch_dtype(layout.dtype, op, [&](auto tag) {
    const int width = pack_width(layout.dtype);
    const bool wide = shape.positions > 2147483647LL;  // p → (n, s) in 64 bits
    const bool splits_fit = !reduction || shape.positions_per_split % width == 0;
    const bool cl = channels_last_tile(layout, shape);
    const Walk packed = cl ? Walk::kChannelsLastPacked : Walk::kPlanarPacked;
    if (!wide && splits_fit && packed_walk_fits(packed, tensors.begin(), static_cast<int>(tensors.size()), shape,
                                                width)) {
      if (cl) {
        f(tag, ChannelsLastPackedTile{}, std::integral_constant<Walk, Walk::kChannelsLastPacked>{});
      } else {
        f(tag, PlanarTile{}, std::integral_constant<Walk, Walk::kPlanarPacked>{});
      }
    } else if (cl) {
      if (wide) {
        f(tag, ChannelsLastTileWide{}, std::integral_constant<Walk, Walk::kStrided>{});
      } else {
        f(tag, ChannelsLastTile{}, std::integral_constant<Walk, Walk::kStrided>{});
      }
    } else {
      if (wide) {
        f(tag, PlanarTileWide{}, std::integral_constant<Walk, Walk::kStrided>{});
      } else {
        f(tag, PlanarTile{}, std::integral_constant<Walk, Walk::kStrided>{});
      }
    }
  });
}

void check_shape(const BnShape& shape, bool reductions, const char* op) {
  if (shape.channels < 0 || shape.spatial < 0 || shape.positions < 0) {
    throw std::runtime_error(std::string("fastgan.") + op + ": negative sizes");
  }
  if (shape.positions > 0 && shape.spatial < 1) {
    throw std::runtime_error(std::string("fastgan.") + op + ": positions without spatial size");
  }
  if (!reductions) return;
  if (shape.splits < 1 || shape.splits > kMaxGridY) {
    throw std::runtime_error(std::string("fastgan.") + op + ": invalid split count " + std::to_string(shape.splits));
  }
  if (shape.positions_per_split < 1 || shape.splits * shape.positions_per_split < shape.positions) {
    throw std::runtime_error(std::string("fastgan.") + op + ": " + std::to_string(shape.splits) + " splits of " +
                             std::to_string(shape.positions_per_split) + " positions do not cover " +
                             std::to_string(shape.positions));
  }
}

template <class T, class Tl, Walk WALK>
dim3 block_of() {
  return dim3(Tl::kChannels, Tl::kLanes);
}

template <class T, class Tl, Walk WALK>
unsigned int channel_blocks(const BnShape& shape, const char* op) {
  constexpr int64_t per_block = static_cast<int64_t>(Tl::kChannels) * Walker<T, Tl, WALK>::kChannelsPerThread;
  return grid_size((shape.channels + per_block - 1) / per_block, op);
}

template <class T, class Tl, Walk WALK>
dim3 reduction_grid(const BnShape& shape, const char* op) {
  return dim3(channel_blocks<T, Tl, WALK>(shape, op), static_cast<unsigned int>(shape.splits));
}

template <class T, class Tl, Walk WALK>
dim3 elementwise_grid(const BnShape& shape, const char* op) {
  using Wk = Walker<T, Tl, WALK>;
  const int64_t units = shape.positions / Wk::kPositionsPerUnit;
  const int64_t tiles = (units + Wk::kStepUnits - 1) / Wk::kStepUnits;
  return dim3(channel_blocks<T, Tl, WALK>(shape, op), static_cast<unsigned int>(tiles < kMaxGridY ? tiles : kMaxGridY));
}

unsigned int finalize_grid(const BnShape& shape, const char* op) {
  return grid_size((shape.channels + kFinalizeThreads - 1) / kFinalizeThreads, op);
}

#define FASTGAN_WALK_TYPES                     \
  using T = typename decltype(tag)::type;     \
  using Tl = decltype(tile);                  \
  constexpr Walk WALK = decltype(walk)::value

void launch_forward_elementwise(const BnTensor& x, const BnTensor& y, const BnChannelArgs& channel,
                                const BnShape& shape, float slope, cudaStream_t stream, const char* op) {
  if (shape.channels == 0 || shape.positions == 0) return;
  with_walk({&x, &y}, shape, false, op, [&](auto tag, auto tile, auto walk) {
    FASTGAN_WALK_TYPES;
    bn_forward_elementwise_kernel<T, Tl, WALK>
        <<<elementwise_grid<T, Tl, WALK>(shape, op), block_of<T, Tl, WALK>(), 0, stream>>>(x, y, channel, shape,
                                                                                         slope);
  });
  check_launch(op);
}

void check_running(const BatchNormForwardTrainArgs& args) {
  const bool has_running = args.running_mean.ptr != nullptr && args.running_var.ptr != nullptr;
  if (has_running && args.cumulative && args.num_batches_tracked == nullptr) {
    throw std::runtime_error("fastgan.ops.batch_norm_leaky_relu: cumulative running statistics need num_batches_tracked");
  }
}

void launch_partial_statistics(const BatchNormForwardTrainArgs& args, cudaStream_t stream, const char* op) {
  with_walk({&args.x}, args.shape, true, op, [&](auto tag, auto tile, auto walk) {
    FASTGAN_WALK_TYPES;
    bn_partial_statistics_kernel<T, Tl, WALK>
        <<<reduction_grid<T, Tl, WALK>(args.shape, op), block_of<T, Tl, WALK>(), 0, stream>>>(args.x, args.partials,
                                                                                            args.shape);
  });
  check_launch(op);
}

// Finalize over `rows` statistics rows (mean, invstd, running statistics), then y.
void finalize_and_normalise(const BatchNormForwardTrainArgs& args, const float* statistics, int64_t rows,
                            bool shifted, cudaStream_t stream, const char* op) {
  // The residual goes to args.mean_residual, or else to the first row's count slots (the
  // splits') or residual slots (the devices'), read before by this channel's finalize thread
  // alone; the caller reads neither.
  float* residual = args.mean_residual != nullptr ? args.mean_residual
                    : shifted ? const_cast<float*>(statistics)
                              : const_cast<float*>(statistics) + 3 * args.shape.channels;
  bn_finalize_statistics_kernel<<<finalize_grid(args.shape, op), kFinalizeThreads, 0, stream>>>(args, statistics, rows,
                                                                                                 shifted, residual);
  check_launch(op);
  BnChannelArgs channel{};
  channel.mean_residual = residual;
  channel.mean = {args.mean, kFloat32};
  channel.stat = {args.invstd, kFloat32};
  channel.weight = args.weight;
  channel.bias = args.bias;
  channel.stat_is_invstd = true;
  channel.eps = args.eps;
  launch_forward_elementwise(args.x, args.y, channel, args.shape, args.slope, stream, op);
}

void launch_backward_sums(const BatchNormBackwardArgs& args, float inv_p, cudaStream_t stream, const char* op) {
  with_walk({&args.x, &args.grad_out}, args.shape, true, op, [&](auto tag, auto tile, auto walk) {
    FASTGAN_WALK_TYPES;
    bn_backward_reduce_kernel<T, Tl, WALK>
        <<<reduction_grid<T, Tl, WALK>(args.shape, op), block_of<T, Tl, WALK>(), 0, stream>>>(args);
  });
  check_launch(op);
  bn_backward_finalize_kernel<<<finalize_grid(args.shape, op), kFinalizeThreads, 0, stream>>>(args, inv_p);
  check_launch(op);
}

void launch_backward_input(const BatchNormBackwardArgs& args, cudaStream_t stream, const char* op) {
  if (args.grad_x.ptr == nullptr || args.shape.positions == 0) return;
  with_walk({&args.x, &args.grad_out, &args.grad_x}, args.shape, false, op, [&](auto tag, auto tile, auto walk) {
    FASTGAN_WALK_TYPES;
    const dim3 grid = elementwise_grid<T, Tl, WALK>(args.shape, op);
    const dim3 block = block_of<T, Tl, WALK>();
    if (args.training) {
      bn_backward_input_kernel<T, Tl, WALK, true><<<grid, block, 0, stream>>>(args);
    } else {
      bn_backward_input_kernel<T, Tl, WALK, false><<<grid, block, 0, stream>>>(args);
    }
  });
  check_launch(op);
}

#undef FASTGAN_WALK_TYPES

}  // namespace

void batch_norm_forward_train(const BatchNormForwardTrainArgs& args, cudaStream_t stream) {
  const char* op = "ops.batch_norm_leaky_relu";
  const BnShape& shape = args.shape;
  check_shape(shape, true, op);
  if (shape.channels == 0) return;
  if (shape.positions < 2) {  // the Python layer raises first; never divide by P - 1 = 0
    throw std::runtime_error("fastgan.ops.batch_norm_leaky_relu: training needs more than 1 value per channel");
  }
  check_running(args);
  launch_partial_statistics(args, stream, op);
  finalize_and_normalise(args, args.partials, shape.splits, true, stream, op);
}

void batch_norm_statistics(const BatchNormForwardTrainArgs& args, float* merged, cudaStream_t stream) {
  const char* op = "ops.batch_norm_leaky_relu (synchronised statistics)";
  const BnShape& shape = args.shape;
  check_shape(shape, true, op);
  if (shape.channels == 0) return;
  launch_partial_statistics(args, stream, op);  // an empty x: every split row is zero
  bn_merge_partials_kernel<<<finalize_grid(shape, op), kFinalizeThreads, 0, stream>>>(args.x, shape, args.partials,
                                                                                     merged);
  check_launch(op);
}

void batch_norm_forward_from_statistics(const BatchNormForwardTrainArgs& args, const float* statistics, int64_t rows,
                                        cudaStream_t stream) {
  const char* op = "ops.batch_norm_leaky_relu (synchronised)";
  check_shape(args.shape, false, op);
  if (rows < 1) throw std::runtime_error("fastgan.ops.batch_norm_leaky_relu: no statistics rows to merge");
  if (args.shape.channels == 0) return;
  check_running(args);
  finalize_and_normalise(args, statistics, rows, false, stream, op);
}

void batch_norm_forward_eval(const BatchNormForwardEvalArgs& args, cudaStream_t stream) {
  const char* op = "ops.batch_norm_leaky_relu";
  check_shape(args.shape, false, op);
  if (args.running_mean.ptr == nullptr || args.running_var.ptr == nullptr) {
    throw std::runtime_error("fastgan.ops.batch_norm_leaky_relu: eval needs running_mean and running_var");
  }
  BnChannelArgs channel{};
  channel.mean = args.running_mean;
  channel.stat = args.running_var;
  channel.weight = args.weight;
  channel.bias = args.bias;
  channel.stat_is_invstd = false;
  channel.eps = args.eps;
  launch_forward_elementwise(args.x, args.y, channel, args.shape, args.slope, stream, op);
}

void batch_norm_backward(const BatchNormBackwardArgs& args, cudaStream_t stream) {
  const char* op = "ops.batch_norm_leaky_relu (backward)";
  const BnShape& shape = args.shape;
  const bool need_sums = args.training || args.grad_weight.ptr != nullptr || args.grad_bias.ptr != nullptr;
  check_shape(shape, need_sums, op);
  if (args.training && args.coefficients == nullptr) {
    throw std::runtime_error("fastgan.ops.batch_norm_leaky_relu (backward): training needs the coefficients buffer");
  }
  if (shape.channels == 0) return;
  if (need_sums) launch_backward_sums(args, 1.0f / static_cast<float>(shape.positions), stream, op);
  launch_backward_input(args, stream, op);
}

void batch_norm_backward_sums(const BatchNormBackwardArgs& args, cudaStream_t stream) {
  const char* op = "ops.batch_norm_leaky_relu (synchronised backward sums)";
  check_shape(args.shape, true, op);
  if (!args.training || !args.channel.stat_is_invstd || args.coefficients == nullptr) {
    throw std::runtime_error("fastgan.ops.batch_norm_leaky_relu (synchronised backward): needs training, the saved "
                             "invstd and the sums buffer");
  }
  if (args.shape.channels == 0) return;
  launch_backward_sums(args, 1.0f, stream, op);  // an empty x: the sums are zero
}

void batch_norm_backward_input(const BatchNormBackwardArgs& args, cudaStream_t stream) {
  const char* op = "ops.batch_norm_leaky_relu (synchronised backward input)";
  check_shape(args.shape, false, op);
  if (!args.training || !args.channel.stat_is_invstd || args.coefficients == nullptr) {
    throw std::runtime_error("fastgan.ops.batch_norm_leaky_relu (synchronised backward): needs training, the saved "
                             "invstd and the coefficients");
  }
  if (args.shape.channels == 0) return;
  launch_backward_input(args, stream, op);
}

}  // namespace fastgan
