// Shared helpers for fastgan's CUDA kernels.
//
// The extension deliberately includes no PyTorch headers: every kernel takes raw
// device pointers, sizes/strides, dtype codes and a cudaStream_t handed over from
// Python. Errors are turned into C++ exceptions (std::runtime_error) naming the op;
// pybind11 re-raises them as Python RuntimeError.
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace fastgan {

// Dtype codes shared with fastgan/_cuda.py (keep in sync).
enum DtypeCode : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
};

inline void check_cuda(cudaError_t err, const char* op, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("fastgan.") + op + ": " + what + " failed: " +
                             cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
  }
}

// Checks the launch just issued (bad configuration, missing kernel image for this GPU).
inline void check_launch(const char* op) { check_cuda(cudaGetLastError(), op, "kernel launch"); }

}  // namespace fastgan
