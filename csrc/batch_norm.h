// Host entry points of the fused BatchNorm + LeakyReLU kernels (csrc/batch_norm.cu).
#pragma once

#include "common.h"

namespace fastgan {

// An (N, C, S) activation: element (n, c, s) at ptr[n * stride_n + c * stride_c + s * stride_s].
struct BnTensor {
  void* ptr;  // nullptr when absent (only grad_x may be)
  int dtype;  // DtypeCode
  int64_t stride_n;
  int64_t stride_c;
  int64_t stride_s;
};

// A per-channel vector [C] (contiguous); ptr == nullptr when absent.
struct BnVector {
  void* ptr;
  int dtype;  // DtypeCode
};

// What the elementwise and backward kernels need per channel to recover x̂ and z:
// x̂ = (x − mean)·invstd, z = w·x̂ + bias (w = 1, bias = 0 when absent).
struct BnChannelArgs {
  BnVector mean;        // batch mean (fp32) or running mean (any float dtype)
  BnVector stat;        // invstd when stat_is_invstd, else a variance: invstd = 1/sqrt(stat + eps)
  BnVector weight;      // optional
  BnVector bias;        // optional
  bool stat_is_invstd;
  float eps;
  // Optional fp32 [C]: what rounding the batch mean to float32 left off (mean − fp32 mean),
  // folded into the bias of z and taken off x − mean (training; nullptr in eval), so that the
  // backward's activation mask and x̂ are the forward's.
  const float* mean_residual;
};

struct BnShape {
  int64_t channels;             // C
  int64_t spatial;              // S
  int64_t positions;            // P = N·S
  int64_t splits;               // reductions: grid.y, split k covers [k·positions_per_split, ...) ∩ [0, P)
  int64_t positions_per_split;
};

struct BatchNormForwardTrainArgs {
  BnShape shape;
  BnTensor x;
  BnTensor y;
  BnVector weight;
  BnVector bias;
  BnVector running_mean;               // updated in place when both running_* are given
  BnVector running_var;                // unbiased variance estimate
  const int64_t* num_batches_tracked;  // device scalar, read when cumulative
  float* mean;                         // fp32 [C] out
  float* invstd;                       // fp32 [C] out
  // fp32 [C] out: the batch mean's float32 rounding residual (mean − fp32 mean), saved for the
  // backward; nullptr: it goes to scratch slots of the statistics rows instead.
  float* mean_residual;
  float* partials;                     // fp32 [splits, 3, C]: (count, mean, M2) per split
  float momentum;                      // running-statistics factor unless cumulative
  bool cumulative;                     // factor = 1/num_batches_tracked
  float eps;
  float slope;
};

struct BatchNormForwardEvalArgs {
  BnShape shape;
  BnTensor x;
  BnTensor y;
  BnVector weight;
  BnVector bias;
  BnVector running_mean;
  BnVector running_var;
  float eps;
  float slope;
};

struct BatchNormBackwardArgs {
  BnShape shape;
  BnTensor grad_out;
  BnTensor x;
  BnTensor grad_x;       // ptr == nullptr: no input gradient
  BnChannelArgs channel; // mean, stat, weight, bias, stat_is_invstd, eps, mean_residual (training)
  BnVector grad_weight;  // optional: Σ dz·x̂, in its dtype
  BnVector grad_bias;    // optional: Σ dz
  float* partials;       // fp32 [splits, 4, C]: per split Σdz, Σdz·(x − mean) and their rounding errors
  float* coefficients;   // fp32 [2, C]: Σdz/P and Σdz·x̂/P (training only; raw sums in batch_norm_backward_sums)
  bool training;
  float slope;
};

void batch_norm_forward_train(const BatchNormForwardTrainArgs& args, cudaStream_t stream);
void batch_norm_forward_eval(const BatchNormForwardEvalArgs& args, cudaStream_t stream);
void batch_norm_backward(const BatchNormBackwardArgs& args, cudaStream_t stream);

// The stages of a synchronised (multi-device) training step; the caller runs the collectives
// between them (fastgan/ops/batch_norm.py). Forward: batch_norm_statistics writes the split
// partials and merges them into `merged` (fp32 [4, C], this device's (count, mean, M2, mean
// residual): mean + residual is the mean beyond float32); batch_norm_forward_from_statistics
// merges the `rows` rows of `statistics` (fp32 [rows, 4, C], every device's `merged`; its
// first row's residual slots are overwritten, the counts are kept), updates the running
// statistics and writes mean, invstd and y (args.partials unused; args.shape.positions may be
// 0 or 1 on one device). Backward:
// batch_norm_backward_sums writes grad_weight, grad_bias (this device's) and the raw sums
// (Σdz, Σdz·x̂) into args.coefficients; batch_norm_backward_input writes grad_x from
// args.coefficients, which by then hold the global (Σdz/P, Σdz·x̂/P).
void batch_norm_statistics(const BatchNormForwardTrainArgs& args, float* merged, cudaStream_t stream);
void batch_norm_forward_from_statistics(const BatchNormForwardTrainArgs& args, const float* statistics, int64_t rows,
                                        cudaStream_t stream);
void batch_norm_backward_sums(const BatchNormBackwardArgs& args, cudaStream_t stream);
void batch_norm_backward_input(const BatchNormBackwardArgs& args, cudaStream_t stream);

}  // namespace fastgan
