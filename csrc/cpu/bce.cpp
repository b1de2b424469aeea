// BCE-with-logits on the CPU in one pass: loss and gradient from one read of the logits and
// labels (the CPU twin of csrc/bce.cu and kernels/bce.py, for contiguous float32 or bfloat16
// operands of one dtype; fastgan/ops/bce.py sends everything else to PyTorch's own op).
//
// Math. For a logit x and label y (float32 arithmetic for every storage dtype):
//
//     l(x, y)        = (1 - y) * x - log_sigmoid(x)            (PyTorch's order of terms)
//     log_sigmoid(x) = min(x, 0) - log1p(e),   e = exp(-|x|) <= 1   (never overflows)
//     dl/dx          = sigmoid(x) - y,         sigmoid(x) = (x >= 0 ? 1 : e) / (1 + e)
//
// so +-inf and NaN give what PyTorch gives. The gradient is written as grad_scale * dl/dx
// (grad_scale = 1/N for a mean) in the forward, so the backward is one multiply.
//
// exp and log1p are csrc/cpu/vector_math.h's polynomials, plain arithmetic the compiler
// vectorizes (libm calls would keep the loop scalar).
//
// Reductions are deterministic and independent of the thread count: each block of
// kBlock elements is summed in float32 lanes, the block sums in float64 in block order.
// On x86-64 every entry point is compiled for x86-64-v4 (AVX-512), v3 (AVX2 + FMA) and the
// baseline, chosen once at load time (GCC target_clones).
#include "bce.h"

#include "parallel.h"
#include "vector_math.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace fastgan::cpu {
namespace {

constexpr int64_t kBlock = 1024;        // elements per float32 partial sum
constexpr int64_t kThreadGrain = 1 << 15;  // elements per thread before another is worth waking

// The loss of one element; writes grad_scale * dl/dx to *grad when kWriteGrad.
template <bool kWriteGrad>
FASTGAN_INLINE float bce_element(float x, float y, float* grad, float grad_scale) {
  const float e = exp_nonpositive(x < 0.0f ? x : -x);
  const float log_sigmoid = (x < 0.0f ? x : 0.0f) - log1p_unit(e);
  if constexpr (kWriteGrad) {
    const float sigmoid = (x >= 0.0f ? 1.0f : e) / (1.0f + e);
    *grad = (sigmoid - y) * grad_scale;
  }
  return (1.0f - y) * x - log_sigmoid;
}

// At most kBlock float32 elements: each loss written to `loss` (kReduce false), or their sum
// in float32 lanes returned (kReduce true).
template <bool kWriteGrad, bool kReduce>
FASTGAN_INLINE float bce_block(const float* __restrict input, const float* __restrict target, float* __restrict loss,
                               float* __restrict grad, float grad_scale, int64_t count) {
  float block_sum = 0.0f;
  if constexpr (kReduce) {
#pragma omp simd reduction(+ : block_sum)
    for (int64_t i = 0; i < count; ++i) {
      block_sum += bce_element<kWriteGrad>(input[i], target[i], grad + i, grad_scale);
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) {
      loss[i] = bce_element<kWriteGrad>(input[i], target[i], grad + i, grad_scale);
    }
  }
  return block_sum;
}

// Elements [begin, end) of one contiguous range (begin a multiple of kBlock), block by block:
// float32 in place; bfloat16 staged through float32 blocks on the stack, so the math runs at
// float32's vector width (mixed 16/32-bit loops vectorize at half of it). Returns the float64
// sum of the block sums when kReduce, else writes each element's loss.
template <typename T, bool kWriteGrad, bool kReduce>
FASTGAN_INLINE double bce_range(const T* __restrict input, const T* __restrict target, T* __restrict loss,
                                T* __restrict grad, float grad_scale, float label, int64_t begin, int64_t end) {
  // No target: every label is `label`, read from one constant block.
  alignas(64) float labels[kBlock];
  if (target == nullptr) {
    for (int64_t i = 0; i < kBlock; ++i) labels[i] = label;
  }
  double total = 0.0;
  for (int64_t block = begin; block < end; block += kBlock) {
    const int64_t count = std::min(end - block, kBlock);
    if constexpr (std::is_same_v<T, float>) {
      total += bce_block<kWriteGrad, kReduce>(input + block, target != nullptr ? target + block : labels,
                                              kReduce ? nullptr : loss + block,
                                              kWriteGrad ? grad + block : nullptr, grad_scale, count);
    } else {
      alignas(64) float x[kBlock], y[kBlock], staged_loss[kBlock], staged_grad[kBlock];
      for (int64_t i = 0; i < count; ++i) {
        x[i] = load(input[block + i]);
        y[i] = target != nullptr ? load(target[block + i]) : label;
      }
      total += bce_block<kWriteGrad, kReduce>(x, y, staged_loss, staged_grad, grad_scale, count);
      if constexpr (!kReduce) {
        for (int64_t i = 0; i < count; ++i) loss[block + i] = store<T>(staged_loss[i]);
      }
      if constexpr (kWriteGrad) {
        for (int64_t i = 0; i < count; ++i) grad[block + i] = store<T>(staged_grad[i]);
      }
    }
  }
  return total;
}

// One entry point per (dtype, gradient, reduction), each compiled for three ISAs.
#define FASTGAN_BCE_ENTRY(NAME, T, WRITE_GRAD, REDUCE)                                                    \
  FASTGAN_ISA_CLONES double NAME(                                                                        \
      const void* input, const void* target, void* loss, void* grad, float grad_scale, float label,        \
      int64_t begin, int64_t end) {                                                                        \
    return bce_range<T, WRITE_GRAD, REDUCE>(static_cast<const T*>(input), static_cast<const T*>(target),   \
                                            static_cast<T*>(loss), static_cast<T*>(grad), grad_scale,      \
                                            label, begin, end);                                            \
  }

FASTGAN_BCE_ENTRY(bce_f32_grad_sum, float, true, true)
FASTGAN_BCE_ENTRY(bce_f32_sum, float, false, true)
FASTGAN_BCE_ENTRY(bce_f32_grad_each, float, true, false)
FASTGAN_BCE_ENTRY(bce_f32_each, float, false, false)
FASTGAN_BCE_ENTRY(bce_bf16_grad_sum, BFloat16, true, true)
FASTGAN_BCE_ENTRY(bce_bf16_sum, BFloat16, false, true)
FASTGAN_BCE_ENTRY(bce_bf16_grad_each, BFloat16, true, false)
FASTGAN_BCE_ENTRY(bce_bf16_each, BFloat16, false, false)

using RangeFn = double (*)(const void*, const void*, void*, void*, float, float, int64_t, int64_t);

RangeFn select_range(int dtype, bool write_grad, bool reduce) {
  static const RangeFn table[2][2][2] = {
      {{bce_f32_each, bce_f32_sum}, {bce_f32_grad_each, bce_f32_grad_sum}},
      {{bce_bf16_each, bce_bf16_sum}, {bce_bf16_grad_each, bce_bf16_grad_sum}},
  };
  return table[dtype == kBFloat16][write_grad][reduce];
}

void store_scalar(void* out, int dtype, float value) {
  if (dtype == kBFloat16) {
    *static_cast<BFloat16*>(out) = store<BFloat16>(value);
  } else {
    *static_cast<float*>(out) = value;
  }
}

}  // namespace

int thread_grain() { return static_cast<int>(kThreadGrain); }

double bce_with_logits_forward(const BceArgs& args) {
  if (args.dtype != kFloat32 && args.dtype != kBFloat16) {
    throw std::invalid_argument("fastgan.bce_with_logits (CPU kernel): float32 and bfloat16 only");
  }
  if (args.reduction < kReduceNone || args.reduction > kReduceSum) {
    throw std::invalid_argument("fastgan.bce_with_logits (CPU kernel): bad reduction code");
  }
  const bool reduce = args.reduction != kReduceNone;
  const RangeFn range = select_range(args.dtype, args.grad != nullptr, reduce);
  const int64_t n = args.numel;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const int threads = thread_count(args.threads, n, kThreadGrain);
  double total = 0.0;
  if (threads == 1) {
    total = range(args.input, args.target, args.loss, args.grad, args.grad_scale, args.label, 0, n);
  } else {
    // Contiguous runs of whole blocks per thread; the block sums are added in block order.
    std::vector<double> block_sums(reduce ? blocks : 0);
    run_parallel_ranges(threads, blocks, [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) {
        const double sum = range(args.input, args.target, args.loss, args.grad, args.grad_scale, args.label,
                                 b * kBlock, std::min(n, (b + 1) * kBlock));
        if (reduce) block_sums[b] = sum;
      }
    });
    for (double sum : block_sums) total += sum;
  }
  if (!reduce) return 0.0;
  const double value = args.reduction == kReduceMean ? total / static_cast<double>(n) : total;
  if (args.loss != nullptr) store_scalar(args.loss, args.dtype, static_cast<float>(value));
  return value;
}

}  // namespace fastgan::cpu
