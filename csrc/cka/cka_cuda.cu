// Fused linear-CKA n×n kernels on CUDA. Math and layout: csrc/cka/cka.h. Raw pointers, CUDA headers only.
//
// cka_stats: ONE launch, grid (row blocks, pairs), one warp per row, lanes stride the columns
// (coalesced), each Gram entry read once. Centering is done algebraically so one pass suffices:
//   <C(K), C(L)> = <K°, L°> - 2a r_K·r_L + b S_K S_L          (K° = K, or K̃ with zero diagonal)
// with r the row sums, S = Σ r and (a, b) the centering constants. Each block writes its rows'
// row sums and its partial <K°,L°>, <K°,K°>, <L°,L°>, traces (fp64); the last block to finish
// (atomic counter; threadfence reduction) adds the partials in a fixed order, forms the row-sum
// dot products and the ratio. fp64 accumulation keeps the expansion as accurate as explicit
// centering: the fp32 rounding of the Gram itself dominates either way.
// cka_grads: elementwise over (P, n, n), one thread per entry, both coefficient matrices.
#include <cuda_runtime.h>

#include "cka.h"

namespace clarep_fast {
namespace {

constexpr int kWarpsPerBlock = 8;  // = rows per block
constexpr int kStatsThreads = 32 * kWarpsPerBlock;
constexpr int kGradThreads = 256;
// The last block's totals: the row-sum terms, then every block's partials (CkaPartial, cka.h).
enum CkaTotal : int { kTotalSumX, kTotalSumY, kTotalRowsXy, kTotalRowsXx, kTotalRowsYy, kTotalPartials };
constexpr int kNumTotals = kTotalPartials + kNumPartials;

__device__ double warp_sum(double value) {
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// Sum over the block of `count` values per thread; results valid in thread 0.
template <int count>
__device__ void block_sum(double (&values)[count]) {
  __shared__ double scratch[kWarpsPerBlock][count];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int v = 0; v < count; ++v) values[v] = warp_sum(values[v]);
  __syncthreads();
  if (lane == 0) {
#pragma unroll
    for (int v = 0; v < count; ++v) scratch[warp][v] = values[v];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int v = 0; v < count; ++v) {
      double total = 0.0;
      for (int w = 0; w < kWarpsPerBlock; ++w) total += scratch[w][v];
      values[v] = total;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kStatsThreads)
    cka_stats_kernel(const T* __restrict__ grams, T* __restrict__ rowsums, T* __restrict__ stats,
                     double* __restrict__ partials, unsigned int* __restrict__ counters, int64_t n, bool unbiased,
                     double a, double b, double rtol) {
  const int64_t pair = blockIdx.y, nn = n * n, blocks = gridDim.x;
  const T* K = grams + 2 * pair * nn;
  const T* L = K + nn;
  T* rk = rowsums + 2 * pair * n;
  T* rl = rk + n;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;

  // One pass over this block's rows.
  double sums[kNumPartials] = {};
  if (i < n) {
    double row_k = 0.0, row_l = 0.0;
    for (int64_t j = lane; j < n; j += 32) {
      if (unbiased && j == i) continue;
      const double k = K[i * n + j], l = L[i * n + j];
      row_k += k;
      row_l += l;
      sums[kPartialKl] += k * l;
      sums[kPartialKk] += k * k;
      sums[kPartialLl] += l * l;
    }
    row_k = warp_sum(row_k);
    row_l = warp_sum(row_l);
    if (lane == 0) {
      rk[i] = static_cast<T>(row_k);
      rl[i] = static_cast<T>(row_l);
      sums[kPartialTraceX] = K[i * n + i];
      sums[kPartialTraceY] = L[i * n + i];
    }
  }
  block_sum(sums);
  __shared__ bool is_last;
  __threadfence();  // make this thread's row-sum writes visible device-wide before the count
  __syncthreads();
  if (threadIdx.x == 0) {
    double* mine = partials + (pair * blocks + blockIdx.x) * kNumPartials;
    for (int v = 0; v < kNumPartials; ++v) mine[v] = sums[v];
    __threadfence();
    is_last = atomicAdd(counters + pair, 1u) == blocks - 1;
  }
  __syncthreads();
  if (!is_last) return;

  // Last block of this pair: row-sum dot products and block partials, in a fixed order.
  __threadfence();
  double totals[kNumTotals] = {};
  for (int64_t r = threadIdx.x; r < n; r += kStatsThreads) {
    const double k = __ldcg(rk + r), l = __ldcg(rl + r);
    totals[kTotalSumX] += k;
    totals[kTotalSumY] += l;
    totals[kTotalRowsXy] += k * l;
    totals[kTotalRowsXx] += k * k;
    totals[kTotalRowsYy] += l * l;
  }
  for (int64_t block = threadIdx.x; block < blocks; block += kStatsThreads) {
    const double* theirs = partials + (pair * blocks + block) * kNumPartials;
    for (int v = 0; v < kNumPartials; ++v) totals[kTotalPartials + v] += __ldcg(theirs + v);
  }
  block_sum(totals);
  if (threadIdx.x == 0) {
    const double sk = totals[kTotalSumX], sl = totals[kTotalSumY];
    const double hkl = totals[kTotalPartials + kPartialKl] - 2.0 * a * totals[kTotalRowsXy] + b * sk * sl;
    const double hkk = totals[kTotalPartials + kPartialKk] - 2.0 * a * totals[kTotalRowsXx] + b * sk * sk;
    const double hll = totals[kTotalPartials + kPartialLl] - 2.0 * a * totals[kTotalRowsYy] + b * sl * sl;
    write_stats(hkl, hkk, hll, totals[kTotalPartials + kPartialTraceX], totals[kTotalPartials + kPartialTraceY], sk, sl,
                rtol, stats + pair * kNumStats);
  }
}

template <typename T>
__global__ void __launch_bounds__(kGradThreads)
    cka_grads_kernel(const T* __restrict__ grams, const T* __restrict__ rowsums, const T* __restrict__ stats,
                     const T* __restrict__ grad, T* __restrict__ coeffs, int64_t n, bool unbiased, T a, T b,
                     double rtol) {
  const int64_t pair = blockIdx.y, nn = n * n;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= nn) return;
  const int64_t i = index / n, j = index % n;
  const T* s = stats + pair * kNumStats;
  const T value = s[kStatCka], hkk = s[kStatHkk], hll = s[kStatHll], tk = s[kStatTraceX], tl = s[kStatTraceY],
          sk = s[kStatSumX], sl = s[kStatSumY];
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

int64_t cka_stats_cuda_blocks(int64_t n) { return (n + kWarpsPerBlock - 1) / kWarpsPerBlock; }

// gridDim.y (the pair index) is at most 65,535: more pairs go in launches of at most that many,
// each on its own slice of every per-pair buffer.
constexpr int64_t kMaxPairsPerLaunch = 65535;

template <typename T>
int launch_stats(const void* grams, void* rowsums, void* stats, double* partials, unsigned int* counters, int64_t pairs,
                 int64_t n, bool unbiased, double rtol, cudaStream_t stream) {
  double a, b;
  centering_constants(n, unbiased, &a, &b);
  const int64_t blocks = cka_stats_cuda_blocks(n), nn = n * n;
  for (int64_t first = 0; first < pairs; first += kMaxPairsPerLaunch) {
    const int64_t count = pairs - first < kMaxPairsPerLaunch ? pairs - first : kMaxPairsPerLaunch;
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(count));
    cka_stats_kernel<T><<<grid, kStatsThreads, 0, stream>>>(
        static_cast<const T*>(grams) + first * 2 * nn, static_cast<T*>(rowsums) + first * 2 * n,
        static_cast<T*>(stats) + first * kNumStats, partials + first * blocks * kNumPartials, counters + first, n,
        unbiased, a, b, rtol);
    const cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) return static_cast<int>(status);
  }
  return 0;
}

template <typename T>
int launch_grads(const void* grams, const void* rowsums, const void* stats, const void* grad, void* coeffs,
                 int64_t pairs, int64_t n, bool unbiased, double rtol, cudaStream_t stream) {
  double a, b;
  centering_constants(n, unbiased, &a, &b);
  const int64_t nn = n * n;
  for (int64_t first = 0; first < pairs; first += kMaxPairsPerLaunch) {
    const int64_t count = pairs - first < kMaxPairsPerLaunch ? pairs - first : kMaxPairsPerLaunch;
    const dim3 grid(static_cast<unsigned>((nn + kGradThreads - 1) / kGradThreads), static_cast<unsigned>(count));
    cka_grads_kernel<T><<<grid, kGradThreads, 0, stream>>>(
        static_cast<const T*>(grams) + first * 2 * nn, static_cast<const T*>(rowsums) + first * 2 * n,
        static_cast<const T*>(stats) + first * kNumStats, static_cast<const T*>(grad) + first,
        static_cast<T*>(coeffs) + first * 2 * nn, n, unbiased, static_cast<T>(a), static_cast<T>(b), rtol);
    const cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) return static_cast<int>(status);
  }
  return 0;
}

int cka_stats_cuda(const void* grams, void* rowsums, void* stats, double* partials, unsigned int* counters, int dtype,
                   int64_t pairs, int64_t n, bool unbiased, double rtol, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kF32: return launch_stats<float>(grams, rowsums, stats, partials, counters, pairs, n, unbiased, rtol, s);
    case kF64: return launch_stats<double>(grams, rowsums, stats, partials, counters, pairs, n, unbiased, rtol, s);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

int cka_grads_cuda(const void* grams, const void* rowsums, const void* stats, const void* grad, void* coeffs, int dtype,
                   int64_t pairs, int64_t n, bool unbiased, double rtol, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kF32: return launch_grads<float>(grams, rowsums, stats, grad, coeffs, pairs, n, unbiased, rtol, s);
    case kF64: return launch_grads<double>(grams, rowsums, stats, grad, coeffs, pairs, n, unbiased, rtol, s);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace clarep_fast
