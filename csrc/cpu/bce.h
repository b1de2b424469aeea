// The CPU kernels of the BCE-with-logits family (csrc/cpu/bce.cpp). No PyTorch headers:
// raw addresses, a dtype code, sizes; validation and autograd live in fastgan/ops/bce.py.
#pragma once

#include <cstdint>
#include <stdexcept>

#include "dtype.h"

namespace fastgan::cpu {

// Reduction codes shared with fastgan/ops/bce.py (_REDUCTION_CODES).
enum Reduction : int { kReduceNone = 0, kReduceMean = 1, kReduceSum = 2 };

struct BceArgs {
  const void* input;   // logits, contiguous, numel elements of dtype
  const void* target;  // labels, the same layout and dtype; nullptr: every label is `label`
  void* loss;          // one element (mean, sum) or numel elements (none), dtype
  void* grad;          // grad_scale * dl/dx, numel elements of dtype; nullptr: not written
  int dtype;
  int reduction;
  float grad_scale;
  int64_t numel;
  int threads;  // at most this many threads (fastgan/_native.py threads_for)
  float label;  // the label of every element when target is nullptr
};

// Returns the reduced loss in float64 (0 for no reduction); stores it in `loss` as dtype
// too, unless loss is nullptr (a reduction with no gradient then writes nothing).
double bce_with_logits_forward(const BceArgs& args);
// Elements per thread below which the work stays on the calling thread.
int thread_grain();

}  // namespace fastgan::cpu
