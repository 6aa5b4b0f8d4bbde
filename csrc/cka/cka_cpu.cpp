// Fused linear-CKA n×n kernels on CPU (OpenMP). Math and layout: csrc/cka/cka.h.
// Sums accumulate in double whatever T is: n² terms, cheap next to the Gram GEMMs.
#include "cka.h"

#include <cmath>
#include <vector>

namespace clarep_fast {

template <typename T>
void cka_stats_cpu(const T* grams, T* rowsums, T* stats, int64_t pairs, int64_t n, bool unbiased, double rtol) {
  double a, b;
  centering_constants(n, unbiased, &a, &b);
  const int64_t nn = n * n;

  // Pass 1: row sums of K and L (diagonal excluded when unbiased). Rows are independent.
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < pairs * 2 * n; ++row) {
    const T* gram_row = grams + row * n;
    const int64_t i = row % n;
    double sum = 0.0;
    for (int64_t j = 0; j < n; ++j) sum += static_cast<double>(gram_row[j]);
    if (unbiased) sum -= static_cast<double>(gram_row[i]);
    rowsums[row] = static_cast<T>(sum);
  }

  // Pass 2, per pair: centered inner products.
  for (int64_t p = 0; p < pairs; ++p) {
    const T* K = grams + (2 * p) * nn;
    const T* L = grams + (2 * p + 1) * nn;
    const T* rk = rowsums + (2 * p) * n;
    const T* rl = rowsums + (2 * p + 1) * n;
    double sk = 0.0, sl = 0.0, tk = 0.0, tl = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      sk += rk[i];
      sl += rl[i];
      tk += K[i * n + i];
      tl += L[i * n + i];
    }
    double hkl = 0.0, hkk = 0.0, hll = 0.0;
#pragma omp parallel for reduction(+ : hkl, hkk, hll) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const double ck = b * sk - a * rk[i], cl = b * sl - a * rl[i];
      for (int64_t j = 0; j < n; ++j) {
        if (unbiased && j == i) continue;
        const double kc = K[i * n + j] + ck - a * rk[j];
        const double lc = L[i * n + j] + cl - a * rl[j];
        hkl += kc * lc;
        hkk += kc * kc;
        hll += lc * lc;
      }
    }
    write_stats(hkl, hkk, hll, tk, tl, sk, sl, rtol, stats + p * kNumStats);
  }
}

template <typename T>
void cka_grads_cpu(const T* grams, const T* rowsums, const T* stats, const T* grad, T* coeffs, int64_t pairs, int64_t n,
                   bool unbiased, double rtol) {
  double a, b;
  centering_constants(n, unbiased, &a, &b);
  const int64_t nn = n * n;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t p = 0; p < pairs; ++p) {
    for (int64_t i = 0; i < n; ++i) {
      const T* s = stats + p * kNumStats;
      const double value = s[kStatCka], hkk = s[kStatHkk], hll = s[kStatHll], tk = s[kStatTraceX], tl = s[kStatTraceY],
                   sk = s[kStatSumX], sl = s[kStatSumY];
      const bool ok = hkk > rtol * tk * tk && hll > rtol * tl * tl;
      const double scale = ok ? 2.0 * static_cast<double>(grad[p]) : 0.0;
      const double inv_norm = ok ? 1.0 / (std::sqrt(hkk) * std::sqrt(hll)) : 0.0;
      const double k_self = ok ? value / hkk : 0.0, l_self = ok ? value / hll : 0.0;
      const T* K = grams + (2 * p) * nn + i * n;
      const T* L = grams + (2 * p + 1) * nn + i * n;
      const T* rk = rowsums + (2 * p) * n;
      const T* rl = rowsums + (2 * p + 1) * n;
      T* dK = coeffs + (2 * p) * nn + i * n;
      T* dL = coeffs + (2 * p + 1) * nn + i * n;
      const double ck = b * sk - a * rk[i], cl = b * sl - a * rl[i];
      for (int64_t j = 0; j < n; ++j) {
        const bool zero = unbiased && j == i;
        const double kc = zero ? 0.0 : K[j] + ck - a * rk[j];
        const double lc = zero ? 0.0 : L[j] + cl - a * rl[j];
        dK[j] = static_cast<T>(scale * (lc * inv_norm - k_self * kc));
        dL[j] = static_cast<T>(scale * (kc * inv_norm - l_self * lc));
      }
    }
  }
}

template void cka_stats_cpu<float>(const float*, float*, float*, int64_t, int64_t, bool, double);
template void cka_stats_cpu<double>(const double*, double*, double*, int64_t, int64_t, bool, double);
template void cka_grads_cpu<float>(const float*, const float*, const float*, const float*, float*, int64_t, int64_t,
                                   bool, double);
template void cka_grads_cpu<double>(const double*, const double*, const double*, const double*, double*, int64_t,
                                    int64_t, bool, double);

}  // namespace clarep_fast
