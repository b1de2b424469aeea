// Host entry points of the BCE-with-logits kernels (csrc/bce.cu).
#pragma once

#include "common.h"

namespace fastgan {

// A read-only operand walked through the 4-d coalesced plan built in fastgan/_indexing.py.
struct StridedOperand {
  const void* ptr;     // nullptr when the operand is absent
  int dtype;           // DtypeCode
  int64_t strides[4];  // in elements, outermost first; 0 for broadcast dimensions
};

// Every per-element operand (input, target, weight, pos_weight, the per-element loss and the
// gradient) shares one dtype (the caller casts mixed operands); the reduced scalar loss may differ.
struct BceForwardArgs {
  StridedOperand input;       // logits x
  StridedOperand target;      // targets y; ptr == nullptr: use target_value
  StridedOperand weight;      // optional per-element weight (expanded view)
  StridedOperand pos_weight;  // optional positive-class weight (expanded view)
  void* loss;                 // reduce: scalar result; else contiguous per-element loss [numel]
  int loss_dtype;
  float* partials;            // reduce with several blocks: fp32 [num_blocks]
  void* grad;                 // optional contiguous grad_scale * dl/dx [numel], input dtype
  int grad_dtype;
  float target_value;         // target for every element when target.ptr == nullptr
  float grad_scale;           // 1/N for mean, else 1
  float loss_scale;           // applied to the reduced loss (1/N for mean, else 1)
  int64_t numel;
  int64_t sizes[4];           // coalesced walk, outermost first
  bool contiguous;            // every operand dense: offset == linear index
};

// grad_real has real's dtype, grad_fake_d/grad_fake_g fake's; the scalar losses any dtype.
struct GanBceForwardArgs {
  const void* real;  // real logits [n_real], element i at real[i * real_stride]
  int real_dtype;
  const void* fake;  // fake logits [n_fake], element i at fake[i * fake_stride]
  int fake_dtype;
  void* d_loss;      // scalar mean BCE(real, real_target) + mean BCE(fake, fake_target)
  int d_loss_dtype;
  void* g_loss;      // scalar mean softplus(-fake)
  int g_loss_dtype;
  float* partials;   // several blocks: fp32 [3, num_blocks]
  void* grad_real;   // optional (sigmoid(r) - real_target) / n_real, real dtype
  void* grad_fake_d; // optional (sigmoid(f) - fake_target) / n_fake, fake dtype
  void* grad_fake_g; // optional -sigmoid(-f) / n_fake, fake dtype (set with grad_fake_d)
  float real_target;
  float fake_target;
  float inv_n_real;  // 1/n_real, NaN for an empty input (mean of nothing)
  float inv_n_fake;
  int64_t n_real;
  int64_t n_fake;
  int64_t real_stride;  // 1 when dense; e.g. 2 for a slice d_out[:, 0] of a (N, 2) output
  int64_t fake_stride;
  bool real_packed;     // set by gan_bce_forward: real (and grad_real) walked in 16-byte packs
  bool fake_packed;     // likewise for fake, grad_fake_d and grad_fake_g
};

void bce_with_logits_forward(const BceForwardArgs& args, int64_t num_blocks, bool reduce, cudaStream_t stream);
void gan_bce_forward(const GanBceForwardArgs& args, int64_t num_blocks, cudaStream_t stream);

}  // namespace fastgan
