// Fused linear-CKA n×n kernels on CUDA. Math and layout: csrc/cka.h. Raw pointers, CUDA headers only.
//
// cka_stats: one thread block per layer pair does all the n×n work in one launch.
//   pass 1: one warp per row, lanes stride the columns (coalesced): row sums of K and L, traces;
//   __syncthreads (orders the global row-sum writes for the whole block), block-reduce S = Σ r;
//   pass 2: same traversal, centered entries on the fly, per-thread partial hkl/hkk/hll,
//   block reduction, thread 0 writes the stats. n×n reads: 2 passes over K and L.
// cka_grads: elementwise over (P, n, n), one thread per entry, writes both coefficient matrices.
#include <cuda_runtime.h>

#include "../cka.h"

namespace clarep_fast {
namespace {

constexpr int kStatsThreads = 512;
constexpr int kWarps = kStatsThreads / 32;
constexpr int kGradThreads = 256;

template <typename T>
__device__ T warp_sum(T value) {
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// Sum over the block; every thread gets the result. `scratch` holds kWarps values.
template <typename T>
__device__ T block_sum(T value, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  value = warp_sum(value);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  T total = lane < kWarps ? scratch[lane] : T(0);
  return warp_sum(total);
}

template <typename T>
__global__ void cka_stats_kernel(const T* __restrict__ grams, T* __restrict__ rowsums, T* __restrict__ stats,
                                 int64_t n, bool unbiased, T a, T b, double rtol) {
  __shared__ T scratch[kWarps];
  const int64_t pair = blockIdx.x, nn = n * n;
  const T* K = grams + 2 * pair * nn;
  const T* L = K + nn;
  T* rk = rowsums + 2 * pair * n;
  T* rl = rk + n;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  // Pass 1: row sums and traces.
  T trace_k = 0, trace_l = 0;
  for (int64_t i = warp; i < n; i += kWarps) {
    T sum_k = 0, sum_l = 0;
    for (int64_t j = lane; j < n; j += 32) {
      sum_k += K[i * n + j];
      sum_l += L[i * n + j];
    }
    sum_k = warp_sum(sum_k);
    sum_l = warp_sum(sum_l);
    if (lane == 0) {
      const T dk = K[i * n + i], dl = L[i * n + i];
      trace_k += dk;
      trace_l += dl;
      rk[i] = unbiased ? sum_k - dk : sum_k;
      rl[i] = unbiased ? sum_l - dl : sum_l;
    }
  }
  trace_k = block_sum(trace_k, scratch);  // block_sum's barriers also publish the row sums
  trace_l = block_sum(trace_l, scratch);
  T part_k = 0, part_l = 0;
  for (int64_t i = threadIdx.x; i < n; i += kStatsThreads) {
    part_k += rk[i];
    part_l += rl[i];
  }
  const T sum_k = block_sum(part_k, scratch), sum_l = block_sum(part_l, scratch);

  // Pass 2: centered inner products.
  T hkl = 0, hkk = 0, hll = 0;
  for (int64_t i = warp; i < n; i += kWarps) {
    const T ck = b * sum_k - a * rk[i], cl = b * sum_l - a * rl[i];
    for (int64_t j = lane; j < n; j += 32) {
      if (unbiased && j == i) continue;
      const T kc = K[i * n + j] + ck - a * rk[j];
      const T lc = L[i * n + j] + cl - a * rl[j];
      hkl += kc * lc;
      hkk += kc * kc;
      hll += lc * lc;
    }
  }
  hkl = block_sum(hkl, scratch);
  hkk = block_sum(hkk, scratch);
  hll = block_sum(hll, scratch);
  if (threadIdx.x == 0) {
    const bool ok = hkk > rtol * trace_k * trace_k && hll > rtol * trace_l * trace_l;
    T* out = stats + pair * kNumStats;
    out[0] = ok ? hkl / (sqrt(hkk) * sqrt(hll)) : T(0);
    out[1] = hkl;
    out[2] = hkk;
    out[3] = hll;
    out[4] = trace_k;
    out[5] = trace_l;
    out[6] = sum_k;
    out[7] = sum_l;
  }
}

template <typename T>
__global__ void cka_grads_kernel(const T* __restrict__ grams, const T* __restrict__ rowsums,
                                 const T* __restrict__ stats, const T* __restrict__ grad, T* __restrict__ coeffs,
                                 int64_t n, bool unbiased, T a, T b, double rtol) {
  const int64_t pair = blockIdx.y, nn = n * n;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= nn) return;
  const int64_t i = index / n, j = index % n;
  const T* s = stats + pair * kNumStats;
  const T value = s[0], hkk = s[2], hll = s[3], tk = s[4], tl = s[5], sk = s[6], sl = s[7];
  const bool ok = hkk > rtol * tk * tk && hll > rtol * tl * tl;
  const T scale = ok ? T(2) * grad[pair] : T(0);
  const T inv_norm = ok ? T(1) / (sqrt(hkk) * sqrt(hll)) : T(0);
  const T k_self = ok ? value / hkk : T(0), l_self = ok ? value / hll : T(0);
  const T* rk = rowsums + 2 * pair * n;
  const T* rl = rk + n;
  const bool zero = unbiased && i == j;
  const T kc = zero ? T(0) : grams[2 * pair * nn + index] + b * sk - a * (rk[i] + rk[j]);
  const T lc = zero ? T(0) : grams[(2 * pair + 1) * nn + index] + b * sl - a * (rl[i] + rl[j]);
  coeffs[2 * pair * nn + index] = scale * (lc * inv_norm - k_self * kc);
  coeffs[(2 * pair + 1) * nn + index] = scale * (kc * inv_norm - l_self * lc);
}

}  // namespace

template <typename T>
int cka_stats_cuda(const T* grams, T* rowsums, T* stats, int64_t pairs, int64_t n, bool unbiased, double rtol,
                   void* stream) {
  double a, b;
  centering_constants(n, unbiased, &a, &b);
  cka_stats_kernel<T><<<static_cast<unsigned>(pairs), kStatsThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      grams, rowsums, stats, n, unbiased, static_cast<T>(a), static_cast<T>(b), rtol);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int cka_grads_cuda(const T* grams, const T* rowsums, const T* stats, const T* grad, T* coeffs, int64_t pairs,
                   int64_t n, bool unbiased, double rtol, void* stream) {
  double a, b;
  centering_constants(n, unbiased, &a, &b);
  const dim3 grid(static_cast<unsigned>((n * n + kGradThreads - 1) / kGradThreads), static_cast<unsigned>(pairs));
  cka_grads_kernel<T><<<grid, kGradThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      grams, rowsums, stats, grad, coeffs, n, unbiased, static_cast<T>(a), static_cast<T>(b), rtol);
  return static_cast<int>(cudaGetLastError());
}

template int cka_stats_cuda<float>(const float*, float*, float*, int64_t, int64_t, bool, double, void*);
template int cka_stats_cuda<double>(const double*, double*, double*, int64_t, int64_t, bool, double, void*);
template int cka_grads_cuda<float>(const float*, const float*, const float*, const float*, float*, int64_t, int64_t,
                                   bool, double, void*);
template int cka_grads_cuda<double>(const double*, const double*, const double*, const double*, double*, int64_t,
                                    int64_t, bool, double, void*);

}  // namespace clarep_fast
