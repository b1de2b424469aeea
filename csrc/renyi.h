// Host entry points of the Rényi-α divergence kernels (csrc/renyi.cu).
#pragma once

#include "common.h"

namespace fastgan {

struct RenyiRows {
  const void* ptr;     // logits r: element (i, j) at ptr[i * row_stride + j * col_stride]
  int dtype;           // DtypeCode
  int64_t rows;
  int64_t n;           // columns: the reduced dimension, > 0
  int64_t row_stride;  // in elements
  int64_t col_stride;
};

struct RenyiForwardArgs {
  RenyiRows input;
  void* out;        // D_α per row [rows], out_dtype
  int out_dtype;
  float* shift;     // per-row m = max β·r [rows], saved for the backward
  float* expsum;    // per-row E = Σ exp(β·r − m) [rows]
  float* partials;  // several splits: [rows, splits, 5] of (m, E, S, count, Σr)
  float beta;       // 1 − α
  float inv_beta;   // 1/β, 0 when β = 0
  float log_n;
  int64_t cols_per_split;
};

struct RenyiBackwardArgs {
  RenyiRows input;
  const void* grad_out;  // per-row incoming gradient, element i at grad_out[i * grad_out_stride]
  int grad_out_dtype;
  int64_t grad_out_stride;
  const float* shift;
  const float* expsum;
  void* grad;            // contiguous (rows, n) gradient, grad_dtype
  int grad_dtype;
  float beta;
};

void renyi_forward(const RenyiForwardArgs& args, int64_t splits, cudaStream_t stream);
void renyi_backward(const RenyiBackwardArgs& args, cudaStream_t stream);

}  // namespace fastgan
