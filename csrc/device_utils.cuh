// Device helpers shared by fastgan's CUDA kernels: typed element access, 16-byte packs,
// block sums, and the host-side dtype dispatch and alignment checks.
//
// Kernels take their element dtype T (float, __half, __nv_bfloat16) as a template
// parameter: the host dispatches once on the dtype code, so no kernel chooses a dtype per
// element. Small per-row / per-channel values (statistics, parameters, scalar outputs)
// keep their own dtype codes and are read once per thread with load_scalar.
#pragma once

#include "common.h"

namespace fastgan {

// ---------------------------------------------------------------------------------------
// Typed elements
// ---------------------------------------------------------------------------------------

template <class T>
__device__ __forceinline__ float to_float(T value);
template <>
__device__ __forceinline__ float to_float<float>(float value) { return value; }
template <>
__device__ __forceinline__ float to_float<__half>(__half value) { return __half2float(value); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 value) { return __bfloat162float(value); }

template <class T>
__device__ __forceinline__ T from_float(float value);
template <>
__device__ __forceinline__ float from_float<float>(float value) { return value; }
template <>
__device__ __forceinline__ __half from_float<__half>(float value) { return __float2half_rn(value); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float value) { return __float2bfloat16_rn(value); }

template <class T>
__device__ __forceinline__ float load_element(const void* ptr, int64_t offset) {
  return to_float(static_cast<const T*>(ptr)[offset]);
}

template <class T>
__device__ __forceinline__ void store_element(void* ptr, int64_t offset, float value) {
  static_cast<T*>(ptr)[offset] = from_float<T>(value);
}

// 16 bytes of T: 4 x fp32 or 8 x fp16/bf16, one LDG.128/STG.128 per access. The pointer
// (base + offset) must be 16-byte aligned; the host checks every base pointer once and the
// kernels only use offsets that are multiples of kWidth.
template <class T>
struct alignas(16) Pack {
  static constexpr int kWidth = 16 / static_cast<int>(sizeof(T));
  T values[kWidth];
};

template <class T>
__device__ __forceinline__ void load_pack(const void* ptr, int64_t offset, float (&out)[Pack<T>::kWidth]) {
  const Pack<T> pack = *reinterpret_cast<const Pack<T>*>(static_cast<const T*>(ptr) + offset);
#pragma unroll
  for (int k = 0; k < Pack<T>::kWidth; ++k) out[k] = to_float(pack.values[k]);
}

template <class T>
__device__ __forceinline__ void store_pack(void* ptr, int64_t offset, const float (&in)[Pack<T>::kWidth]) {
  Pack<T> pack;
#pragma unroll
  for (int k = 0; k < Pack<T>::kWidth; ++k) pack.values[k] = from_float<T>(in[k]);
  *reinterpret_cast<Pack<T>*>(static_cast<T*>(ptr) + offset) = pack;
}

// A single value in a dtype known only at run time: per-row / per-channel values and scalar
// results, read or written once per thread, never in a per-element loop.
__device__ __forceinline__ float load_scalar(const void* ptr, int dtype, int64_t offset) {
  switch (dtype) {
    case kFloat16:
      return load_element<__half>(ptr, offset);
    case kBFloat16:
      return load_element<__nv_bfloat16>(ptr, offset);
    default:
      return load_element<float>(ptr, offset);
  }
}

__device__ __forceinline__ void store_scalar(void* ptr, int dtype, int64_t offset, float value) {
  switch (dtype) {
    case kFloat16:
      store_element<__half>(ptr, offset, value);
      break;
    case kBFloat16:
      store_element<__nv_bfloat16>(ptr, offset, value);
      break;
    default:
      store_element<float>(ptr, offset, value);
  }
}

// ---------------------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------

// A 1-d grid size, checked against CUDA's limit.
inline unsigned int grid_size(int64_t blocks, const char* op) {
  if (blocks < 1 || blocks > 2147483647LL) {
    throw std::runtime_error(std::string("fastgan.") + op + ": invalid grid of " + std::to_string(blocks) + " blocks");
  }
  return static_cast<unsigned int>(blocks);
}

template <class T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with the element type of dtype code `dtype`.
template <class F>
void dispatch_dtype(int dtype, const char* op, F&& f) {
  switch (dtype) {
    case kFloat32:
      f(TypeTag<float>{});
      break;
    case kFloat16:
      f(TypeTag<__half>{});
      break;
    case kBFloat16:
      f(TypeTag<__nv_bfloat16>{});
      break;
    default:
      throw std::runtime_error(std::string("fastgan.") + op + ": unknown dtype code " + std::to_string(dtype));
  }
}

// Elements of a dtype per 16-byte pack.
inline int pack_width(int dtype) { return dtype == kFloat32 ? 4 : 8; }

// True when ptr is nullptr (an absent operand) or 16-byte aligned.
inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace fastgan
