// Emulated <cuda_runtime.h>: the CUDA execution model on the CPU, for building fastgan's
// unchanged csrc/*.cu with a host C++ compiler (FASTGAN_CUDA_EMULATE=1; fastgan/_emulation.py
// rewrites `kernel<<<grid, block, smem, stream>>>(args)` into fastgan_emu::launch(...)).
//
// The model (csrc/emulation/emulator.cpp):
//   * a launch runs its blocks one after another on the calling thread; each block runs as
//     blockDim user-level fibers (ucontext), switched only at synchronisation points;
//   * __syncthreads() is a real barrier of the block's live threads: exited threads stop
//     counting (Volta and later); threads waiting at different __syncthreads are a deadlock;
//   * __shfl_*_sync and __syncwarp exchange among the lanes of each warp of 32 consecutive
//     linear thread ids; every lane named in the mask must arrive, else the launch fails;
//   * __shared__ variables are static storage, which is right because blocks never overlap;
//   * errors (bad launch configuration, deadlock, missing lanes) surface through
//     cudaGetLastError(), so the kernels' own launch checks raise them.
// Under ThreadSanitizer every emulated thread is a TSan fiber and only barriers order memory,
// so a missing __syncthreads is reported as a data race at its source line.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <tuple>
#include <type_traits>
#include <utility>

#define FASTGAN_CUDA_EMULATED 1
#ifndef CUDART_VERSION
#define CUDART_VERSION 0  // no CUDA runtime: build_info() reports 0
#endif

// ---- qualifiers --------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static  // blocks run one at a time, so one static copy is the block's shared memory

// ---- built-in vector types ----------------------------------------------------------------
struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

struct __align__(8) float2 { float x, y; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(8) int2 { int x, y; };
struct __align__(16) int4 { int x, y, z, w; };
struct __align__(8) uint2 { unsigned int x, y; };
struct __align__(16) uint4 { unsigned int x, y, z, w; };

inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned int x, unsigned int y) { return {x, y}; }
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) { return {x, y, z, w}; }

// ---- runtime types --------------------------------------------------------------------------
typedef struct CUstream_st* cudaStream_t;

enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

namespace fastgan_emu {

// Where a synchronisation call stands in the source (for deadlock and missing-lane reports).
struct Site {
  const char* file;
  int line;
};

// What every emulated thread sees as its built-in variables.
struct ThreadState {
  uint3 thread_idx;
};

struct GridState {
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};

const ThreadState& this_thread();
const GridState& this_grid();

// Synchronisation and warp exchange; each returns only when the whole group has arrived.
void syncthreads(Site site);
void syncwarp(Site site, unsigned int mask = 0xffffffffu);
enum class ShuffleKind { kIndex, kUp, kDown, kXor };
uint64_t shuffle(Site site, ShuffleKind kind, unsigned int mask, uint64_t bits, int operand, int width);

// A launch: validates the configuration, then runs body(ctx) once per thread of every block.
struct LaunchConfig {
  dim3 grid;
  dim3 block;
  size_t shared_bytes;
  cudaStream_t stream;
  LaunchConfig(dim3 g, dim3 b, size_t smem = 0, cudaStream_t s = nullptr)
      : grid(g), block(b), shared_bytes(smem), stream(s) {}
};
void run_grid(const LaunchConfig& config, void (*body)(void*), void* context);

template <class Kernel, class Tuple>
struct LaunchContext {
  Kernel kernel;
  Tuple params;
};

template <class... Params, class... Args>
void launch(const LaunchConfig& config, void (*kernel)(Params...), Args&&... args) {
  // Arguments are converted to the kernel's parameter types once, on the host, as CUDA does.
  using Tuple = std::tuple<std::decay_t<Params>...>;
  using Context = LaunchContext<void (*)(Params...), Tuple>;
  Context context{kernel, Tuple(std::forward<Args>(args)...)};
  run_grid(config, [](void* raw) {
    Context& ctx = *static_cast<Context*>(raw);
    Tuple params = ctx.params;  // each thread's own copy of the parameters
    std::apply(ctx.kernel, params);
  }, &context);
}

template <class T>
uint64_t to_bits(T value) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type wider than 64 bits");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}

template <class T>
T from_bits(uint64_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

// (operand) or (operand, width), as the CUDA intrinsics take them; width defaults to a warp.
template <class T>
T shuffle_as(Site site, ShuffleKind kind, unsigned int mask, T value, int operand, int width = 32) {
  return from_bits<T>(shuffle(site, kind, mask, to_bits(value), operand, width));
}

// Read-modify-write without a switch point in between is atomic among fibers; the
// __atomic builtins also tell ThreadSanitizer so.
template <class T>
T atomic_add(T* address, T value) {
  if constexpr (std::is_integral<T>::value) {
    return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
  } else {
    T expected = __atomic_load_n(address, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(address, &expected, static_cast<T>(expected + value), false, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {
    }
    return expected;
  }
}

}  // namespace fastgan_emu

#define threadIdx (::fastgan_emu::this_thread().thread_idx)
#define blockIdx (::fastgan_emu::this_grid().block_idx)
#define blockDim (::fastgan_emu::this_grid().block_dim)
#define gridDim (::fastgan_emu::this_grid().grid_dim)
constexpr int warpSize = 32;

#define __syncthreads() ::fastgan_emu::syncthreads(::fastgan_emu::Site{__FILE__, __LINE__})
#define __syncwarp(...) ::fastgan_emu::syncwarp(::fastgan_emu::Site{__FILE__, __LINE__}, ##__VA_ARGS__)
#define __shfl_sync(mask, value, ...) \
  ::fastgan_emu::shuffle_as(::fastgan_emu::Site{__FILE__, __LINE__}, ::fastgan_emu::ShuffleKind::kIndex, mask, value, \
                            __VA_ARGS__)
#define __shfl_up_sync(mask, value, ...) \
  ::fastgan_emu::shuffle_as(::fastgan_emu::Site{__FILE__, __LINE__}, ::fastgan_emu::ShuffleKind::kUp, mask, value, \
                            __VA_ARGS__)
#define __shfl_down_sync(mask, value, ...) \
  ::fastgan_emu::shuffle_as(::fastgan_emu::Site{__FILE__, __LINE__}, ::fastgan_emu::ShuffleKind::kDown, mask, value, \
                            __VA_ARGS__)
#define __shfl_xor_sync(mask, value, ...) \
  ::fastgan_emu::shuffle_as(::fastgan_emu::Site{__FILE__, __LINE__}, ::fastgan_emu::ShuffleKind::kXor, mask, value, \
                            __VA_ARGS__)

// ---- device functions ---------------------------------------------------------------------
template <class T>
inline T __ldg(const T* address) { return *address; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }

// CUDA's min/max accept mixed integer types; the common type is what device code computes in.
template <class A, class B>
inline constexpr std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <class A, class B>
inline constexpr std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}

template <class T>
inline T atomicAdd(T* address, T value) { return ::fastgan_emu::atomic_add(address, value); }
inline int atomicMax(int* address, int value) {
  int expected = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (expected < value &&
         !__atomic_compare_exchange_n(address, &expected, value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return expected;
}

// ---- host runtime API ---------------------------------------------------------------------
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorName(cudaError_t error);
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaMalloc(void** pointer, size_t bytes);
template <class T>
inline cudaError_t cudaMalloc(T** pointer, size_t bytes) { return cudaMalloc(reinterpret_cast<void**>(pointer), bytes); }
cudaError_t cudaFree(void* pointer);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* dst, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
