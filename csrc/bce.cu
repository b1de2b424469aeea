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
// Memory access. The element dtype T is a template parameter (the host dispatches once).
// Three walks, chosen once on the host: kPacked when every operand is dense and 16-byte
// aligned (each thread moves 16-byte packs, 4 x fp32 or 8 x fp16/bf16, then the last
// numel mod width elements one by one), kDense when dense but misaligned (e.g. x[1:]),
// kStrided for the 4-d coalesced plan of fastgan/_indexing.py (broadcast operands, views).
// GAN BCE walks each of its two logit vectors packed when it is dense and aligned.
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

enum class Walk { kPacked, kDense, kStrided };

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

// Loss and gradient of one element; w = 1 stands for an absent weight, and has_p = false for
// an absent pos_weight (then 1 + (p - 1) * y is exactly 1, even for an infinite target).
__device__ __forceinline__ void bce_terms(float x, float y, float w, bool has_p, float p, float* loss, float* grad) {
  float log_sigmoid, sigmoid_neg;
  log_sigmoid_and_sigmoid_neg(x, &log_sigmoid, &sigmoid_neg);
  const float log_weight = has_p ? 1.0f + (p - 1.0f) * y : 1.0f;
  *loss = w * ((1.0f - y) * x - log_weight * log_sigmoid);
  *grad = w * ((1.0f - y) - log_weight * sigmoid_neg);
}

// One element at operand offsets (in, tg, w, pw) and output offset `out`; returns its loss.
template <class T, bool REDUCE>
__device__ __forceinline__ float bce_element(const BceForwardArgs& args, int64_t in, int64_t tg, int64_t w,
                                             int64_t pw, int64_t out) {
  const float x = load_element<T>(args.input.ptr, in);
  const float y = args.target.ptr ? load_element<T>(args.target.ptr, tg) : args.target_value;
  const float weight = args.weight.ptr ? load_element<T>(args.weight.ptr, w) : 1.0f;
  const float pos_weight = args.pos_weight.ptr ? load_element<T>(args.pos_weight.ptr, pw) : 1.0f;
  float loss, grad;
  bce_terms(x, y, weight, args.pos_weight.ptr != nullptr, pos_weight, &loss, &grad);
  if (args.grad) store_element<T>(args.grad, out, grad * args.grad_scale);
  if (!REDUCE) store_element<T>(args.loss, out, loss);
  return loss;
}

// One 16-byte pack of every operand at element offset `offset` (a multiple of the width);
// returns the sum of its losses.
template <class T, bool REDUCE>
__device__ __forceinline__ float bce_pack(const BceForwardArgs& args, int64_t offset) {
  constexpr int W = Pack<T>::kWidth;
  float x[W], y[W], weight[W], pos_weight[W], loss[W], grad[W];
  load_pack<T>(args.input.ptr, offset, x);
#pragma unroll
  for (int k = 0; k < W; ++k) {
    y[k] = args.target_value;
    weight[k] = 1.0f;
    pos_weight[k] = 1.0f;
  }
  if (args.target.ptr) load_pack<T>(args.target.ptr, offset, y);
  if (args.weight.ptr) load_pack<T>(args.weight.ptr, offset, weight);
  if (args.pos_weight.ptr) load_pack<T>(args.pos_weight.ptr, offset, pos_weight);
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < W; ++k) {
    bce_terms(x[k], y[k], weight[k], args.pos_weight.ptr != nullptr, pos_weight[k], &loss[k], &grad[k]);
    grad[k] *= args.grad_scale;
    sum += loss[k];
  }
  if (args.grad) store_pack<T>(args.grad, offset, grad);
  if (!REDUCE) store_pack<T>(args.loss, offset, loss);
  return sum;
}

template <class T, bool REDUCE, Walk WALK>
__global__ void __launch_bounds__(kThreads) bce_with_logits_forward_kernel(BceForwardArgs args) {
  float acc = 0.0f;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (WALK == Walk::kPacked) {
    constexpr int W = Pack<T>::kWidth;
    const int64_t packs = args.numel / W;
    for (int64_t i = first; i < packs; i += step) acc += bce_pack<T, REDUCE>(args, i * W);
    const int64_t tail = packs * W + first;  // the last numel mod W elements, one per thread
    if (tail < args.numel) acc += bce_element<T, REDUCE>(args, tail, tail, tail, tail, tail);
  } else {
    for (int64_t i = first; i < args.numel; i += step) {
      int64_t in = i, tg = i, w = i, pw = i;
      if (WALK == Walk::kStrided) {
        in = strided_offset(i, args.sizes, args.input.strides);
        tg = strided_offset(i, args.sizes, args.target.strides);
        w = strided_offset(i, args.sizes, args.weight.strides);
        pw = strided_offset(i, args.sizes, args.pos_weight.strides);
      }
      acc += bce_element<T, REDUCE>(args, in, tg, w, pw, i);
    }
  }
  if (REDUCE) {
    const float total = block_sum<kThreads>(acc);
    if (threadIdx.x == 0) {
      if (gridDim.x == 1) {
        store_scalar(args.loss, args.loss_dtype, 0, total * args.loss_scale);
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
    store_scalar(out0, out0_dtype, 0, sums[0] * row0_scale + (rows == 3 ? sums[1] * row1_scale : 0.0f));
    if (rows == 3) store_scalar(out1, out1_dtype, 0, sums[2] * row2_scale);
  }
}

// GAN BCE terms of one logit: d = BCE(x, target), g = softplus(-x) = -log_sigmoid(x) (fake
// only), their gradients scaled by inv_n.
struct GanTerms {
  float d, g, grad_d, grad_g;
};

__device__ __forceinline__ GanTerms gan_terms(float x, float target, float inv_n) {
  float log_sigmoid, sigmoid_neg;
  log_sigmoid_and_sigmoid_neg(x, &log_sigmoid, &sigmoid_neg);
  return {(1.0f - target) * x - log_sigmoid, -log_sigmoid, ((1.0f - target) - sigmoid_neg) * inv_n,
          -sigmoid_neg * inv_n};
}

// One logit vector of the GAN losses (FAKE: also the generator's loss and gradient): sums of
// its d (and g) terms over this thread's elements; gradients written when grad_d is given.
template <class T, bool FAKE>
__device__ __forceinline__ void gan_stream(const void* logits, int64_t n, int64_t stride, bool packed, float target,
                                           float inv_n, void* grad_d, void* grad_g, int64_t first, int64_t step,
                                           float* d_sum, float* g_sum) {
  float d = 0.0f, g = 0.0f;
  int64_t scalar_begin = 0;
  if (packed) {
    constexpr int W = Pack<T>::kWidth;
    const int64_t packs = n / W;
    for (int64_t i = first; i < packs; i += step) {
      float x[W], gd[W], gg[W];
      load_pack<T>(logits, i * W, x);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const GanTerms t = gan_terms(x[k], target, inv_n);
        d += t.d;
        g += t.g;
        gd[k] = t.grad_d;
        gg[k] = t.grad_g;
      }
      if (grad_d) {
        store_pack<T>(grad_d, i * W, gd);
        if (FAKE) store_pack<T>(grad_g, i * W, gg);
      }
    }
    scalar_begin = packs * W;
  }
  for (int64_t i = scalar_begin + first; i < n; i += step) {  // packed: at most one tail element per thread
    const GanTerms t = gan_terms(load_element<T>(logits, i * stride), target, inv_n);
    d += t.d;
    g += t.g;
    if (grad_d) {
      store_element<T>(grad_d, i, t.grad_d);
      if (FAKE) store_element<T>(grad_g, i, t.grad_g);
    }
  }
  *d_sum = d;
  *g_sum = g;
}

template <class TR, class TF>
__global__ void __launch_bounds__(kThreads) gan_bce_forward_kernel(GanBceForwardArgs args) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  float d_real, unused, d_fake, g_fake;
  gan_stream<TR, false>(args.real, args.n_real, args.real_stride, args.real_packed, args.real_target, args.inv_n_real,
                        args.grad_real, nullptr, first, step, &d_real, &unused);
  gan_stream<TF, true>(args.fake, args.n_fake, args.fake_stride, args.fake_packed, args.fake_target, args.inv_n_fake,
                       args.grad_fake_d, args.grad_fake_g, first, step, &d_fake, &g_fake);
  const float sum_d_real = block_sum<kThreads>(d_real);
  __syncthreads();
  const float sum_d_fake = block_sum<kThreads>(d_fake);
  __syncthreads();
  const float sum_g_fake = block_sum<kThreads>(g_fake);
  if (threadIdx.x == 0) {
    if (gridDim.x == 1) {
      store_scalar(args.d_loss, args.d_loss_dtype, 0, sum_d_real * args.inv_n_real + sum_d_fake * args.inv_n_fake);
      store_scalar(args.g_loss, args.g_loss_dtype, 0, sum_g_fake * args.inv_n_fake);
    } else {
      args.partials[blockIdx.x] = sum_d_real;
      args.partials[gridDim.x + blockIdx.x] = sum_d_fake;
      args.partials[2 * gridDim.x + blockIdx.x] = sum_g_fake;
    }
  }
}

void require_dtype(int dtype, int expected, const char* op, const char* what) {
  if (dtype != expected) {
    throw std::runtime_error(std::string("fastgan.") + op + ": " + what +
                             " must have the input's dtype (the caller casts mixed operands)");
  }
}

template <class T, bool REDUCE>
void launch_bce(const BceForwardArgs& args, unsigned int grid, cudaStream_t stream) {
  const bool packed = args.contiguous && aligned16(args.input.ptr) && aligned16(args.target.ptr) &&
                      aligned16(args.weight.ptr) && aligned16(args.pos_weight.ptr) && aligned16(args.grad) &&
                      (REDUCE || aligned16(args.loss));
  if (packed) {
    bce_with_logits_forward_kernel<T, REDUCE, Walk::kPacked><<<grid, kThreads, 0, stream>>>(args);
  } else if (args.contiguous) {
    bce_with_logits_forward_kernel<T, REDUCE, Walk::kDense><<<grid, kThreads, 0, stream>>>(args);
  } else {
    bce_with_logits_forward_kernel<T, REDUCE, Walk::kStrided><<<grid, kThreads, 0, stream>>>(args);
  }
}

}  // namespace

void bce_with_logits_forward(const BceForwardArgs& args, int64_t num_blocks, bool reduce, cudaStream_t stream) {
  const char* op = "ops.bce_with_logits";
  const unsigned int grid = grid_size(num_blocks, op);
  const int dtype = args.input.dtype;
  if (args.target.ptr) require_dtype(args.target.dtype, dtype, op, "target");
  if (args.weight.ptr) require_dtype(args.weight.dtype, dtype, op, "weight");
  if (args.pos_weight.ptr) require_dtype(args.pos_weight.dtype, dtype, op, "pos_weight");
  if (args.grad) require_dtype(args.grad_dtype, dtype, op, "the gradient");
  if (!reduce) require_dtype(args.loss_dtype, dtype, op, "the per-element loss");
  dispatch_dtype(dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (reduce) {
      launch_bce<T, true>(args, grid, stream);
    } else {
      launch_bce<T, false>(args, grid, stream);
    }
  });
  check_launch(op);
  if (reduce && grid > 1) {
    finish_kernel<<<1, kFinishThreads, 0, stream>>>(args.partials, grid, args.loss, args.loss_dtype, args.loss_scale,
                                                    0.0f, nullptr, 0, 0.0f, 1);
    check_launch(op);
  }
}

void gan_bce_forward(const GanBceForwardArgs& args_in, int64_t num_blocks, cudaStream_t stream) {
  const char* op = "ops.gan_bce_losses";
  const unsigned int grid = grid_size(num_blocks, op);
  GanBceForwardArgs args = args_in;
  args.real_packed = args.real_stride == 1 && aligned16(args.real) && aligned16(args.grad_real);
  args.fake_packed = args.fake_stride == 1 && aligned16(args.fake) && aligned16(args.grad_fake_d) &&
                     aligned16(args.grad_fake_g);
  dispatch_dtype(args.real_dtype, op, [&](auto real_tag) {
    dispatch_dtype(args.fake_dtype, op, [&](auto fake_tag) {
      using TR = typename decltype(real_tag)::type;
      using TF = typename decltype(fake_tag)::type;
      gan_bce_forward_kernel<TR, TF><<<grid, kThreads, 0, stream>>>(args);
    });
  });
  check_launch(op);
  if (grid > 1) {
    finish_kernel<<<1, kFinishThreads, 0, stream>>>(args.partials, grid, args.d_loss, args.d_loss_dtype,
                                                    args.inv_n_real, args.inv_n_fake, args.g_loss, args.g_loss_dtype,
                                                    args.inv_n_fake, 3);
    check_launch(op);
  }
}

}  // namespace fastgan
