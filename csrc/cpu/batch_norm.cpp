// BatchNorm + LeakyReLU forward on the CPU (the CPU twin of csrc/batch_norm.cu and
// kernels/batch_norm.py): float32 x viewed as (N, C, S), planar (contiguous (N, C, *): each
// (n, c) row of S values is contiguous). fastgan/ops/batch_norm.py sends everything else to
// PyTorch, channels_last included: PyTorch's CPU kernel for that layout is as fast as a
// channel-vectorized one here, while its planar training kernel is several times slower.
//
// Math. Per channel c over its P = N*S values (training):
//     mean = sum(x) / P,   var = sum((x - mean)^2) / P          (two passes, float64 sums)
//     invstd = 1 / sqrt(var + eps)
//     y = leaky_relu((x - mean) * (w * invstd) + b, slope)       (one pass, float32, the mean
//                                                                 as a float32 (high, low) pair)
// and running_mean/var move towards mean and the unbiased var * P / (P - 1) by `momentum`,
// in float64 as PyTorch's CPU kernel does. Eval uses the running statistics instead. The
// statistics are summed in float64 lanes, so |mean| >> std is as exact as PyTorch's
// float64-accumulating kernel; centring x before scaling keeps y exact there too.
//
// Backward, from what eager BatchNorm + an in-place LeakyReLU saves (x, y, mean, invstd):
//     dz = g * (y > 0 ? 1 : slope)             (the sign of z from y for slope >= 0, else z rebuilt)
//     grad_bias = sum(dz),  grad_weight = invstd * sum(dz * (x - mean))      (float64 sums)
//     grad_x = (dz - sum(dz)/P - (x - mean) * invstd^2 * sum(dz * (x - mean))/P) * w * invstd
// in training (PyTorch's formula, in two passes), and grad_x = dz * w * invstd in eval.
#include "batch_norm.h"

#include "parallel.h"
#include "vector_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace fastgan::cpu {
namespace {

// Elements per thread before another is worth waking in PyTorch's OpenMP pool (csrc/cpu/parallel.h).
// Measured fwd+bwd on 2 threads: 2^14 made 8x64x8x8 slower (91 against 84 us), 2^16 kept
// 8x32x16x16 on one thread (120 against 104 us).
constexpr int64_t kThreadGrain = 1 << 15;

// sum(x) of n contiguous floats in float64 lanes.
FASTGAN_ISA_CLONES double row_sum(const float* __restrict x, int64_t n) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]);
  return sum;
}

// sum((x - mean)^2) of n contiguous floats in float64 lanes.
FASTGAN_ISA_CLONES double row_centred_squares(const float* __restrict x, int64_t n, double mean) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(x[i]) - mean;
    sum += d * d;
  }
  return sum;
}

// y = leaky_relu(((x - mean) - mean_low) * scale + shift) over n contiguous floats. mean + mean_low
// is the float64 mean as a float32 pair: x - mean is exact when |mean| >> std, so the mean's
// float32 rounding does not reach y.
FASTGAN_ISA_CLONES void row_normalise(const float* __restrict x, float* __restrict y, int64_t n, float mean,
                                     float mean_low, float scale, float shift, float slope) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float z = ((x[i] - mean) - mean_low) * scale + shift;
    y[i] = z > 0.0f ? z : z * slope;
  }
}

// Channel c's float32 (mean, invstd) from float64 (mean, biased var); updates the running
// statistics and the saved ones, and returns the affine map's (scale, shift).
void finish_channel(const BatchNormArgs& args, int64_t c, double mean, double var, float& mean_f, float& mean_low,
                    float& scale, float& shift) {
  const double count = static_cast<double>(args.batch * args.spatial);
  const float invstd = static_cast<float>(1.0 / std::sqrt(var + args.eps));
  mean_f = static_cast<float>(mean);
  mean_low = static_cast<float>(mean - static_cast<double>(mean_f));
  if (args.running_mean != nullptr) {
    const double m = args.momentum;
    const double unbiased = count > 1 ? var * count / (count - 1) : var;
    args.running_mean[c] = static_cast<float>(m * mean + (1.0 - m) * args.running_mean[c]);
    args.running_var[c] = static_cast<float>(m * unbiased + (1.0 - m) * args.running_var[c]);
  }
  if (args.save_mean != nullptr) {
    args.save_mean[c] = mean_f;
    args.save_invstd[c] = invstd;
  }
  scale = args.weight != nullptr ? args.weight[c] * invstd : invstd;
  shift = args.bias != nullptr ? args.bias[c] : 0.0f;
}

// Each thread takes whole channels, statistics then normalisation: no barrier, and each
// channel's sums run in the same order for any thread count.
void planar_forward(const BatchNormArgs& args, int threads) {
  const int64_t C = args.channels, S = args.spatial, N = args.batch;
  const double count = static_cast<double>(N * S);
  run_parallel_ranges(threads, C, [&](int64_t first, int64_t last) {
    // Each pass walks memory in order (batch outer, channel inner), so rows of one channel,
    // C * S floats apart, are not fetched page by page; each channel's sums still run in batch order.
    const int64_t width = last - first;
    std::vector<double> mean(width, 0.0), squares(width, 0.0);
    std::vector<float> mean_f(width), mean_low(width, 0.0f), scale(width), shift(width);
    if (args.training) {
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = first; c < last; ++c) mean[c - first] += row_sum(args.x + (n * C + c) * S, S);
      for (int64_t c = first; c < last; ++c) mean[c - first] /= count;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = first; c < last; ++c)
          squares[c - first] += row_centred_squares(args.x + (n * C + c) * S, S, mean[c - first]);
      for (int64_t c = first; c < last; ++c) {
        finish_channel(args, c, mean[c - first], squares[c - first] / count, mean_f[c - first], mean_low[c - first],
                       scale[c - first], shift[c - first]);
      }
    } else {
      for (int64_t c = first; c < last; ++c) {
        const float invstd = static_cast<float>(1.0 / std::sqrt(static_cast<double>(args.running_var[c]) + args.eps));
        mean_f[c - first] = args.running_mean[c];
        scale[c - first] = args.weight != nullptr ? args.weight[c] * invstd : invstd;
        shift[c - first] = args.bias != nullptr ? args.bias[c] : 0.0f;
      }
    }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = first; c < last; ++c) {
        row_normalise(args.x + (n * C + c) * S, args.y + (n * C + c) * S, S, mean_f[c - first], mean_low[c - first],
                      scale[c - first], shift[c - first], args.slope);
      }
  });
}

// The activation's gradient at one element: g where z > 0, g * slope elsewhere. The sign of z
// is read from y (kFromY: slope >= 0, where y > 0 exactly where z > 0), else z is rebuilt from x.
template <bool kFromY>
FASTGAN_INLINE float activation_grad(float g, float y, float x, float mean, float scale, float shift, float slope) {
  const bool positive = kFromY ? y > 0.0f : (x - mean) * scale + shift > 0.0f;
  return positive ? g : g * slope;
}

// sum(dz) and sum(dz * (x - mean)) over one row of n contiguous values, in float64 lanes.
template <bool kFromY>
FASTGAN_INLINE void row_grad_sums(const float* __restrict g, const float* __restrict x, const float* __restrict y,
                                     int64_t n, float mean, float scale, float shift, float slope, double& sum_dz,
                                     double& dot) {
  double sum = 0.0, product = 0.0;
#pragma omp simd reduction(+ : sum, product)
  for (int64_t i = 0; i < n; ++i) {
    const float dz = activation_grad<kFromY>(g[i], kFromY ? y[i] : 0.0f, x[i], mean, scale, shift, slope);
    sum += static_cast<double>(dz);
    product += static_cast<double>(dz) * (static_cast<double>(x[i]) - static_cast<double>(mean));
  }
  sum_dz += sum;
  dot += product;
}

// grad_x over one row: ((dz - grad_mean) - (x - mean) * projection) * w_invstd.
template <bool kFromY>
FASTGAN_INLINE void row_grad_input(const float* __restrict g, const float* __restrict x, const float* __restrict y,
                                      float* __restrict grad_x, int64_t n, float mean, float scale, float shift,
                                      float slope, float grad_mean, float projection, float w_invstd) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float dz = activation_grad<kFromY>(g[i], kFromY ? y[i] : 0.0f, x[i], mean, scale, shift, slope);
    grad_x[i] = ((dz - grad_mean) - (x[i] - mean) * projection) * w_invstd;
  }
}

// The backward of channels [first, last), walking memory in order as the forward does.
template <bool kFromY>
FASTGAN_ISA_CLONES void channels_backward(const BatchNormBackwardArgs& args, int64_t first, int64_t last) {
  const int64_t C = args.channels, S = args.spatial, N = args.batch;
  const double count = static_cast<double>(N * S);
  const int64_t width = last - first;
  std::vector<float> mean(width), invstd(width), scale(width), shift(width);
  std::vector<double> sum_dz(width, 0.0), dot(width, 0.0);
  for (int64_t c = first; c < last; ++c) {
    const int64_t k = c - first;
    mean[k] = args.mean[c];
    invstd[k] = args.stat_is_var ? static_cast<float>(1.0 / std::sqrt(static_cast<double>(args.stat[c]) + args.eps))
                                 : args.stat[c];
    scale[k] = (args.weight != nullptr ? args.weight[c] : 1.0f) * invstd[k];
    shift[k] = args.bias != nullptr ? args.bias[c] : 0.0f;
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = first; c < last; ++c) {
      const int64_t row = (n * C + c) * S, k = c - first;
      row_grad_sums<kFromY>(args.grad_out + row, args.x + row, kFromY ? args.y + row : nullptr, S, mean[k], scale[k],
                            shift[k], args.slope, sum_dz[k], dot[k]);
    }
  for (int64_t c = first; c < last; ++c) {
    const int64_t k = c - first;
    if (args.grad_weight != nullptr) args.grad_weight[c] = static_cast<float>(dot[k] * invstd[k]);
    if (args.grad_bias != nullptr) args.grad_bias[c] = static_cast<float>(sum_dz[k]);
  }
  if (args.grad_x == nullptr) return;
  std::vector<float> grad_mean(width, 0.0f), projection(width, 0.0f);
  if (args.training) {
    for (int64_t k = 0; k < width; ++k) {
      grad_mean[k] = static_cast<float>(sum_dz[k] / count);
      projection[k] = static_cast<float>(dot[k] / count * static_cast<double>(invstd[k]) * invstd[k]);
    }
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = first; c < last; ++c) {
      const int64_t row = (n * C + c) * S, k = c - first;
      row_grad_input<kFromY>(args.grad_out + row, args.x + row, kFromY ? args.y + row : nullptr, args.grad_x + row, S,
                             mean[k], scale[k], shift[k], args.slope, grad_mean[k], projection[k], scale[k]);
    }
}

}  // namespace

void batch_norm_leaky_relu_backward(const BatchNormBackwardArgs& args) {
  const int64_t C = args.channels;
  const int threads = thread_count(args.threads, args.batch * C * args.spatial, kThreadGrain);
  run_parallel_ranges(threads, C, [&](int64_t first, int64_t last) {
    if (args.y != nullptr) {
      channels_backward<true>(args, first, last);
    } else {
      channels_backward<false>(args, first, last);
    }
  });
}

int batch_norm_thread_grain() { return static_cast<int>(kThreadGrain); }

void batch_norm_leaky_relu_forward(const BatchNormArgs& args) {
  planar_forward(args, thread_count(args.threads, args.batch * args.channels * args.spatial, kThreadGrain));
}

}  // namespace fastgan::cpu
