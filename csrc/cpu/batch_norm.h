// The CPU kernels of the BatchNorm + LeakyReLU block (csrc/cpu/batch_norm.cpp). No PyTorch
// headers: raw addresses, dtype codes (csrc/cpu/dtype.h) and sizes; validation and autograd
// live in fastgan/ops/batch_norm.py.
//
// Layouts of x (and y, grad_out, grad_x), N batch, C channels, S spatial positions:
//   planar:        (N, C, S) contiguous, each (n, c) row of S values contiguous (NCHW);
//   channels_last: (N, S, C) contiguous, each position's C channels contiguous (NHWC, and
//                  (N, C) inputs with S = 1).
#pragma once

#include <cstdint>

#include "dtype.h"

namespace fastgan::cpu {

struct BatchNormArgs {
  const void* x;        // N * C * S values of dtype, in `layout`
  void* y;              // the same shape, layout and dtype
  const void* weight;   // (C,) of param_dtype, or nullptr
  const void* bias;     // (C,) of param_dtype, or nullptr
  void* running_mean;   // (C,) of param_dtype: updated in training, read in eval; nullptr: none (training only)
  void* running_var;
  float* saved;         // (3C,) float32, training: the batch mean as a float32 pair (mean, residual),
                        // then 1/sqrt(var + eps); or nullptr
  int64_t batch, channels, spatial;
  int dtype;            // x, y: kFloat32 or kBFloat16
  int param_dtype;      // weight, bias, running statistics: kFloat32, or kBFloat16 with a bfloat16 x
  bool channels_last;
  bool training;
  double momentum;
  double eps;
  float slope;
  int threads;
};

void batch_norm_leaky_relu_forward(const BatchNormArgs& args);

struct BatchNormBackwardArgs {
  const void* grad_out;  // like x: dtype, layout
  const void* x;
  const void* y;         // the forward's output (slope >= 0), or nullptr: the sign of z is rebuilt from x
  const void* weight;    // (C,) of param_dtype, or nullptr
  const void* bias;      // (C,) of param_dtype, or nullptr
  const void* mean;      // training: the forward's (3C,) float32 `saved`; eval: the running mean (param_dtype)
  const void* stat;      // eval: the running var (param_dtype); training: unused
  void* grad_x;          // like x, or nullptr
  void* grad_weight;     // (C,) of param_dtype, or nullptr
  void* grad_bias;       // (C,) of param_dtype, or nullptr
  int64_t batch, channels, spatial;
  int dtype;
  int param_dtype;
  bool channels_last;
  bool training;
  bool stat_is_var;
  double eps;
  float slope;
  int threads;
};

void batch_norm_leaky_relu_backward(const BatchNormBackwardArgs& args);
int batch_norm_thread_grain();

}  // namespace fastgan::cpu
