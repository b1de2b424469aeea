// Vector-friendly math shared by the native CPU kernels: bfloat16 <-> float32, sixteen-lane
// float32 blocks, and exp and log1p as polynomials written as plain arithmetic so the
// compiler vectorizes the loops that call them (libm calls would keep a loop scalar).
//
//   exp(t), t in [-104, 0]: t = k ln2 + r, |r| <= ln2/2 (Cody-Waite, ln2 split in two);
//     exp(r) by its Taylor series to r^7 (truncation < 8e-9 relative); 2^k applied as two
//     factors 2^(k/2) so k down to -150 (denormal results) needs no special case.
//   log1p(e), e in [0, 1]: 2 atanh(s), s = e / (2 + e) in [0, 1/3]; the odd series to s^15
//     (truncation < 2e-9 relative), and full relative precision as e -> 0.
#pragma once

#include <cstdint>
#include <cstring>

namespace fastgan::cpu {
// Internal linkage: each kernel file compiles its own copies into its per-ISA clones.
namespace {

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

// Sixteen float32 lanes as a GCC/Clang vector type (each ISA clone maps it to its own
// registers), for loops written across a fixed block rather than left to the vectorizer:
// loads and stores of float32 or bfloat16 (rounded to nearest even, NaN kept quiet, as store),
// and the float64 widening of a block's float32 sums.
constexpr int64_t kWideLanes = 16;
typedef float WideFloats __attribute__((vector_size(kWideLanes * sizeof(float))));
typedef uint32_t WideWords __attribute__((vector_size(kWideLanes * sizeof(uint32_t))));
typedef uint16_t WideHalves __attribute__((vector_size(kWideLanes * sizeof(uint16_t))));
typedef double WideDoubles __attribute__((vector_size(kWideLanes * sizeof(double))));

FASTGAN_INLINE void load_wide(const float* p, WideFloats& out) { std::memcpy(&out, p, sizeof out); }

FASTGAN_INLINE void load_wide(const BFloat16* p, WideFloats& out) {
  WideHalves half;
  std::memcpy(&half, p, sizeof half);
  const WideWords words = __builtin_convertvector(half, WideWords) << 16;
  std::memcpy(&out, &words, sizeof out);
}

FASTGAN_INLINE void store_wide(float* p, const WideFloats& value) { std::memcpy(p, &value, sizeof value); }

// Rounded to nearest even as store<BFloat16> does; NaN stays a quiet NaN.
FASTGAN_INLINE void store_wide(BFloat16* p, const WideFloats& value) {
  WideWords bits;
  std::memcpy(&bits, &value, sizeof bits);
  WideWords rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const WideWords nan = (WideWords)(value != value);
  rounded = (rounded & ~nan) | (nan & 0x7FC0u);
  const WideHalves half = __builtin_convertvector(rounded, WideHalves);
  std::memcpy(p, &half, sizeof half);
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

}  // namespace
}  // namespace fastgan::cpu
