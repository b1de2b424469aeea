// BatchNorm + LeakyReLU forward on the CPU (the CPU twin of csrc/batch_norm.cu and
// kernels/batch_norm.py): float32 x viewed as (N, C, S), planar (contiguous (N, C, *): each
// (n, c) row of S values is contiguous). fastgan/ops/batch_norm.py sends everything else to
// PyTorch, channels_last included: PyTorch's CPU kernel for that layout is as fast as a
// channel-vectorized one here, while its planar training kernel is several times slower.
//
// Math. Per channel c over its P = N*S values (training):
//     mean = sum(x) / P,   var = sum((x - mean)^2) / P          (two passes, float64 sums)
//     invstd = 1 / sqrt(var + eps)
//     y = leaky_relu((x - mean) * (w * invstd) + b, slope)       (one pass, float32)
// and running_mean/var move towards mean and the unbiased var * P / (P - 1) by `momentum`,
// in float64 as PyTorch's CPU kernel does. Eval uses the running statistics instead. The
// statistics are summed in float64 lanes, so |mean| >> std is as exact as PyTorch's
// float64-accumulating kernel; centring x before scaling keeps y exact there too.
//
// The backward is PyTorch's (native_batch_norm_backward after leaky_relu_backward on y) from
// the saved mean and invstd, exactly what eager BatchNorm + an in-place LeakyReLU saves.
#include "batch_norm.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

namespace fastgan::cpu {
namespace {

// Elements per thread before another is worth starting: the passes are light (about 0.07 ns an
// element each) and starting a thread costs tens of microseconds.
constexpr int64_t kThreadGrain = 1 << 19;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FASTGAN_NO_ISA_CLONES)
#define FASTGAN_BN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTGAN_BN_CLONES
#endif

// sum(x) of n contiguous floats in float64 lanes.
FASTGAN_BN_CLONES double row_sum(const float* __restrict x, int64_t n) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]);
  return sum;
}

// sum((x - mean)^2) of n contiguous floats in float64 lanes.
FASTGAN_BN_CLONES double row_centred_squares(const float* __restrict x, int64_t n, double mean) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(x[i]) - mean;
    sum += d * d;
  }
  return sum;
}

// y = leaky_relu((x - mean) * scale + shift) over n contiguous floats.
FASTGAN_BN_CLONES void row_normalise(const float* __restrict x, float* __restrict y, int64_t n, float mean,
                                     float scale, float shift, float slope) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float z = (x[i] - mean) * scale + shift;
    y[i] = z > 0.0f ? z : z * slope;
  }
}

// Runs work(t) for t in [0, threads) on `threads` threads (the caller's is thread 0).
template <typename Work>
void run_parallel(int threads, const Work& work) {
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& thread : pool) thread.join();
}

int thread_count(const BatchNormArgs& args) {
  const int64_t total = args.batch * args.channels * args.spatial;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(args.threads, total / kThreadGrain)));
}

// Channel c's float32 (mean, invstd) from float64 (mean, biased var); updates the running
// statistics and the saved ones, and returns the affine map's (scale, shift).
void finish_channel(const BatchNormArgs& args, int64_t c, double mean, double var, float& mean_f, float& scale,
                    float& shift) {
  const double count = static_cast<double>(args.batch * args.spatial);
  const float invstd = static_cast<float>(1.0 / std::sqrt(var + args.eps));
  mean_f = static_cast<float>(mean);
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
  const int64_t per = (C + threads - 1) / threads;
  run_parallel(threads, [&](int t) {
    for (int64_t c = t * per; c < std::min(C, (t + 1) * per); ++c) {
      float mean_f, scale, shift;
      if (args.training) {
        double sum = 0.0;
        for (int64_t n = 0; n < N; ++n) sum += row_sum(args.x + (n * C + c) * S, S);
        const double mean = sum / count;
        double squares = 0.0;
        for (int64_t n = 0; n < N; ++n) squares += row_centred_squares(args.x + (n * C + c) * S, S, mean);
        finish_channel(args, c, mean, squares / count, mean_f, scale, shift);
      } else {
        const float invstd = static_cast<float>(1.0 / std::sqrt(static_cast<double>(args.running_var[c]) + args.eps));
        mean_f = args.running_mean[c];
        scale = args.weight != nullptr ? args.weight[c] * invstd : invstd;
        shift = args.bias != nullptr ? args.bias[c] : 0.0f;
      }
      for (int64_t n = 0; n < N; ++n) {
        row_normalise(args.x + (n * C + c) * S, args.y + (n * C + c) * S, S, mean_f, scale, shift, args.slope);
      }
    }
  });
}

}  // namespace

int batch_norm_thread_grain() { return static_cast<int>(kThreadGrain); }

void batch_norm_leaky_relu_forward(const BatchNormArgs& args) {
  planar_forward(args, thread_count(args));
}

}  // namespace fastgan::cpu
