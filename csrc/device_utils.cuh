// Device helpers shared by fastgan's CUDA kernels: dtype-coded loads/stores and block sums.
#pragma once

#include "common.h"

namespace fastgan {

__device__ __forceinline__ float load_as_float(const void* ptr, int dtype, int64_t offset) {
  switch (dtype) {
    case kFloat16:
      return __half2float(static_cast<const __half*>(ptr)[offset]);
    case kBFloat16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(ptr)[offset]);
    default:
      return static_cast<const float*>(ptr)[offset];
  }
}

__device__ __forceinline__ void store_from_float(void* ptr, int dtype, int64_t offset, float value) {
  switch (dtype) {
    case kFloat16:
      static_cast<__half*>(ptr)[offset] = __float2half_rn(value);
      break;
    case kBFloat16:
      static_cast<__nv_bfloat16*>(ptr)[offset] = __float2bfloat16_rn(value);
      break;
    default:
      static_cast<float*>(ptr)[offset] = value;
  }
}

// Sum of one float per thread across the block; the result is valid in thread 0.
template <int THREADS>
__device__ __forceinline__ float block_sum(float value) {
  static_assert(THREADS % 32 == 0 && THREADS <= 1024, "block size");
  __shared__ float warp_sums[THREADS / 32];
  for (int shift = 16; shift > 0; shift >>= 1) value += __shfl_down_sync(0xffffffffu, value, shift);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  value = 0.0f;
  if (warp == 0) {
    value = lane < THREADS / 32 ? warp_sums[lane] : 0.0f;
    for (int shift = 16; shift > 0; shift >>= 1) value += __shfl_down_sync(0xffffffffu, value, shift);
  }
  return value;
}

// A 1-d grid size, checked against CUDA's limit.
inline unsigned int grid_size(int64_t blocks, const char* op) {
  if (blocks < 1 || blocks > 2147483647LL) {
    throw std::runtime_error(std::string("fastgan.") + op + ": invalid grid of " + std::to_string(blocks) + " blocks");
  }
  return static_cast<unsigned int>(blocks);
}

}  // namespace fastgan
