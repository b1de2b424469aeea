// The Rényi-α divergence's logsumexp over one row of logits on the CPU (the CPU twin of
// csrc/renyi.cu and kernels/renyi.py for the common case, a 1-d batch of float32 or bfloat16
// logits; fastgan/ops/renyi.py sends everything else to its PyTorch form).
//
// Math (fastgan/ops/renyi.py's header has the whole derivation). With beta = 1 - alpha and
// x_i = beta * r_i - m, m = max_i beta * r_i:
//
//     D_alpha = -(m + log A) / beta,   A = E / n,   E = sum_i exp(x_i)   (every term in (0, 1])
//     dD/dr_i = -exp(x_i) / E          (-softmax(beta * r)_i)
//
// The forward reads r once: each block of kBlock elements is read into L1 (and to float32 for
// bfloat16), its maximum taken, then its exponentials summed against that maximum in float32
// lanes (terms of one sign: nothing cancels). The block pairs (max_b, sum_b) are merged in
// block order in float64, E = sum_b sum_b * exp(max_b - m), so the result does not depend on
// the thread count. Where A > 1/2 (near-uniform weights, alpha -> 1) the caller computes
// log A as log1p of the expm1 sum instead, from m. A NaN or infinite beta * r (r itself, or a
// product that overflowed float32) is reported (finite = false): the caller takes the
// reference there, as the PyTorch form does.
// The backward is one pass: grad_i = scale * exp(beta * r_i - m), scale = -g / E.
#include "renyi.h"

#include "dtype.h"
#include "parallel.h"
#include "vector_math.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

namespace fastgan::cpu {
namespace {

constexpr int64_t kBlock = 1024;
constexpr int64_t kThreadGrain = 1 << 15;  // elements per thread before another is worth waking

struct BlockSums {
  float max;   // max of beta * r over the block
  float sum;   // sum of exp(beta * r - max)
  bool finite;
};

// One block of float32 logits already in L1.
FASTGAN_INLINE BlockSums renyi_block(const float* __restrict r, int64_t count, float beta) {
  float max = -std::numeric_limits<float>::infinity();
  int nonfinite = 0;
#pragma omp simd reduction(max : max) reduction(+ : nonfinite)
  for (int64_t i = 0; i < count; ++i) {
    const float x = beta * r[i];
    max = x > max ? x : max;
    nonfinite += !(std::fabs(x) <= std::numeric_limits<float>::max());  // r inf or NaN, or beta * r overflowed
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < count; ++i) sum += exp_nonpositive(beta * r[i] - max);
  return {max, sum, nonfinite == 0};
}

// Blocks [first, last) of the row into block_sums.
template <typename T>
FASTGAN_INLINE void renyi_blocks(const T* __restrict r, int64_t n, float beta, int64_t first, int64_t last,
                                 BlockSums* block_sums) {
  for (int64_t b = first; b < last; ++b) {
    const int64_t begin = b * kBlock, count = std::min(n - begin, kBlock);
    if constexpr (std::is_same_v<T, float>) {
      block_sums[b] = renyi_block(r + begin, count, beta);
    } else {
      alignas(64) float staged[kBlock];
      for (int64_t i = 0; i < count; ++i) staged[i] = load(r[begin + i]);
      block_sums[b] = renyi_block(staged, count, beta);
    }
  }
}

// grad[i] = scale * exp(beta * r[i] - shift) over [begin, end).
template <typename T>
FASTGAN_INLINE void renyi_grad_range(const T* __restrict r, T* __restrict grad, float beta, float shift, float scale,
                                     int64_t begin, int64_t end) {
  if constexpr (std::is_same_v<T, float>) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) grad[i] = scale * exp_nonpositive(beta * r[i] - shift);
  } else {
    for (int64_t block = begin; block < end; block += kBlock) {
      const int64_t count = std::min(end - block, kBlock);
      alignas(64) float staged[kBlock];
      for (int64_t i = 0; i < count; ++i) staged[i] = load(r[block + i]);
#pragma omp simd
      for (int64_t i = 0; i < count; ++i) staged[i] = scale * exp_nonpositive(beta * staged[i] - shift);
      for (int64_t i = 0; i < count; ++i) grad[block + i] = store<T>(staged[i]);
    }
  }
}

FASTGAN_ISA_CLONES void renyi_blocks_f32(const void* r, int64_t n, float beta, int64_t first, int64_t last,
                                         BlockSums* out) {
  renyi_blocks(static_cast<const float*>(r), n, beta, first, last, out);
}
FASTGAN_ISA_CLONES void renyi_blocks_bf16(const void* r, int64_t n, float beta, int64_t first, int64_t last,
                                          BlockSums* out) {
  renyi_blocks(static_cast<const BFloat16*>(r), n, beta, first, last, out);
}
FASTGAN_ISA_CLONES void renyi_grad_f32(const void* r, void* grad, float beta, float shift, float scale, int64_t begin,
                                       int64_t end) {
  renyi_grad_range(static_cast<const float*>(r), static_cast<float*>(grad), beta, shift, scale, begin, end);
}
FASTGAN_ISA_CLONES void renyi_grad_bf16(const void* r, void* grad, float beta, float shift, float scale, int64_t begin,
                                        int64_t end) {
  renyi_grad_range(static_cast<const BFloat16*>(r), static_cast<BFloat16*>(grad), beta, shift, scale, begin, end);
}

void check(const RenyiArgs& args) {
  if (args.dtype != kFloat32 && args.dtype != kBFloat16) {
    throw std::invalid_argument("fastgan.renyi_divergence (CPU kernel): float32 and bfloat16 only");
  }
  if (args.beta == 0.0f || args.n < 1) {
    throw std::invalid_argument("fastgan.renyi_divergence (CPU kernel): needs beta != 0 and n >= 1");
  }
}

}  // namespace

RenyiSums renyi_forward(const RenyiArgs& args) {
  check(args);
  const int64_t blocks = (args.n + kBlock - 1) / kBlock;
  std::vector<BlockSums> block_sums(blocks);
  const auto range = args.dtype == kBFloat16 ? renyi_blocks_bf16 : renyi_blocks_f32;
  run_parallel_ranges(thread_count(args.threads, args.n, kThreadGrain), blocks, [&](int64_t first, int64_t last) {
    range(args.log_ratio, args.n, args.beta, first, last, block_sums.data());
  });
  RenyiSums sums{-std::numeric_limits<float>::infinity(), 0.0, true};
  for (const BlockSums& block : block_sums) {
    sums.finite = sums.finite && block.finite;
    sums.shift = std::max(sums.shift, block.max);
  }
  if (!sums.finite) return sums;
  for (const BlockSums& block : block_sums) {
    sums.expsum += static_cast<double>(block.sum) * std::exp(static_cast<double>(block.max) - sums.shift);
  }
  return sums;
}

void renyi_backward(const RenyiArgs& args, void* grad, float shift, float scale) {
  check(args);
  const auto range = args.dtype == kBFloat16 ? renyi_grad_bf16 : renyi_grad_f32;
  const int64_t blocks = (args.n + kBlock - 1) / kBlock;
  run_parallel_ranges(thread_count(args.threads, args.n, kThreadGrain), blocks, [&](int64_t first, int64_t last) {
    range(args.log_ratio, grad, args.beta, shift, scale, first * kBlock, std::min(args.n, last * kBlock));
  });
}

int renyi_thread_grain() { return static_cast<int>(kThreadGrain); }

}  // namespace fastgan::cpu
