// The CPU kernels of the Rényi-α divergence over one row of logits (csrc/cpu/renyi.cpp). No
// PyTorch headers: raw addresses, a dtype code, sizes; validation, the final log and autograd
// live in fastgan/ops/renyi.py.
#pragma once

#include <cstdint>

namespace fastgan::cpu {

struct RenyiArgs {
  const void* log_ratio;  // r, n contiguous elements of dtype (csrc/cpu/dtype.h's codes: float32, bfloat16)
  int dtype;
  int64_t n;
  float beta;   // 1 - alpha, nonzero
  int threads;  // at most this many threads (fastgan/_native.py threads_for)
};

struct RenyiSums {
  float shift;    // m = max_i beta * r_i (float32 products, as the gradient pass forms them)
  double expsum;  // E = sum_i exp(beta * r_i - m)
  bool finite;    // false: some beta * r_i is NaN or infinite (shift and expsum are then meaningless)
};

// One read of r: m and E, each block's exponentials taken against its own maximum and merged.
RenyiSums renyi_forward(const RenyiArgs& args);

// grad_i = scale * exp(beta * r_i - shift), written in dtype (the gradient -g * softmax(beta * r)
// with scale = -g / E).
void renyi_backward(const RenyiArgs& args, void* grad, float shift, float scale);

int renyi_thread_grain();

// Several estimates (csrc/cpu/renyi_columns.cpp): r of shape (n, g), contiguous, each of its
// g columns reduced over its n rows, as renyi_divergence does over dim 0 of an (N, G) input.
struct RenyiColumnsArgs {
  const void* log_ratio;  // n * g elements of dtype, row-major
  int dtype;
  int64_t n, g;
  float beta;   // 1 - alpha, nonzero
  int threads;  // at most this many threads
};

// shift[j] = max_i beta * r_ij (float32), expsum[j] = sum_i exp(beta * r_ij - shift[j]) (float64),
// for every column j. Returns false, with shift and expsum meaningless, where some beta * r is
// NaN or infinite.
bool renyi_columns_forward(const RenyiColumnsArgs& args, float* shift, double* expsum);

// grad_ij = scale[j] * exp(beta * r_ij - shift[j]), written in dtype (scale = -g / E per column).
void renyi_columns_backward(const RenyiColumnsArgs& args, void* grad, const float* shift, const float* scale);

}  // namespace fastgan::cpu
