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
// exp and log1p are polynomials written as plain arithmetic so the compiler vectorizes the
// loop (libm calls would keep it scalar):
//   exp(t), t in [-104, 0]: t = k ln2 + r, |r| <= ln2/2 (Cody-Waite, ln2 split in two);
//     exp(r) by its Taylor series to r^7 (truncation < 8e-9 relative); 2^k applied as two
//     factors 2^(k/2) so k down to -150 (denormal results) needs no special case.
//   log1p(e), e in [0, 1]: 2 atanh(s), s = e / (2 + e) in [0, 1/3]; the odd series to s^15
//     (truncation < 2e-9 relative), and full relative precision as e -> 0.
//
// Reductions are deterministic and independent of the thread count: each block of
// kBlock elements is summed in float32 lanes, the block sums in float64 in block order.
// On x86-64 every entry point is compiled for x86-64-v4 (AVX-512), v3 (AVX2 + FMA) and the
// baseline, chosen once at load time (GCC target_clones).
#include "bce.h"

#include "parallel.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace fastgan::cpu {
namespace {

constexpr int64_t kBlock = 1024;        // elements per float32 partial sum
constexpr int64_t kThreadGrain = 1 << 15;  // elements per thread before another is worth waking

#define FASTGAN_INLINE inline __attribute__((always_inline))

// x86-64 with GCC: every entry point in three ISA versions, resolved once at load time.
// Elsewhere, and with FASTGAN_NO_ISA_CLONES (ThreadSanitizer cannot run ifunc resolvers), one
// version for the compiler's target.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FASTGAN_NO_ISA_CLONES)
#define FASTGAN_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTGAN_ISA_CLONES
#endif

FASTGAN_INLINE float from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

FASTGAN_INLINE uint32_t to_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

// Storage <-> float32 (float16 is not here: without F16C its conversions are libgcc calls that
// keep the loop scalar). bfloat16 is the top half of a float32; stores round to nearest even.
struct BFloat16 {
  uint16_t bits;
};

FASTGAN_INLINE float load(float value) { return value; }
FASTGAN_INLINE float load(BFloat16 value) { return from_bits(static_cast<uint32_t>(value.bits) << 16); }

template <typename T>
FASTGAN_INLINE T store(float value);
template <>
FASTGAN_INLINE float store<float>(float value) { return value; }
template <>
FASTGAN_INLINE BFloat16 store<BFloat16>(float value) {
  const uint32_t bits = to_bits(value);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return BFloat16{static_cast<uint16_t>(value != value ? 0x7FC0u : rounded)};  // NaN stays a quiet NaN
}

// exp(t) for t <= 0 (below -104 the result is below the smallest denormal); NaN stays NaN.
FASTGAN_INLINE float exp_nonpositive(float t) {
  t = t < -104.0f ? -104.0f : t;
  const float round_magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float k = (t * 1.44269504088896341f + round_magic) - round_magic;
  float r = t - k * 0.693145751953125f;  // ln2's high part: k * it is exact
  r = r - k * 1.428606765330187045e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t k_int = static_cast<int32_t>(k == k ? k : 0.0f);  // a NaN k would be undefined to convert
  const int32_t half = k_int >> 1;
  return p * from_bits(static_cast<uint32_t>(half + 127) << 23) *
         from_bits(static_cast<uint32_t>(k_int - half + 127) << 23);
}

// log(1 + e) for 0 <= e <= 1.
FASTGAN_INLINE float log1p_unit(float e) {
  const float s = e / (2.0f + e);
  const float z = s * s;
  float p = 2.0f / 15.0f;
  p = p * z + 2.0f / 13.0f;
  p = p * z + 2.0f / 11.0f;
  p = p * z + 2.0f / 9.0f;
  p = p * z + 2.0f / 7.0f;
  p = p * z + 2.0f / 5.0f;
  p = p * z + 2.0f / 3.0f;
  return (s * z) * p + 2.0f * s;
}

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
                                T* __restrict grad, float grad_scale, int64_t begin, int64_t end) {
  double total = 0.0;
  for (int64_t block = begin; block < end; block += kBlock) {
    const int64_t count = std::min(end - block, kBlock);
    if constexpr (std::is_same_v<T, float>) {
      total += bce_block<kWriteGrad, kReduce>(input + block, target + block, kReduce ? nullptr : loss + block,
                                              kWriteGrad ? grad + block : nullptr, grad_scale, count);
    } else {
      alignas(64) float x[kBlock], y[kBlock], staged_loss[kBlock], staged_grad[kBlock];
      for (int64_t i = 0; i < count; ++i) {
        x[i] = load(input[block + i]);
        y[i] = load(target[block + i]);
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
      const void* input, const void* target, void* loss, void* grad, float grad_scale, int64_t begin,      \
      int64_t end) {                                                                                       \
    return bce_range<T, WRITE_GRAD, REDUCE>(static_cast<const T*>(input), static_cast<const T*>(target),   \
                                            static_cast<T*>(loss), static_cast<T*>(grad), grad_scale,      \
                                            begin, end);                                                   \
  }

FASTGAN_BCE_ENTRY(bce_f32_grad_sum, float, true, true)
FASTGAN_BCE_ENTRY(bce_f32_sum, float, false, true)
FASTGAN_BCE_ENTRY(bce_f32_grad_each, float, true, false)
FASTGAN_BCE_ENTRY(bce_f32_each, float, false, false)
FASTGAN_BCE_ENTRY(bce_bf16_grad_sum, BFloat16, true, true)
FASTGAN_BCE_ENTRY(bce_bf16_sum, BFloat16, false, true)
FASTGAN_BCE_ENTRY(bce_bf16_grad_each, BFloat16, true, false)
FASTGAN_BCE_ENTRY(bce_bf16_each, BFloat16, false, false)

using RangeFn = double (*)(const void*, const void*, void*, void*, float, int64_t, int64_t);

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

void bce_with_logits_forward(const BceArgs& args) {
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
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(args.threads, n / kThreadGrain)));
  double total = 0.0;
  if (threads == 1) {
    total = range(args.input, args.target, args.loss, args.grad, args.grad_scale, 0, n);
  } else {
    // Contiguous runs of whole blocks per thread; the block sums are added in block order.
    const int64_t blocks_per_thread = (blocks + threads - 1) / threads;
    std::vector<double> block_sums(reduce ? blocks : 0);
    auto work = [&](int t) {
      const int64_t first = std::min(blocks, t * blocks_per_thread);
      const int64_t last = std::min(blocks, first + blocks_per_thread);
      for (int64_t b = first; b < last; ++b) {
        const double sum = range(args.input, args.target, args.loss, args.grad, args.grad_scale, b * kBlock,
                                 std::min(n, (b + 1) * kBlock));
        if (reduce) block_sums[b] = sum;
      }
    };
    run_parallel(threads, work);
    for (double sum : block_sums) total += sum;
  }
  if (reduce) {
    const double value = args.reduction == kReduceMean ? total / static_cast<double>(n) : total;
    store_scalar(args.loss, args.dtype, static_cast<float>(value));
  }
}

}  // namespace fastgan::cpu
