// Fused linear-CKA n×n kernels: declarations shared by the CPU (.cpp) and CUDA (.cu) sources.
//
// Layout (row-major, contiguous, one dtype T = float or double):
//   grams   (P, 2, n, n)  K_p = grams[p][0] = x_p x_pᵀ, L_p = grams[p][1] = y_p y_pᵀ (uncentered)
//   rowsums (P, 2, n)     r_i = Σ_j K_ij (j != i when unbiased); same for L
//   stats   (P, 8)        CkaStat order: cka, hkl, hkk, hll, tr K, tr L, Σ r(K), Σ r(L)
//   grad    (P,)          dLoss/dCKA_p
//   coeffs  (P, 2, n, n)  2 g (dCKA/dK), 2 g (dCKA/dL): then dx = coeffs[p][0] x, dy = coeffs[p][1] y
//
// Centered Gram entries (reference/cka.py for the derivation):
//   biased:    C(K)_ij = K_ij - (r_i + r_j)/n + S/n²
//   unbiased:  C(K)_ij = K_ij - (r_i + r_j)/(n-2) + S/((n-1)(n-2)) for i != j, 0 on the diagonal
//   hkl = Σ C(K)∘C(L), hkk = Σ C(K)², hll = Σ C(L)²,  CKA = hkl / (sqrt(hkk) sqrt(hll))
//   degenerate (CKA := 0, zero gradient) unless hkk > rtol·(tr K)² and hll > rtol·(tr L)²
//   dCKA/dK = C(L)/(sqrt(hkk) sqrt(hll)) - CKA·C(K)/hkk,  dCKA/dL likewise with K <-> L
//
// No torch headers here: the .cu files include only this and CUDA headers (fast nvcc builds).
#pragma once
#include <cmath>
#include <cstdint>

#include "../common/kernel.h"

namespace clarep_fast {

// The stats row's fields, in the order of STATS_FIELDS in clarep_fast/reference/cka.py (the one
// named source; kernels/cka.py takes its Triton constexprs from it and tests/ops/test_cka_layout.py
// holds this enum to it).
enum CkaStat : int {
  kStatCka,
  kStatHkl,
  kStatHkk,
  kStatHll,
  kStatTraceX,
  kStatTraceY,
  kStatSumX,
  kStatSumY,
  kNumStats
};

// The per-row-block partial sums of the CUDA and Triton stats kernels (an fp64 workspace
// (pairs, blocks, kNumPartials)), in the order of PARTIAL_FIELDS in clarep_fast/reference/cka.py:
// <K°,L°>, <K°,K°>, <L°,L°>, tr K, tr L.
enum CkaPartial : int { kPartialKl, kPartialKk, kPartialLl, kPartialTraceX, kPartialTraceY, kNumPartials };

#ifdef __CUDACC__
#define CLAREP_HOST_DEVICE __host__ __device__ __forceinline__  // a device call would need a stack frame
#else
#define CLAREP_HOST_DEVICE inline
#endif

// One pair's stats row from its centered inner products, traces and row-sum totals: the ratio and
// the degenerate rule (CKA := 0 unless hkk > rtol (tr K)² and hll > rtol (tr L)²), written once for
// the CPU and CUDA stats kernels (kernels/cka.py writes the same in Triton).
template <typename T>
CLAREP_HOST_DEVICE void write_stats(double hkl, double hkk, double hll, double trace_x, double trace_y, double sum_x,
                                    double sum_y, double rtol, T* out) {
  const bool ok = hkk > rtol * trace_x * trace_x && hll > rtol * trace_y * trace_y;
  out[kStatCka] = static_cast<T>(ok ? hkl / (std::sqrt(hkk) * std::sqrt(hll)) : 0.0);
  out[kStatHkl] = static_cast<T>(hkl);
  out[kStatHkk] = static_cast<T>(hkk);
  out[kStatHll] = static_cast<T>(hll);
  out[kStatTraceX] = static_cast<T>(trace_x);
  out[kStatTraceY] = static_cast<T>(trace_y);
  out[kStatSumX] = static_cast<T>(sum_x);
  out[kStatSumY] = static_cast<T>(sum_y);
}

template <typename T>
void cka_stats_cpu(const T* grams, T* rowsums, T* stats, int64_t pairs, int64_t n, bool unbiased, double rtol);

template <typename T>
void cka_grads_cpu(const T* grams, const T* rowsums, const T* stats, const T* grad, T* coeffs, int64_t pairs, int64_t n,
                   bool unbiased, double rtol);

#ifdef WITH_CUDA
// Launch on `stream` (a cudaStream_t passed as void* so this header needs no CUDA include); T is
// given by dtype (kF32 or kF64 of csrc/common/kernel.h); returns the launch's cudaError_t (0 = success).
// cka_stats_cuda needs a workspace: `partials` (pairs × cka_stats_cuda_blocks(n) × kNumPartials
// doubles, any contents) and `counters` (pairs unsigned ints, zeroed).
int64_t cka_stats_cuda_blocks(int64_t n);
int cka_stats_cuda(const void* grams, void* rowsums, void* stats, double* partials, unsigned int* counters, int dtype,
                   int64_t pairs, int64_t n, bool unbiased, double rtol, void* stream);
int cka_grads_cuda(const void* grams, const void* rowsums, const void* stats, const void* grad, void* coeffs, int dtype,
                   int64_t pairs, int64_t n, bool unbiased, double rtol, void* stream);
#endif

// Centering constants: C(K)_ij = K_ij - a (r_i + r_j) + b S.
inline void centering_constants(int64_t n, bool unbiased, double* a, double* b) {
  const double nd = static_cast<double>(n);
  if (unbiased) {
    *a = 1.0 / (nd - 2.0);
    *b = 1.0 / ((nd - 1.0) * (nd - 2.0));
  } else {
    *a = 1.0 / nd;
    *b = 1.0 / (nd * nd);
  }
}

}  // namespace clarep_fast
