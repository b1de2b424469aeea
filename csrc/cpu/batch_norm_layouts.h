// The BatchNorm + LeakyReLU kernels per layout (csrc/cpu/batch_norm.h), which
// csrc/cpu/batch_norm.cpp chooses between: `threads` parts of PyTorch's OpenMP pool
// (csrc/cpu/parallel.h), x's dtype from the arguments.
#pragma once

#include "batch_norm.h"

namespace fastgan::cpu {

// (N, C, S) contiguous (batch_norm_planar.cpp).
void planar_forward(const BatchNormArgs& args, int threads);
void planar_backward(const BatchNormBackwardArgs& args, int threads);
// (N, S, C) contiguous (batch_norm_channels_last.cpp).
void channels_last_forward(const BatchNormArgs& args, int threads);
void channels_last_backward(const BatchNormBackwardArgs& args, int threads);

}  // namespace fastgan::cpu
