// BatchNorm + LeakyReLU on the CPU (the CPU twin of csrc/batch_norm.cu and
// kernels/batch_norm.py): float32 or bfloat16 x, planar (NCHW) or channels_last (NHWC, and
// (N, C)) (csrc/cpu/batch_norm.h), parameters and running statistics in float32 or, with a
// bfloat16 x, bfloat16 (a module converted with .to(torch.bfloat16)). Values are computed in
// float32 and statistics summed in float64; bfloat16 is rounded once, at the store.
//
// Math. Per channel c over its P = N*S values (training):
//     mean = sum(x) / P,   var = sum((x - mean)^2) / P
//     invstd = 1 / sqrt(var + eps)
//     y = leaky_relu((x - mean) * (w * invstd) + b, slope)       (one pass, float32, the mean
//                                                                 as a float32 (high, low) pair)
// and running_mean/var move towards mean and the unbiased var * P / (P - 1) by `momentum`,
// in float64 as PyTorch's CPU kernel does. Eval uses the running statistics instead.
// The sums are of centred terms: sum(x - k), k one of the channel's values, then
// sum((x - m_f)^2) around the float32 mean m_f, corrected by P * (mean - m_f)^2. Each short
// run of them (eight per float32 lane) is summed in float32, where centred terms lose nothing
// that matters, and the runs in float64: |mean| >> std is as exact as PyTorch's
// float64-accumulating kernel, with an eighth of its conversions. Centring x before scaling
// keeps y exact there too.
//
// Backward, from what eager BatchNorm + an in-place LeakyReLU saves (x, y, mean, invstd; the
// mean as the forward's float32 pair, so that x - mean is as exact as in the forward):
//     dz = g * (y > 0 ? 1 : slope)             (the sign of z from y for slope >= 0, else z rebuilt)
//     grad_bias = sum(dz),  grad_weight = invstd * sum(dz * (x - mean))      (float64 sums)
//     grad_x = (dz - sum(dz)/P - (x - mean) * invstd^2 * sum(dz * (x - mean))/P) * w * invstd
// in training (PyTorch's formula, in two passes), and grad_x = dz * w * invstd in eval. dz
// stays in float32 (eager's bfloat16 backward rounds it to bfloat16 between its two ops).
//
// Layouts: csrc/cpu/batch_norm_planar.cpp (NCHW) and batch_norm_channels_last.cpp (NHWC),
// sharing batch_norm_maps.h; this file picks one and the number of threads. Results do not
// depend on the thread count in either.
#include "batch_norm.h"

#include "batch_norm_layouts.h"
#include "parallel.h"

#include <cstdint>

namespace fastgan::cpu {
namespace {

// Elements per thread before another is worth waking in PyTorch's OpenMP pool (csrc/cpu/parallel.h).
// Measured fwd+bwd on 2 threads: 2^14 made 8x64x8x8 slower (91 against 84 us), 2^16 kept
// 8x32x16x16 on one thread (120 against 104 us).
constexpr int64_t kThreadGrain = 1 << 15;

// Threads for a forward's or a backward's arguments.
template <typename Args>
int threads_for(const Args& args) {
  return thread_count(args.threads, args.batch * args.channels * args.spatial, kThreadGrain);
}

}  // namespace

void batch_norm_leaky_relu_forward(const BatchNormArgs& args) {
  if (args.channels_last) {
    channels_last_forward(args, threads_for(args));
  } else {
    planar_forward(args, threads_for(args));
  }
}

void batch_norm_leaky_relu_backward(const BatchNormBackwardArgs& args) {
  if (args.channels_last) {
    channels_last_backward(args, threads_for(args));
  } else {
    planar_backward(args, threads_for(args));
  }
}

int batch_norm_thread_grain() { return static_cast<int>(kThreadGrain); }

}  // namespace fastgan::cpu
