// Projection off k directions on CPU (OpenMP over samples). Math: csrc/project_out/project_out.h.
//
// A sample's V (N·K values, ~70 KB for a 3×16×16 latent and k = 24) stays in L2 between the two
// passes over it, so memory traffic is one read of V. The two products with V,
//   dots:     out_j = Σ_n V[n, j] v[n]        and      subtract: y[n] -= Σ_j V[n, j] w[j],
// walk V in its memory order: rows when k is unit-stride (what CLARID produces), columns when n
// is (a QR's Q), so the inner loops are contiguous and vectorize.
#include "project_out.h"

#include "../common/cpu_types.h"

#include <cmath>
#include <vector>

namespace clarep_fast {
namespace {

// The two products with V are the op's work: compiled for AVX2 + FMA (x86-64-v3) as well as the
// baseline x86-64 (SSE2) and picked by the CPU at load time (GCC function multiversioning), so one
// build runs on any x86-64 machine. Measured on a 2-core Xeon (2026-12-07, B = 400, N = 768,
// k = 24, no grad): baseline 1.69 ms (rows) / 1.43 ms (columns), AVX2 1.48 / 1.09 ms; an AVX-512
// clone took 2.56 / 0.95 ms (a 24-wide row is 1.5 vectors of 16), so there is none.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLAREP_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLAREP_VECTOR_CLONES
#endif

template <typename T, typename Acc>
CLAREP_VECTOR_CLONES void dots(const T* Vb, const Acc* __restrict v, Acc* __restrict out, const ProjectShape& p) {
  const int64_t N = p.size, K = p.rank;
  if (p.stride_n == 1 && K > 1) {
    for (int64_t j = 0; j < K; ++j) {
      const T* __restrict column = Vb + j * p.stride_k;
      Acc sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t n = 0; n < N; ++n) sum += static_cast<Acc>(column[n]) * v[n];
      out[j] = sum;
    }
    return;
  }
  for (int64_t j = 0; j < K; ++j) out[j] = 0;
  for (int64_t n = 0; n < N; ++n) {
    const T* __restrict row = Vb + n * p.stride_n;
    const Acc value = v[n];
    if (p.stride_k == 1) {
#pragma omp simd
      for (int64_t j = 0; j < K; ++j) out[j] += static_cast<Acc>(row[j]) * value;
    } else {
      for (int64_t j = 0; j < K; ++j) out[j] += static_cast<Acc>(row[j * p.stride_k]) * value;
    }
  }
}

template <typename T, typename Acc>
CLAREP_VECTOR_CLONES void subtract(const T* Vb, const Acc* __restrict w, Acc* __restrict y, const ProjectShape& p) {
  const int64_t N = p.size, K = p.rank;
  if (p.stride_n == 1 && K > 1) {
    for (int64_t j = 0; j < K; ++j) {
      const T* __restrict column = Vb + j * p.stride_k;
      const Acc weight = w[j];
#pragma omp simd
      for (int64_t n = 0; n < N; ++n) y[n] -= static_cast<Acc>(column[n]) * weight;
    }
    return;
  }
  for (int64_t n = 0; n < N; ++n) {
    const T* __restrict row = Vb + n * p.stride_n;
    Acc sum = 0;
    if (p.stride_k == 1) {
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < K; ++j) sum += static_cast<Acc>(row[j]) * w[j];
    } else {
      for (int64_t j = 0; j < K; ++j) sum += static_cast<Acc>(row[j * p.stride_k]) * w[j];
    }
    y[n] -= sum;
  }
}

}  // namespace

template <typename T, typename Acc>
void project_out_apply_cpu(const T* x, const T* V, T* out, Acc* coeffs, Acc* stats, const ProjectShape& p) {
  const int64_t N = p.size, K = p.rank;
#pragma omp parallel
  {
    std::vector<Acc> y(N);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < p.batch; ++b) {
      const T* xb = x + b * N;
      const T* Vb = V + b * p.stride_b;
      Acc* c = coeffs + b * K;
      Acc xx = 0;
      for (int64_t n = 0; n < N; ++n) {
        y[n] = static_cast<Acc>(xb[n]);
        xx += y[n] * y[n];
      }
      dots(Vb, y.data(), c, p);      // c = Vᵀx
      subtract(Vb, c, y.data(), p);  // y = x - V c
      Acc yy = 0;
      for (int64_t n = 0; n < N; ++n) yy += y[n] * y[n];
      const Acc x_norm = std::sqrt(xx), y_norm = std::sqrt(yy);
      const bool scaled = p.rescale && y_norm > static_cast<Acc>(p.rtol) * x_norm;
      const Acc s = scaled ? x_norm / y_norm : Acc(1);
      for (int64_t n = 0; n < N; ++n) out[b * N + n] = static_cast<T>(y[n] * s);
      Acc* st = stats + b * kProjectStats;
      st[0] = s, st[1] = x_norm, st[2] = y_norm, st[3] = scaled ? Acc(1) : Acc(0);
    }
  }
}

template <typename T, typename Acc>
void project_out_grads_cpu(const T* grad, const T* x, const T* V, const Acc* coeffs, const Acc* stats, T* grad_x,
                           T* grad_v, const ProjectShape& p) {
  const int64_t N = p.size, K = p.rank;
#pragma omp parallel
  {
    std::vector<Acc> y(N), gy(N), d(K);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < p.batch; ++b) {
      const T* xb = x + b * N;
      const T* gb = grad + b * N;
      const T* Vb = V + b * p.stride_b;
      const Acc* c = coeffs + b * K;
      const Acc* st = stats + b * kProjectStats;
      const Acc s = st[0], x_norm = st[1], y_norm = st[2];
      const bool scaled = st[3] != Acc(0);
      for (int64_t n = 0; n < N; ++n) y[n] = static_cast<Acc>(xb[n]);
      subtract(Vb, c, y.data(), p);  // y = x - V c, recomputed
      Acc ds = 0;
      for (int64_t n = 0; n < N; ++n) ds += static_cast<Acc>(gb[n]) * y[n];
      const Acc y_coeff = scaled ? ds * s / (y_norm * y_norm) : Acc(0);
      const Acc direct = scaled ? ds * s / (x_norm * x_norm) : Acc(0);
      for (int64_t n = 0; n < N; ++n) {
        const Acc g = static_cast<Acc>(gb[n]);
        gy[n] = scaled ? s * g - y_coeff * y[n] : g;
      }
      dots(Vb, gy.data(), d.data(), p);  // d = Vᵀ gy
      if (grad_v != nullptr) {
        for (int64_t n = 0; n < N; ++n) {
          T* row = grad_v + (b * N + n) * K;
          const Acc xv = static_cast<Acc>(xb[n]);
          for (int64_t j = 0; j < K; ++j) row[j] = static_cast<T>(-gy[n] * c[j] - xv * d[j]);
        }
      }
      for (int64_t n = 0; n < N; ++n) y[n] = gy[n] + direct * static_cast<Acc>(xb[n]);
      subtract(Vb, d.data(), y.data(), p);  // dx = gy + direct·x - V d
      for (int64_t n = 0; n < N; ++n) grad_x[b * N + n] = static_cast<T>(y[n]);
    }
  }
}

#define CLAREP_INSTANTIATE(T, Acc)                                                                          \
  template void project_out_apply_cpu<T, Acc>(const T*, const T*, T*, Acc*, Acc*, const ProjectShape&);     \
  template void project_out_grads_cpu<T, Acc>(const T*, const T*, const T*, const Acc*, const Acc*, T*, T*, \
                                              const ProjectShape&);
CLAREP_FOR_EACH_CPU_TYPE(CLAREP_INSTANTIATE)
#undef CLAREP_INSTANTIATE

}  // namespace clarep_fast
