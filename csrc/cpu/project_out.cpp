// Projection off k directions on CPU (OpenMP over samples). Math: csrc/project_out.h.
#include "../project_out.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <vector>

namespace clarep_fast {

template <typename T, typename Acc>
void project_out_forward_cpu(const T* x, const T* V, T* out, Acc* coeffs, Acc* stats, const ProjectShape& p) {
  const int64_t N = p.size, K = p.rank;
#pragma omp parallel
  {
    std::vector<Acc> y(N);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < p.batch; ++b) {
      const T* xb = x + b * N;
      const T* Vb = V + b * N * K;
      Acc* c = coeffs + b * K;
      for (int64_t j = 0; j < K; ++j) c[j] = 0;
      Acc xx = 0;
      for (int64_t n = 0; n < N; ++n) {  // c = Vᵀx, one pass over V's rows
        const Acc xv = static_cast<Acc>(xb[n]);
        xx += xv * xv;
        const T* row = Vb + n * K;
        for (int64_t j = 0; j < K; ++j) c[j] += static_cast<Acc>(row[j]) * xv;
      }
      Acc yy = 0;
      for (int64_t n = 0; n < N; ++n) {  // y = x - V c
        const T* row = Vb + n * K;
        Acc v = static_cast<Acc>(xb[n]);
        for (int64_t j = 0; j < K; ++j) v -= static_cast<Acc>(row[j]) * c[j];
        y[n] = v;
        yy += v * v;
      }
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
void project_out_backward_cpu(const T* grad, const T* x, const T* V, const Acc* coeffs, const Acc* stats, T* grad_x,
                              T* grad_v, const ProjectShape& p) {
  const int64_t N = p.size, K = p.rank;
#pragma omp parallel
  {
    std::vector<Acc> gy(N), d(K);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < p.batch; ++b) {
      const T* xb = x + b * N;
      const T* gb = grad + b * N;
      const T* Vb = V + b * N * K;
      const Acc* c = coeffs + b * K;
      const Acc* st = stats + b * kProjectStats;
      const Acc s = st[0], x_norm = st[1], y_norm = st[2];
      const bool scaled = st[3] != Acc(0);
      Acc ds = 0;
      for (int64_t n = 0; n < N; ++n) {  // gy holds y for now
        Acc v = static_cast<Acc>(xb[n]);
        for (int64_t j = 0; j < K; ++j) v -= static_cast<Acc>(Vb[n * K + j]) * c[j];
        gy[n] = v;
        ds += static_cast<Acc>(gb[n]) * v;
      }
      const Acc y_coeff = scaled ? ds * s / (y_norm * y_norm) : Acc(0);
      const Acc direct = scaled ? ds * s / (x_norm * x_norm) : Acc(0);
      for (int64_t j = 0; j < K; ++j) d[j] = 0;
      for (int64_t n = 0; n < N; ++n) {
        gy[n] = scaled ? s * static_cast<Acc>(gb[n]) - y_coeff * gy[n] : static_cast<Acc>(gb[n]);
        for (int64_t j = 0; j < K; ++j) d[j] += static_cast<Acc>(Vb[n * K + j]) * gy[n];
      }
      for (int64_t n = 0; n < N; ++n) {
        const Acc xv = static_cast<Acc>(xb[n]);
        Acc v = gy[n] + direct * xv;
        for (int64_t j = 0; j < K; ++j) v -= static_cast<Acc>(Vb[n * K + j]) * d[j];
        grad_x[b * N + n] = static_cast<T>(v);
        if (grad_v != nullptr) {
          T* row = grad_v + (b * N + n) * K;
          for (int64_t j = 0; j < K; ++j) row[j] = static_cast<T>(-gy[n] * c[j] - xv * d[j]);
        }
      }
    }
  }
}

#define CLAREP_INSTANTIATE(T, Acc)                                                                               \
  template void project_out_forward_cpu<T, Acc>(const T*, const T*, T*, Acc*, Acc*, const ProjectShape&);       \
  template void project_out_backward_cpu<T, Acc>(const T*, const T*, const T*, const Acc*, const Acc*, T*, T*, \
                                                 const ProjectShape&);
CLAREP_INSTANTIATE(float, float)
CLAREP_INSTANTIATE(double, double)
CLAREP_INSTANTIATE(c10::Half, float)
CLAREP_INSTANTIATE(c10::BFloat16, float)
#undef CLAREP_INSTANTIATE

}  // namespace clarep_fast
