// Emulated <cuda_bf16.h>: bfloat16 storage and conversions, bit for bit as CUDA's own host
// implementation (checked exhaustively by tests/test_emulation.py where the toolkit exists).
#pragma once

#include "cuda_fp16.h"

struct __nv_bfloat16 {
  unsigned short __x;
};

struct __align__(4) __nv_bfloat162 {
  __nv_bfloat16 x;
  __nv_bfloat16 y;
};

namespace fastgan_emu {

// Round to nearest even; NaN becomes the canonical 0x7fff.
inline unsigned short float_to_bfloat16_bits(float value) {
  const uint32_t bits = float_bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  uint32_t result = bits >> 16;
  const uint32_t dropped = bits << 16;
  if (dropped > 0x80000000u || (dropped == 0x80000000u && (result & 1u))) ++result;
  return static_cast<unsigned short>(result);
}

}  // namespace fastgan_emu

inline float __bfloat162float(__nv_bfloat16 h) { return ::fastgan_emu::bits_float(static_cast<uint32_t>(h.__x) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{::fastgan_emu::float_to_bfloat16_bits(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return make_float2(__bfloat162float(h.x), __bfloat162float(h.y)); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return __nv_bfloat162{__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
