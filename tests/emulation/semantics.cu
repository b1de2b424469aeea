// The execution model of the CUDA emulation (csrc/emulation), checked kernel by kernel.
// Built with the emulator by tests/test_emulation.py; each check prints "name value..." and the
// test compares the values with what CUDA specifies. `main(argc, argv)` runs the check named by
// argv[1] ("all" runs every check that must succeed).
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_runtime.h>

namespace {

constexpr int kThreads = 128;

// Each thread writes its slot, waits at the barrier, then reads its mirror's slot.
__global__ void barrier_mirror_kernel(int* out) {
  __shared__ int slots[kThreads];
  const int t = threadIdx.x;
  slots[t] = t * 10 + static_cast<int>(blockIdx.x);
  __syncthreads();
  out[blockIdx.x * kThreads + t] = slots[kThreads - 1 - t];
}

// Every shuffle flavour at width 32 and 16: out[kind][thread].
__global__ void shuffle_kernel(int* out) {
  const int t = threadIdx.x;
  const int value = 1000 + t;
  out[0 * 64 + t] = __shfl_down_sync(0xffffffffu, value, 3);
  out[1 * 64 + t] = __shfl_up_sync(0xffffffffu, value, 5);
  out[2 * 64 + t] = __shfl_xor_sync(0xffffffffu, value, 6);
  out[3 * 64 + t] = __shfl_sync(0xffffffffu, value, 7);
  out[4 * 64 + t] = __shfl_down_sync(0xffffffffu, value, 3, 16);
  out[5 * 64 + t] = __shfl_sync(0xffffffffu, value, 21, 16);
  out[6 * 64 + t] = static_cast<int>(__shfl_xor_sync(0xffffffffu, static_cast<double>(value) + 0.5, 1) * 2.0);
}

// A block reduction in the style of the kernels (warp shuffles, then shared memory).
__global__ void block_sum_kernel(const float* in, float* out) {
  __shared__ float warp_sums[kThreads / 32];
  float value = in[blockIdx.x * kThreads + threadIdx.x];
  for (int shift = 16; shift > 0; shift >>= 1) value += __shfl_down_sync(0xffffffffu, value, shift);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = value;
  __syncthreads();
  if (threadIdx.x < 32) {
    value = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.0f;
    for (int shift = 16; shift > 0; shift >>= 1) value += __shfl_down_sync(0xffffffffu, value, shift);
    if (threadIdx.x == 0) out[blockIdx.x] = value;
  }
}

// Threads that exit stop counting at later barriers (Volta and later).
__global__ void exited_threads_kernel(int* out) {
  __shared__ int total;
  if (threadIdx.x == 0) total = 0;
  __syncthreads();
  if (threadIdx.x >= 100) return;
  atomicAdd(&total, 1);
  __syncthreads();
  if (threadIdx.x == 0) out[0] = total;
}

// 2-d blocks: threadIdx.x fastest in the linear id, as on the GPU.
__global__ void builtins_kernel(int* out) {
  const int linear = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int block = blockIdx.x + gridDim.x * blockIdx.y;
  out[block * blockDim.x * blockDim.y * blockDim.z + linear] = linear + 1000 * block;
}

__global__ void different_barriers_kernel(int* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void missing_lane_kernel(int* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

__global__ void noop_kernel(int* out) { out[0] = 1; }

int* device_ints(size_t n) {
  int* p = nullptr;
  cudaMalloc(&p, n * sizeof(int));
  cudaMemset(p, 0, n * sizeof(int));
  return p;
}

std::vector<int> host_ints(const int* p, size_t n) {
  std::vector<int> v(n);
  cudaMemcpy(v.data(), p, n * sizeof(int), cudaMemcpyDeviceToHost);
  return v;
}

void print(const char* name, const std::vector<int>& values) {
  std::printf("%s", name);
  for (int v : values) std::printf(" %d", v);
  std::printf("\n");
}

void print_error(const char* name) {
  const cudaError_t error = cudaGetLastError();
  std::printf("%s %s | %s\n", name, cudaGetErrorName(error), cudaGetErrorString(error));
}

}  // namespace

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "all";
  const bool all = which == "all";
  if (all || which == "barrier") {
    int* out = device_ints(3 * kThreads);
    barrier_mirror_kernel<<<3, kThreads>>>(out);
    print_error("barrier_status");
    print("barrier", host_ints(out, 3 * kThreads));
  }
  if (all || which == "shuffle") {
    int* out = device_ints(7 * 64);
    shuffle_kernel<<<1, 64>>>(out);
    print_error("shuffle_status");
    print("shuffle", host_ints(out, 7 * 64));
  }
  if (all || which == "block_sum") {
    std::vector<float> in(2 * kThreads);
    for (int i = 0; i < 2 * kThreads; ++i) in[i] = static_cast<float>(i % 7) - 2.0f;
    float *d_in = nullptr, *d_out = nullptr;
    cudaMalloc(&d_in, in.size() * sizeof(float));
    cudaMalloc(&d_out, 2 * sizeof(float));
    cudaMemcpy(d_in, in.data(), in.size() * sizeof(float), cudaMemcpyHostToDevice);
    block_sum_kernel<<<2, kThreads>>>(d_in, d_out);
    float sums[2];
    cudaMemcpy(sums, d_out, sizeof(sums), cudaMemcpyDeviceToHost);
    print_error("block_sum_status");
    print("block_sum", {static_cast<int>(sums[0]), static_cast<int>(sums[1])});
  }
  if (all || which == "exited") {
    int* out = device_ints(1);
    exited_threads_kernel<<<1, kThreads>>>(out);
    print_error("exited_status");
    print("exited", host_ints(out, 1));
  }
  if (all || which == "builtins") {
    int* out = device_ints(6 * 24);
    builtins_kernel<<<dim3(3, 2), dim3(4, 3, 2)>>>(out);
    print_error("builtins_status");
    print("builtins", host_ints(out, 6 * 24));
  }
  if (all || which == "bad_config") {
    int* out = device_ints(1);
    noop_kernel<<<1, 2048>>>(out);
    print_error("bad_block");
    noop_kernel<<<dim3(1, 70000), 32>>>(out);
    print_error("bad_grid");
    noop_kernel<<<1, 32, 64>>>(out);
    print_error("dynamic_shared");
    noop_kernel<<<1, 32>>>(out);
    print_error("good_after_bad");
  }
  if (which == "different_barriers") {
    int* out = device_ints(64);
    different_barriers_kernel<<<1, 64>>>(out);
    print_error("different_barriers");
  }
  if (which == "missing_lane") {
    int* out = device_ints(64);
    missing_lane_kernel<<<1, 64>>>(out);
    print_error("missing_lane");
  }
  return 0;
}
