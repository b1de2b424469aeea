// An off-by-one read in a kernel, for tests/test_emulation.py: built with the emulator under
// AddressSanitizer, it must be reported as a heap-buffer-overflow at this file's line, also when
// the buffer's size is not a multiple of the 256 bytes every device allocation is aligned to.
#include <cstdint>
#include <cstdio>

#include <cuda_runtime.h>

namespace {

constexpr int kCount = 1000;  // 4000 bytes: not a multiple of 256

// out[i] = in[i + 1]: the last thread reads one element past the end of `in`.
__global__ void shift_left_kernel(const float* in, float* out, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = in[i + 1];
}

}  // namespace

int main() {
  float *in = nullptr, *out = nullptr;
  cudaMalloc(&in, kCount * sizeof(float));
  cudaMalloc(&out, kCount * sizeof(float));
  std::printf("aligned %d\n", reinterpret_cast<uintptr_t>(in) % 256 == 0 && reinterpret_cast<uintptr_t>(out) % 256 == 0);
  std::fflush(stdout);  // AddressSanitizer exits without flushing
  cudaMemset(in, 0, kCount * sizeof(float));
  shift_left_kernel<<<(kCount + 255) / 256, 256>>>(in, out, kCount);
  std::printf("status %s\n", cudaGetErrorName(cudaGetLastError()));
  cudaFree(in);
  cudaFree(out);
  return 0;
}
