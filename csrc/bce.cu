// CUDA kernels for the BCE-with-logits family (Python side: fastgan/_cuda.py).
//
// Math (x logit, y target, w weight, p pos_weight), all in fp32:
//   l      = w * [ (1 - y) * x - (1 + (p - 1) * y) * log_sigmoid(x) ]
//   dl/dx  = w * [ (1 - y) - (1 + (p - 1) * y) * sigmoid(-x) ]
// with e = exp(-|x|) <= 1:  log_sigmoid(x) = min(x, 0) - log1p(e),
//                           sigmoid(-x)    = (x >= 0 ? e : 1) / (1 + e),
// so logits of +-1e4 stay finite; +-inf and NaN follow PyTorch's formula order.
//
// Fused forward+backward: when asked, the forward also writes grad_scale * dl/dx
// (grad_scale = 1/N for a mean), so the backward is a multiply by the incoming gradient.
//
// Reductions are deterministic: each block leaves one fp32 partial sum (tree order fixed
// by the block shape); a single-block launch writes the final scalar itself, otherwise
// a one-block finishing kernel sums the partials in index order.
#include "bce.h"
#include "device_utils.cuh"

#include <algorithm>

namespace fastgan {
namespace {

constexpr int kThreads = 256;
constexpr int kFinishThreads = 1024;

// log_sigmoid(x) and sigmoid(-x), stable for every finite x.
__device__ __forceinline__ void log_sigmoid_and_sigmoid_neg(float x, float* log_sigmoid, float* sigmoid_neg) {
  const float e = expf(-fabsf(x));
  *log_sigmoid = fminf(x, 0.0f) - log1pf(e);
  *sigmoid_neg = (x >= 0.0f ? e : 1.0f) / (1.0f + e);
}

__device__ __forceinline__ int64_t strided_offset(int64_t index, const int64_t* sizes, const int64_t* strides) {
  const int64_t i3 = index % sizes[3];
  int64_t rest = index / sizes[3];
  const int64_t i2 = rest % sizes[2];
  rest /= sizes[2];
  const int64_t i1 = rest % sizes[1];
  const int64_t i0 = rest / sizes[1];
  return i0 * strides[0] + i1 * strides[1] + i2 * strides[2] + i3 * strides[3];
}

template <bool REDUCE>
__global__ void __launch_bounds__(kThreads) bce_with_logits_forward_kernel(BceForwardArgs args) {
  float acc = 0.0f;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < args.numel; i += step) {
    int64_t in_off = i, tg_off = i, w_off = i, pw_off = i;
    if (!args.contiguous) {
      in_off = strided_offset(i, args.sizes, args.input.strides);
      tg_off = strided_offset(i, args.sizes, args.target.strides);
      w_off = strided_offset(i, args.sizes, args.weight.strides);
      pw_off = strided_offset(i, args.sizes, args.pos_weight.strides);
    }
    const float x = load_as_float(args.input.ptr, args.input.dtype, in_off);
    const float y = args.target.ptr ? load_as_float(args.target.ptr, args.target.dtype, tg_off) : args.target_value;
    float log_sigmoid, sigmoid_neg;
    log_sigmoid_and_sigmoid_neg(x, &log_sigmoid, &sigmoid_neg);
    const float log_weight =
        args.pos_weight.ptr ? 1.0f + (load_as_float(args.pos_weight.ptr, args.pos_weight.dtype, pw_off) - 1.0f) * y
                            : 1.0f;
    float loss = (1.0f - y) * x - log_weight * log_sigmoid;
    float grad = (1.0f - y) - log_weight * sigmoid_neg;
    if (args.weight.ptr) {
      const float w = load_as_float(args.weight.ptr, args.weight.dtype, w_off);
      loss *= w;
      grad *= w;
    }
    if (args.grad) store_from_float(args.grad, args.grad_dtype, i, grad * args.grad_scale);
    if (REDUCE) {
      acc += loss;
    } else {
      store_from_float(args.loss, args.loss_dtype, i, loss);
    }
  }
  if (REDUCE) {
    const float total = block_sum<kThreads>(acc);
    if (threadIdx.x == 0) {
      if (gridDim.x == 1) {
        store_from_float(args.loss, args.loss_dtype, 0, total * args.loss_scale);
      } else {
        args.partials[blockIdx.x] = total;
      }
    }
  }
}

// out[k] = scale_a[k] * sum(partials[a_k]) + scale_b[k] * sum(partials[b_k]) for the
// row layout used by both ops: rows of `count` partials, summed in index order.
__global__ void __launch_bounds__(kFinishThreads)
    finish_kernel(const float* partials, int64_t count, void* out0, int out0_dtype, float row0_scale,
                  float row1_scale, void* out1, int out1_dtype, float row2_scale, int rows) {
  float sums[3] = {0.0f, 0.0f, 0.0f};
  for (int row = 0; row < rows; ++row) {
    float value = 0.0f;
    for (int64_t i = threadIdx.x; i < count; i += kFinishThreads) value += partials[row * count + i];
    sums[row] = block_sum<kFinishThreads>(value);
    __syncthreads();  // warp_sums is reused by the next row
  }
  if (threadIdx.x == 0) {
    store_from_float(out0, out0_dtype, 0, sums[0] * row0_scale + (rows == 3 ? sums[1] * row1_scale : 0.0f));
    if (rows == 3) store_from_float(out1, out1_dtype, 0, sums[2] * row2_scale);
  }
}

__global__ void __launch_bounds__(kThreads) gan_bce_forward_kernel(GanBceForwardArgs args) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  float d_real = 0.0f;
  for (int64_t i = first; i < args.n_real; i += step) {
    const float x = load_as_float(args.real, args.real_dtype, i * args.real_stride);
    float log_sigmoid, sigmoid_neg;
    log_sigmoid_and_sigmoid_neg(x, &log_sigmoid, &sigmoid_neg);
    d_real += (1.0f - args.real_target) * x - log_sigmoid;
    if (args.grad_real) {
      store_from_float(args.grad_real, args.real_dtype, i,
                       ((1.0f - args.real_target) - sigmoid_neg) * args.inv_n_real);
    }
  }
  float d_fake = 0.0f, g_fake = 0.0f;
  for (int64_t i = first; i < args.n_fake; i += step) {
    const float x = load_as_float(args.fake, args.fake_dtype, i * args.fake_stride);
    float log_sigmoid, sigmoid_neg;
    log_sigmoid_and_sigmoid_neg(x, &log_sigmoid, &sigmoid_neg);
    d_fake += (1.0f - args.fake_target) * x - log_sigmoid;
    g_fake -= log_sigmoid;
    if (args.grad_fake_d) {
      store_from_float(args.grad_fake_d, args.fake_dtype, i,
                       ((1.0f - args.fake_target) - sigmoid_neg) * args.inv_n_fake);
      store_from_float(args.grad_fake_g, args.fake_dtype, i, -sigmoid_neg * args.inv_n_fake);
    }
  }
  const float sum_d_real = block_sum<kThreads>(d_real);
  __syncthreads();
  const float sum_d_fake = block_sum<kThreads>(d_fake);
  __syncthreads();
  const float sum_g_fake = block_sum<kThreads>(g_fake);
  if (threadIdx.x == 0) {
    if (gridDim.x == 1) {
      store_from_float(args.d_loss, args.d_loss_dtype, 0, sum_d_real * args.inv_n_real + sum_d_fake * args.inv_n_fake);
      store_from_float(args.g_loss, args.g_loss_dtype, 0, sum_g_fake * args.inv_n_fake);
    } else {
      args.partials[blockIdx.x] = sum_d_real;
      args.partials[gridDim.x + blockIdx.x] = sum_d_fake;
      args.partials[2 * gridDim.x + blockIdx.x] = sum_g_fake;
    }
  }
}

}  // namespace

void bce_with_logits_forward(const BceForwardArgs& args, int64_t num_blocks, bool reduce, cudaStream_t stream) {
  const char* op = "ops.bce_with_logits";
  const unsigned int grid = grid_size(num_blocks, op);
  if (reduce) {
    bce_with_logits_forward_kernel<true><<<grid, kThreads, 0, stream>>>(args);
  } else {
    bce_with_logits_forward_kernel<false><<<grid, kThreads, 0, stream>>>(args);
  }
  check_launch(op);
  if (reduce && grid > 1) {
    finish_kernel<<<1, kFinishThreads, 0, stream>>>(args.partials, grid, args.loss, args.loss_dtype, args.loss_scale,
                                                    0.0f, nullptr, 0, 0.0f, 1);
    check_launch(op);
  }
}

void gan_bce_forward(const GanBceForwardArgs& args, int64_t num_blocks, cudaStream_t stream) {
  const char* op = "ops.gan_bce_losses";
  const unsigned int grid = grid_size(num_blocks, op);
  gan_bce_forward_kernel<<<grid, kThreads, 0, stream>>>(args);
  check_launch(op);
  if (grid > 1) {
    finish_kernel<<<1, kFinishThreads, 0, stream>>>(args.partials, grid, args.d_loss, args.d_loss_dtype,
                                                    args.inv_n_real, args.inv_n_fake, args.g_loss, args.g_loss_dtype,
                                                    args.inv_n_fake, 3);
    check_launch(op);
  }
}

}  // namespace fastgan
