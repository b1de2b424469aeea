// CUDA kernels for the Rényi-α divergence reduction (Python side: fastgan/_cuda.py).
//
// Each row holds n logits r; with β = 1 − α, m = max β·r, E = Σ exp(β·r − m),
// S = Σ expm1(β·r − m):
//   D_α = −(m + log A)/β,  log A = log1p(S/n) if E > n/2 else log(E) − log n,
// and −Σr/n when β = 0 (α = 1, reverse KL). E and S add one-signed terms and log1p keeps
// log A exact near uniform weights, so D_α is continuous through α = 1. Statistics are
// kept online per thread as (m, E, S, count, Σr) and merged with the rescaling
// E' = E·e^(m−m'), S' = S·e^(m−m') + count·expm1(m−m').
// Backward: dD/dr_i = −exp(β·r_i − m)/E = −softmax(β·r)_i, from the saved per-row (m, E).
#include "renyi.h"

#include "device_utils.cuh"

namespace fastgan {
namespace {

constexpr int kThreads = 256;

struct OnlineStats {
  float m;      // running max of β·r (−inf before the first value)
  float e;      // Σ exp(β·r − m)
  float s;      // Σ expm1(β·r − m)
  float count;  // values seen
  float total;  // Σ r
};

__device__ __forceinline__ OnlineStats empty_stats() { return {-INFINITY, 0.0f, 0.0f, 0.0f, 0.0f}; }

__device__ __forceinline__ void push(OnlineStats& st, float x, float r) {
  const float m_new = fmaxf(st.m, x);
  const float delta = st.count > 0.0f ? st.m - m_new : 0.0f;  // <= 0
  const float rescale = expf(delta);
  st.e = st.e * rescale + expf(x - m_new);
  st.s = st.s * rescale + st.count * expm1f(delta) + expm1f(x - m_new);
  st.count += 1.0f;
  st.total += r;
  st.m = m_new;
}

__device__ __forceinline__ OnlineStats merge(const OnlineStats& a, const OnlineStats& b) {
  if (b.count == 0.0f) return a;
  if (a.count == 0.0f) return b;
  const float m = fmaxf(a.m, b.m);
  const float da = a.m - m, db = b.m - m;
  const float ea = expf(da), eb = expf(db);
  return {m, a.e * ea + b.e * eb, a.s * ea + a.count * expm1f(da) + b.s * eb + b.count * expm1f(db),
          a.count + b.count, a.total + b.total};
}

__device__ __forceinline__ OnlineStats shfl_down(const OnlineStats& st, int shift) {
  return {__shfl_down_sync(0xffffffffu, st.m, shift), __shfl_down_sync(0xffffffffu, st.e, shift),
          __shfl_down_sync(0xffffffffu, st.s, shift), __shfl_down_sync(0xffffffffu, st.count, shift),
          __shfl_down_sync(0xffffffffu, st.total, shift)};
}

// Merge one OnlineStats per thread across the block; valid in thread 0.
__device__ OnlineStats block_merge(OnlineStats st) {
  __shared__ OnlineStats warp_stats[kThreads / 32];
  for (int shift = 16; shift > 0; shift >>= 1) st = merge(st, shfl_down(st, shift));
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) warp_stats[warp] = st;
  __syncthreads();
  if (warp == 0) {
    st = lane < kThreads / 32 ? warp_stats[lane] : empty_stats();
    for (int shift = 16; shift > 0; shift >>= 1) st = merge(st, shfl_down(st, shift));
  }
  return st;
}

__device__ __forceinline__ float finalize(const OnlineStats& st, float n, float beta, float inv_beta, float log_n) {
  if (beta == 0.0f) return -st.total / n;
  const float log_mean = st.e > 0.5f * n ? log1pf(st.s / n) : logf(st.e) - log_n;
  return -(st.m + log_mean) * inv_beta;
}

__global__ void __launch_bounds__(kThreads) renyi_forward_kernel(RenyiForwardArgs args) {
  const int64_t row = blockIdx.x;
  const int64_t split = blockIdx.y;
  const RenyiRows& in = args.input;
  const int64_t begin = split * args.cols_per_split;
  const int64_t end = begin + args.cols_per_split < in.n ? begin + args.cols_per_split : in.n;
  OnlineStats st = empty_stats();
  for (int64_t col = begin + threadIdx.x; col < end; col += kThreads) {
    const float r = load_as_float(in.ptr, in.dtype, row * in.row_stride + col * in.col_stride);
    push(st, args.beta * r, r);
  }
  st = block_merge(st);
  if (threadIdx.x != 0) return;
  if (gridDim.y == 1) {
    store_from_float(args.out, args.out_dtype, row, finalize(st, in.n, args.beta, args.inv_beta, args.log_n));
    args.shift[row] = st.m;
    args.expsum[row] = st.e;
  } else {
    float* base = args.partials + (row * gridDim.y + split) * 5;
    base[0] = st.m;
    base[1] = st.e;
    base[2] = st.s;
    base[3] = st.count;
    base[4] = st.total;
  }
}

__global__ void __launch_bounds__(kThreads) renyi_finish_kernel(RenyiForwardArgs args, int64_t splits) {
  const int64_t row = blockIdx.x;
  OnlineStats st = empty_stats();
  for (int64_t split = threadIdx.x; split < splits; split += kThreads) {
    const float* base = args.partials + (row * splits + split) * 5;
    st = merge(st, OnlineStats{base[0], base[1], base[2], base[3], base[4]});
  }
  st = block_merge(st);
  if (threadIdx.x != 0) return;
  store_from_float(args.out, args.out_dtype, row,
                   finalize(st, static_cast<float>(args.input.n), args.beta, args.inv_beta, args.log_n));
  args.shift[row] = st.m;
  args.expsum[row] = st.e;
}

__global__ void __launch_bounds__(kThreads) renyi_backward_kernel(RenyiBackwardArgs args) {
  const RenyiRows& in = args.input;
  const int64_t total = in.rows * in.n;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total; i += step) {
    const int64_t row = i / in.n;
    const int64_t col = i - row * in.n;
    const float r = load_as_float(in.ptr, in.dtype, row * in.row_stride + col * in.col_stride);
    const float g = load_as_float(args.grad_out, args.grad_out_dtype, row * args.grad_out_stride);
    store_from_float(args.grad, args.grad_dtype, i, -g * expf(args.beta * r - args.shift[row]) / args.expsum[row]);
  }
}

}  // namespace

void renyi_forward(const RenyiForwardArgs& args, int64_t splits, cudaStream_t stream) {
  const char* op = "ops.renyi_divergence";
  if (splits < 1 || splits > 65535) throw std::runtime_error("fastgan.ops.renyi_divergence: invalid split count");
  const dim3 grid(grid_size(args.input.rows, op), static_cast<unsigned int>(splits));
  renyi_forward_kernel<<<grid, kThreads, 0, stream>>>(args);
  check_launch(op);
  if (splits > 1) {
    renyi_finish_kernel<<<grid_size(args.input.rows, op), kThreads, 0, stream>>>(args, splits);
    check_launch(op);
  }
}

void renyi_backward(const RenyiBackwardArgs& args, cudaStream_t stream) {
  const char* op = "ops.renyi_divergence (backward)";
  const int64_t elements = args.input.rows * args.input.n;
  const int64_t blocks = (elements + kThreads * 4 - 1) / (kThreads * 4);
  renyi_backward_kernel<<<grid_size(blocks < 65536 * 16 ? blocks : 65536 * 16, op), kThreads, 0, stream>>>(args);
  check_launch(op);
}

}  // namespace fastgan
