// CUDA kernels for fused BatchNorm + LeakyReLU (Python side: fastgan/_cuda.py); the twin of
// the Triton kernels in kernels/batch_norm.py, launch for launch.
//
// Layout. Every tensor is seen as (N, C, S) with its own element strides; a position
// p = n·S + s runs over the P = N·S samples of a channel. Offsets are always 64-bit; the
// p → (n, s) division is done in 32 bits when P < 2^31 (a template switch), 64 bits otherwise.
//
// Block shape. A block is CT channels × PT position lanes (blockDim = (CT, PT), CT·PT = 256
// threads, threadIdx.x = channel, threadIdx.y = lane), each thread owning one channel and
// reading kVec positions per step, PT apart. A warp is 32 consecutive linear thread ids, so
// with the channel index fastest:
//   * planar tile (CT = 1, PT = 256), for NCHW-like tensors (unit stride along positions):
//     a warp reads 32 consecutive positions of one channel;
//   * channels-last tile (CT = 32, PT = 8), when stride_c is the smaller stride (channels_last,
//     or (N, C) inputs): a warp reads 32 consecutive channels of one position.
// Either way each warp load is one contiguous run; the tile is picked from x's strides
// (grad_x is allocated like x, so 2 of the 3 backward tensors follow x).
//
// Forward (training): (1) per (channel, split) partial statistics (count, mean, M2) into
// fp32 [splits, 3, C]: each thread keeps Welford/Chan state over two-pass tile statistics
// of its kVec values (tile mean, then Σ(x − tile mean)²; never E[x²] − E[x]²), merged over
// the block's lanes by a fixed shared-memory tree (deterministic); (2) one thread per
// channel merges the splits in order with Chan's formula, writes mean and
// invstd = 1/sqrt(M2/P + eps), and updates the running statistics in place (unbiased
// M2/(P − 1); factor momentum or 1/num_batches_tracked read on the device); (3) elementwise
// y = leaky_relu(x·a + b), a = w·invstd, b = bias − mean·a. Eval is (3) alone.
//
// Backward: x̂ = (x − mean)·invstd, z = w·x̂ + bias, dz = dy if z > 0 else slope·dy.
// (1) per-split Σdz, Σdz·x̂ into fp32 [splits, 2, C]; (2) per channel: grad_weight = Σdz·x̂,
// grad_bias = Σdz, and in training the coefficients (Σdz/P, Σdz·x̂/P); (3) elementwise
// dx = w·invstd·(dz − Σdz/P − x̂·Σdz·x̂/P) in training, w·invstd·dz in eval.
//
// Synchronised (multi-device) training runs these as separately launched stages so that the
// caller can combine devices in between: forward (1) then a merge of the splits into one
// (count, mean, M2) row [3, C] per device, all-gathered by the caller into [devices, 3, C],
// which (2) merges like splits (Chan's merge is associative) before (3); backward (1) and (2)
// with the raw sums (scale 1 instead of 1/P), summed over the devices and divided by the
// global P by the caller, then (3) from those coefficients.
#include "batch_norm.h"

#include "device_utils.cuh"

#include <cstdlib>

namespace fastgan {
namespace {

constexpr int kVec = 4;               // positions per thread per step (independent loads in flight)
constexpr int kFinalizeThreads = 256; // finalize kernels: one thread per channel
constexpr int64_t kMaxGridY = 65535;

template <int CT, int PT, bool WIDE>
struct Tile {
  static constexpr int kChannels = CT;  // blockDim.x
  static constexpr int kLanes = PT;     // blockDim.y, a power of two (tree reduction)
  static constexpr int kThreads = CT * PT;
  static constexpr bool kWide = WIDE;   // 64-bit p → (n, s) division
  static_assert(CT * PT == 256 && (PT & (PT - 1)) == 0, "tile shape");
};

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

struct Channel {
  float mean;
  float invstd;
  float w;
  float b;
};

__device__ __forceinline__ Channel load_channel(const BnChannelArgs& ch, int64_t c) {
  Channel result;
  result.mean = load_as_float(ch.mean.ptr, ch.mean.dtype, c);
  const float stat = load_as_float(ch.stat.ptr, ch.stat.dtype, c);
  result.invstd = ch.stat_is_invstd ? stat : 1.0f / sqrtf(stat + ch.eps);
  result.w = ch.weight.ptr ? load_as_float(ch.weight.ptr, ch.weight.dtype, c) : 1.0f;
  result.b = ch.bias.ptr ? load_as_float(ch.bias.ptr, ch.bias.dtype, c) : 0.0f;
  return result;
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

struct GradSums {
  float dz;       // Σ dz
  float dz_xhat;  // Σ dz·x̂
};

struct MergeWelford {
  __device__ __forceinline__ Welford operator()(const Welford& a, const Welford& b) const { return merge(a, b); }
};

struct AddSums {
  __device__ __forceinline__ GradSums operator()(const GradSums& a, const GradSums& b) const {
    return {a.dz + b.dz, a.dz_xhat + b.dz_xhat};
  }
};

// Combine the kLanes states of each channel column of the block (fixed tree order, so the
// result is deterministic); the result is valid in the threads with threadIdx.y == 0.
// Every thread of the block must call it.
template <class T, class State, class Combine>
__device__ __forceinline__ State reduce_lanes(State value, Combine combine) {
  __shared__ State lanes[T::kLanes][T::kChannels];
  const int tx = threadIdx.x, ty = threadIdx.y;
  lanes[ty][tx] = value;
  __syncthreads();
#pragma unroll
  for (int stride = T::kLanes / 2; stride > 0; stride >>= 1) {
    if (ty < stride) lanes[ty][tx] = combine(lanes[ty][tx], lanes[ty + stride][tx]);
    __syncthreads();
  }
  return lanes[0][tx];
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

template <class T>
__global__ void __launch_bounds__(T::kThreads)
    bn_partial_statistics_kernel(BnTensor x, float* partials, BnShape shape) {
  const int64_t C = shape.channels;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * T::kChannels + threadIdx.x;
  const int64_t split = blockIdx.y;
  const int64_t start = split * shape.positions_per_split;
  const int64_t end = min(start + shape.positions_per_split, shape.positions);  // start >= end: empty split
  Welford acc{0.0f, 0.0f, 0.0f};
  if (c < C) {
    for (int64_t base = start + threadIdx.y; base < end; base += T::kLanes * kVec) {
      float v[kVec];
      int valid = 0;  // positions base + j·kLanes < end form a prefix j < valid (>= 1 here)
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const int64_t p = base + static_cast<int64_t>(j) * T::kLanes;
        v[j] = 0.0f;
        if (p < end) {
          int64_t n, s;
          split_position<T::kWide>(p, shape.spatial, n, s);
          v[j] = load_as_float(x.ptr, x.dtype, element_offset(x, n, c, s));
          ++valid;
        }
      }
      // Two-pass statistics of this thread's tile, then Chan's merge into the running state.
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kVec; ++j) sum += v[j];  // v[j] = 0 past the prefix
      const float tile_count = static_cast<float>(valid);
      const float tile_mean = sum / tile_count;
      float tile_m2 = 0.0f;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const float centred = j < valid ? v[j] - tile_mean : 0.0f;
        tile_m2 += centred * centred;
      }
      acc = merge(acc, Welford{tile_count, tile_mean, tile_m2});
    }
  }
  acc = reduce_lanes<T>(acc, MergeWelford{});
  if (threadIdx.y == 0 && c < C) {
    float* out = partials + split * 3 * C + c;
    out[0] = acc.count;
    out[C] = acc.mean;
    out[2 * C] = acc.m2;
  }
}

// Chan's merge of the `rows` (count, mean, M2) rows of fp32 [rows, 3, C] for channel c, in
// order (deterministic); rows with count 0 (an empty split or device) change nothing.
__device__ __forceinline__ Welford merge_rows(const float* rows, int64_t count_rows, int64_t C, int64_t c) {
  float count = 0.0f, mean = 0.0f, m2 = 0.0f;
  for (int64_t index = 0; index < count_rows; ++index) {
    const float* row = rows + index * 3 * C + c;
    const float n_b = row[0];
    const float mean_b = row[C];
    const float m2_b = row[2 * C];
    const float total = count + n_b;
    const float delta = mean_b - mean;
    const float ratio = total > 0.0f ? n_b / fmaxf(total, 1.0f) : 0.0f;
    mean += delta * ratio;
    m2 += m2_b + delta * delta * count * ratio;
    count = total;
  }
  return {count, mean, m2};
}

// One device's splits merged into its (count, mean, M2) row [3, C] (synchronised training).
__global__ void __launch_bounds__(kFinalizeThreads)
    bn_merge_partials_kernel(const float* partials, int64_t splits, int64_t C, float* merged) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kFinalizeThreads + threadIdx.x;
  if (c >= C) return;
  const Welford total = merge_rows(partials, splits, C, c);
  merged[c] = total.count;
  merged[C + c] = total.mean;
  merged[2 * C + c] = total.m2;
}

// statistics: fp32 [rows, 3, C], the splits (args.partials) or every device's merged row.
__global__ void __launch_bounds__(kFinalizeThreads)
    bn_finalize_statistics_kernel(BatchNormForwardTrainArgs args, const float* statistics, int64_t rows) {
  const int64_t C = args.shape.channels;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kFinalizeThreads + threadIdx.x;
  if (c >= C) return;
  const Welford total = merge_rows(statistics, rows, C, c);
  const float count = total.count, mean = total.mean, m2 = total.m2;
  const float invstd = 1.0f / sqrtf(m2 / count + args.eps);
  args.mean[c] = mean;
  args.invstd[c] = invstd;
  if (args.running_mean.ptr != nullptr && args.running_var.ptr != nullptr) {
    const float factor =
        args.cumulative ? 1.0f / static_cast<float>(*args.num_batches_tracked) : args.momentum;
    const float running_mean = load_as_float(args.running_mean.ptr, args.running_mean.dtype, c);
    const float running_var = load_as_float(args.running_var.ptr, args.running_var.dtype, c);
    const float unbiased = m2 / (count - 1.0f);
    store_from_float(args.running_mean.ptr, args.running_mean.dtype, c, running_mean + factor * (mean - running_mean));
    store_from_float(args.running_var.ptr, args.running_var.dtype, c, running_var + factor * (unbiased - running_var));
  }
}

// y = leaky_relu(x·a + b) over a grid of (channel tiles, position tiles of kLanes·kVec),
// grid-striding over the position tiles (grid.y is capped at 65535).
template <class T>
__global__ void __launch_bounds__(T::kThreads)
    bn_forward_elementwise_kernel(BnTensor x, BnTensor y, BnChannelArgs channel, BnShape shape, float slope) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * T::kChannels + threadIdx.x;
  if (c >= shape.channels) return;  // no block-wide synchronisation below
  const Channel ch = load_channel(channel, c);
  const float scale = ch.w * ch.invstd;
  const float shift = ch.b - ch.mean * scale;
  const int64_t P = shape.positions;
  constexpr int64_t kTilePositions = static_cast<int64_t>(T::kLanes) * kVec;
  const int64_t tiles = (P + kTilePositions - 1) / kTilePositions;
  for (int64_t tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
    const int64_t base = tile * kTilePositions + threadIdx.y;
    float v[kVec];
    int64_t n[kVec], s[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const int64_t p = base + static_cast<int64_t>(j) * T::kLanes;
      v[j] = 0.0f;
      n[j] = s[j] = 0;
      if (p < P) {
        split_position<T::kWide>(p, shape.spatial, n[j], s[j]);
        v[j] = load_as_float(x.ptr, x.dtype, element_offset(x, n[j], c, s[j]));
      }
    }
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      if (base + static_cast<int64_t>(j) * T::kLanes < P) {
        const float z = v[j] * scale + shift;
        store_from_float(y.ptr, y.dtype, element_offset(y, n[j], c, s[j]), z > 0.0f ? z : z * slope);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------

template <class T>
__global__ void __launch_bounds__(T::kThreads) bn_backward_reduce_kernel(BatchNormBackwardArgs args) {
  const BnShape& shape = args.shape;
  const int64_t C = shape.channels;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * T::kChannels + threadIdx.x;
  const int64_t split = blockIdx.y;
  const int64_t start = split * shape.positions_per_split;
  const int64_t end = min(start + shape.positions_per_split, shape.positions);  // start >= end: empty split
  GradSums acc{0.0f, 0.0f};
  if (c < C) {
    const Channel ch = load_channel(args.channel, c);
    for (int64_t base = start + threadIdx.y; base < end; base += T::kLanes * kVec) {
      float xv[kVec], dy[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const int64_t p = base + static_cast<int64_t>(j) * T::kLanes;
        xv[j] = 0.0f;
        dy[j] = 0.0f;
        if (p < end) {
          int64_t n, s;
          split_position<T::kWide>(p, shape.spatial, n, s);
          xv[j] = load_as_float(args.x.ptr, args.x.dtype, element_offset(args.x, n, c, s));
          dy[j] = load_as_float(args.grad_out.ptr, args.grad_out.dtype, element_offset(args.grad_out, n, c, s));
        }
      }
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        if (base + static_cast<int64_t>(j) * T::kLanes < end) {
          const float xhat = (xv[j] - ch.mean) * ch.invstd;
          const float z = xhat * ch.w + ch.b;
          const float dz = z > 0.0f ? dy[j] : dy[j] * args.slope;
          acc.dz += dz;
          acc.dz_xhat += dz * xhat;
        }
      }
    }
  }
  acc = reduce_lanes<T>(acc, AddSums{});
  if (threadIdx.y == 0 && c < C) {
    float* out = args.partials + split * 2 * C + c;
    out[0] = acc.dz;
    out[C] = acc.dz_xhat;
  }
}

// inv_p scales the coefficients: 1/P, or 1 for the raw sums of a synchronised backward.
__global__ void __launch_bounds__(kFinalizeThreads)
    bn_backward_finalize_kernel(BatchNormBackwardArgs args, float inv_p) {
  const int64_t C = args.shape.channels;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kFinalizeThreads + threadIdx.x;
  if (c >= C) return;
  float sum_dz = 0.0f, sum_dz_xhat = 0.0f;
  for (int64_t split = 0; split < args.shape.splits; ++split) {  // in order: deterministic
    const float* row = args.partials + split * 2 * C + c;
    sum_dz += row[0];
    sum_dz_xhat += row[C];
  }
  if (args.grad_weight.ptr != nullptr) store_from_float(args.grad_weight.ptr, args.grad_weight.dtype, c, sum_dz_xhat);
  if (args.grad_bias.ptr != nullptr) store_from_float(args.grad_bias.ptr, args.grad_bias.dtype, c, sum_dz);
  if (args.training) {
    args.coefficients[c] = sum_dz * inv_p;
    args.coefficients[C + c] = sum_dz_xhat * inv_p;
  }
}

template <class T, bool TRAINING>
__global__ void __launch_bounds__(T::kThreads) bn_backward_input_kernel(BatchNormBackwardArgs args) {
  const BnShape& shape = args.shape;
  const int64_t C = shape.channels;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * T::kChannels + threadIdx.x;
  if (c >= C) return;  // no block-wide synchronisation below
  const Channel ch = load_channel(args.channel, c);
  const float scale = ch.w * ch.invstd;
  float mean_dz = 0.0f, mean_dz_xhat = 0.0f;
  if (TRAINING) {
    mean_dz = args.coefficients[c];
    mean_dz_xhat = args.coefficients[C + c];
  }
  const int64_t P = shape.positions;
  constexpr int64_t kTilePositions = static_cast<int64_t>(T::kLanes) * kVec;
  const int64_t tiles = (P + kTilePositions - 1) / kTilePositions;
  for (int64_t tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
    const int64_t base = tile * kTilePositions + threadIdx.y;
    float xv[kVec], dy[kVec];
    int64_t n[kVec], s[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const int64_t p = base + static_cast<int64_t>(j) * T::kLanes;
      xv[j] = 0.0f;
      dy[j] = 0.0f;
      n[j] = s[j] = 0;
      if (p < P) {
        split_position<T::kWide>(p, shape.spatial, n[j], s[j]);
        xv[j] = load_as_float(args.x.ptr, args.x.dtype, element_offset(args.x, n[j], c, s[j]));
        dy[j] = load_as_float(args.grad_out.ptr, args.grad_out.dtype, element_offset(args.grad_out, n[j], c, s[j]));
      }
    }
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      if (base + static_cast<int64_t>(j) * T::kLanes < P) {
        const float xhat = (xv[j] - ch.mean) * ch.invstd;
        const float z = xhat * ch.w + ch.b;
        float dz = z > 0.0f ? dy[j] : dy[j] * args.slope;
        if (TRAINING) dz = dz - mean_dz - xhat * mean_dz_xhat;
        store_from_float(args.grad_x.ptr, args.grad_x.dtype, element_offset(args.grad_x, n[j], c, s[j]), dz * scale);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------

using PlanarTile = Tile<1, 256, false>;
using PlanarTileWide = Tile<1, 256, true>;
using ChannelsLastTile = Tile<32, 8, false>;
using ChannelsLastTileWide = Tile<32, 8, true>;

// The channels-last tile when channels are the smaller stride (channels_last tensors, (N, C)
// inputs), else the planar tile (NCHW-contiguous, and any layout where positions are closer).
bool channels_last_tile(const BnTensor& t, const BnShape& shape) {
  if (shape.channels <= 1) return false;
  const int64_t position_stride = shape.spatial > 1 ? std::llabs(t.stride_s) : std::llabs(t.stride_n);
  return std::llabs(t.stride_c) < position_stride;
}

// Calls f(tile) with the tile type for this layout and index width.
template <class F>
void with_tile(const BnTensor& layout, const BnShape& shape, F&& f) {
  const bool wide = shape.positions > 2147483647LL;  // p → (n, s) in 64 bits
  if (channels_last_tile(layout, shape)) {
    if (wide) f(ChannelsLastTileWide{}); else f(ChannelsLastTile{});
  } else {
    if (wide) f(PlanarTileWide{}); else f(PlanarTile{});
  }
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

template <class T>
dim3 reduction_grid(const BnShape& shape, const char* op) {
  return dim3(grid_size((shape.channels + T::kChannels - 1) / T::kChannels, op), static_cast<unsigned int>(shape.splits));
}

template <class T>
dim3 elementwise_grid(const BnShape& shape, const char* op) {
  const int64_t tile_positions = static_cast<int64_t>(T::kLanes) * kVec;
  const int64_t tiles = (shape.positions + tile_positions - 1) / tile_positions;
  return dim3(grid_size((shape.channels + T::kChannels - 1) / T::kChannels, op),
              static_cast<unsigned int>(tiles < kMaxGridY ? tiles : kMaxGridY));
}

unsigned int finalize_grid(const BnShape& shape, const char* op) {
  return grid_size((shape.channels + kFinalizeThreads - 1) / kFinalizeThreads, op);
}

void launch_forward_elementwise(const BnTensor& x, const BnTensor& y, const BnChannelArgs& channel,
                                const BnShape& shape, float slope, cudaStream_t stream, const char* op) {
  if (shape.channels == 0 || shape.positions == 0) return;
  with_tile(x, shape, [&](auto tile) {
    using T = decltype(tile);
    bn_forward_elementwise_kernel<T>
        <<<elementwise_grid<T>(shape, op), dim3(T::kChannels, T::kLanes), 0, stream>>>(x, y, channel, shape, slope);
    check_launch(op);
  });
}

void check_running(const BatchNormForwardTrainArgs& args) {
  const bool has_running = args.running_mean.ptr != nullptr && args.running_var.ptr != nullptr;
  if (has_running && args.cumulative && args.num_batches_tracked == nullptr) {
    throw std::runtime_error("fastgan.ops.batch_norm_leaky_relu: cumulative running statistics need num_batches_tracked");
  }
}

void launch_partial_statistics(const BatchNormForwardTrainArgs& args, cudaStream_t stream, const char* op) {
  with_tile(args.x, args.shape, [&](auto tile) {
    using T = decltype(tile);
    bn_partial_statistics_kernel<T><<<reduction_grid<T>(args.shape, op), dim3(T::kChannels, T::kLanes), 0, stream>>>(
        args.x, args.partials, args.shape);
    check_launch(op);
  });
}

// Finalize over `rows` statistics rows (mean, invstd, running statistics), then y.
void finalize_and_normalise(const BatchNormForwardTrainArgs& args, const float* statistics, int64_t rows,
                            cudaStream_t stream, const char* op) {
  bn_finalize_statistics_kernel<<<finalize_grid(args.shape, op), kFinalizeThreads, 0, stream>>>(args, statistics, rows);
  check_launch(op);
  BnChannelArgs channel{};
  channel.mean = {args.mean, kFloat32};
  channel.stat = {args.invstd, kFloat32};
  channel.weight = args.weight;
  channel.bias = args.bias;
  channel.stat_is_invstd = true;
  channel.eps = args.eps;
  launch_forward_elementwise(args.x, args.y, channel, args.shape, args.slope, stream, op);
}

void launch_backward_sums(const BatchNormBackwardArgs& args, float inv_p, cudaStream_t stream, const char* op) {
  with_tile(args.x, args.shape, [&](auto tile) {
    using T = decltype(tile);
    bn_backward_reduce_kernel<T><<<reduction_grid<T>(args.shape, op), dim3(T::kChannels, T::kLanes), 0, stream>>>(args);
    check_launch(op);
  });
  bn_backward_finalize_kernel<<<finalize_grid(args.shape, op), kFinalizeThreads, 0, stream>>>(args, inv_p);
  check_launch(op);
}

void launch_backward_input(const BatchNormBackwardArgs& args, cudaStream_t stream, const char* op) {
  if (args.grad_x.ptr == nullptr || args.shape.positions == 0) return;
  with_tile(args.x, args.shape, [&](auto tile) {
    using T = decltype(tile);
    const dim3 grid = elementwise_grid<T>(args.shape, op);
    const dim3 block(T::kChannels, T::kLanes);
    if (args.training) {
      bn_backward_input_kernel<T, true><<<grid, block, 0, stream>>>(args);
    } else {
      bn_backward_input_kernel<T, false><<<grid, block, 0, stream>>>(args);
    }
    check_launch(op);
  });
}

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
  finalize_and_normalise(args, args.partials, shape.splits, stream, op);
}

void batch_norm_statistics(const BatchNormForwardTrainArgs& args, float* merged, cudaStream_t stream) {
  const char* op = "ops.batch_norm_leaky_relu (synchronised statistics)";
  const BnShape& shape = args.shape;
  check_shape(shape, true, op);
  if (shape.channels == 0) return;
  launch_partial_statistics(args, stream, op);  // an empty x: every split row is zero
  bn_merge_partials_kernel<<<finalize_grid(shape, op), kFinalizeThreads, 0, stream>>>(args.partials, shape.splits,
                                                                                     shape.channels, merged);
  check_launch(op);
}

void batch_norm_forward_from_statistics(const BatchNormForwardTrainArgs& args, const float* statistics, int64_t rows,
                                        cudaStream_t stream) {
  const char* op = "ops.batch_norm_leaky_relu (synchronised)";
  check_shape(args.shape, false, op);
  if (rows < 1) throw std::runtime_error("fastgan.ops.batch_norm_leaky_relu: no statistics rows to merge");
  if (args.shape.channels == 0) return;
  check_running(args);
  finalize_and_normalise(args, statistics, rows, stream, op);
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
