// The CPU kernel of the BatchNorm + LeakyReLU block's forward (csrc/cpu/batch_norm.cpp). No
// PyTorch headers: raw float32 addresses and sizes; validation and autograd live in
// fastgan/ops/batch_norm.py.
#pragma once

#include <cstdint>

namespace fastgan::cpu {

struct BatchNormArgs {
  const float* x;       // (N, C, S), contiguous
  float* y;             // (N, C, S), contiguous
  const float* weight;  // (C,) or nullptr
  const float* bias;    // (C,) or nullptr
  float* running_mean;  // (C,): updated in training, read in eval; nullptr: none (training only)
  float* running_var;
  float* save_mean;     // (C,) batch mean (training) or nullptr
  float* save_invstd;   // (C,) 1/sqrt(var + eps) (training) or nullptr
  int64_t batch, channels, spatial;
  bool training;
  double momentum;
  double eps;
  float slope;
  int threads;
};

void batch_norm_leaky_relu_forward(const BatchNormArgs& args);

struct BatchNormBackwardArgs {
  const float* grad_out;  // (N, C, S), contiguous
  const float* x;
  const float* y;         // the forward's output (slope >= 0), or nullptr: the sign of z is rebuilt from x
  const float* weight;    // (C,) or nullptr
  const float* bias;      // (C,) or nullptr
  const float* mean;      // (C,) saved batch mean (training) or running mean (eval)
  const float* stat;      // (C,) saved invstd (training) or running var (eval, stat_is_var)
  float* grad_x;          // (N, C, S) or nullptr
  float* grad_weight;     // (C,) or nullptr
  float* grad_bias;       // (C,) or nullptr
  int64_t batch, channels, spatial;
  bool training;
  bool stat_is_var;
  double eps;
  float slope;
  int threads;
};

void batch_norm_leaky_relu_backward(const BatchNormBackwardArgs& args);
int batch_norm_thread_grain();

}  // namespace fastgan::cpu
