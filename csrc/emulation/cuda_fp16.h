// Emulated <cuda_fp16.h>: IEEE binary16 storage and the conversions fastgan's kernels use,
// bit for bit as CUDA's own host implementation (tests/test_emulation.py checks every
// float against the toolkit's header where one is installed). No half arithmetic: the
// kernels convert to float and compute in fp32.
#pragma once

#include "cuda_runtime.h"

struct __half {
  unsigned short __x;
};

struct __align__(4) __half2 {
  __half x;
  __half y;
};

namespace fastgan_emu {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Round to nearest even. NaN becomes the canonical 0x7fff, as on the device.
inline unsigned short float_to_half_bits(float value) {
  const uint32_t bits = float_bits(value);
  const uint32_t magnitude = bits & 0x7fffffffu;
  const uint32_t sign = (bits >> 16) & 0x8000u;
  if (magnitude >= 0x7f800000u) return magnitude == 0x7f800000u ? static_cast<unsigned short>(sign | 0x7c00u) : 0x7fffu;
  uint32_t result;
  uint32_t dropped;  // the bits shifted out, left-aligned: 0x80000000 is exactly one half ulp
  if (magnitude > 0x477fefffu) {  // at or past 65520: rounds to infinity
    result = sign | 0x7bffu;
    dropped = 0x80000000u;
  } else if (magnitude >= 0x38800000u) {  // normal halves
    result = sign | ((magnitude - 0x38000000u) >> 13);
    dropped = magnitude << 19;
  } else if (magnitude <= 0x33000000u) {  // at most half the smallest subnormal: signed zero
    result = sign;
    dropped = magnitude;
  } else {  // subnormal halves
    const uint32_t shift = 0x7eu - (magnitude >> 23);
    const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
    result = (sign | (mantissa >> shift)) & 0xffffu;
    dropped = mantissa << (32u - shift);
  }
  if (dropped > 0x80000000u || (dropped == 0x80000000u && (result & 1u))) ++result;
  return static_cast<unsigned short>(result);
}

// Exact; NaN becomes 0x7fffffff (sign dropped), as CUDA's host conversion does.
inline float half_bits_to_float(unsigned short h) {
  uint32_t sign = (static_cast<uint32_t>(h) >> 15) & 1u;
  uint32_t exponent = (static_cast<uint32_t>(h) >> 10) & 0x1fu;
  uint32_t mantissa = (static_cast<uint32_t>(h) & 0x3ffu) << 13;
  if (exponent == 0x1fu) {
    if (mantissa != 0u) {
      sign = 0u;
      mantissa = 0x7fffffu;
    }
    exponent = 0xffu;
  } else if (exponent == 0u) {
    if (mantissa != 0u) {  // subnormal: normalise
      exponent = 0x71u;
      while ((mantissa & 0x400000u) == 0u) {
        mantissa <<= 1;
        --exponent;
      }
      mantissa = (mantissa << 1) & 0x7fffffu;
      --exponent;
    }
  } else {
    exponent += 0x70u;
  }
  return bits_float((sign << 31) | (exponent << 23) | mantissa);
}

}  // namespace fastgan_emu

inline float __half2float(__half h) { return ::fastgan_emu::half_bits_to_float(h.__x); }
inline __half __float2half_rn(float f) { return __half{::fastgan_emu::float_to_half_bits(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }
inline float2 __half22float2(__half2 h) { return make_float2(__half2float(h.x), __half2float(h.y)); }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__float2half_rn(a), __float2half_rn(b)}; }
inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
