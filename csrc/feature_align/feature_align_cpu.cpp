// Feature alignment statistics and gradients on CPU (OpenMP over rows). Math: csrc/feature_align/feature_align.h.
#include "feature_align.h"

#include "../common/cpu_types.h"

namespace clarep_fast {

template <typename T, typename Acc>
void feature_align_sums_cpu(const T* s, const T* t, Acc* stats, int64_t rows, int64_t width) {
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < rows; ++b) {
    const T* __restrict sb = s + b * width;
    const T* __restrict tb = t + b * width;
    Acc st = 0, ss = 0, tt = 0, dd = 0;
#pragma omp simd reduction(+ : st, ss, tt, dd)
    for (int64_t d = 0; d < width; ++d) {
      const Acc a = static_cast<Acc>(sb[d]), c = static_cast<Acc>(tb[d]), diff = a - c;
      st += a * c, ss += a * a, tt += c * c, dd += diff * diff;
    }
    Acc* out = stats + b * kAlignStats;
    out[0] = st, out[1] = ss, out[2] = tt, out[3] = dd;
  }
}

template <typename T, typename Acc>
void feature_align_grads_cpu(const T* s, const T* t, const Acc* coeffs, T* grad_s, T* grad_t, int64_t rows,
                             int64_t width) {
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < rows; ++b) {
    const T* __restrict sb = s + b * width;
    const T* __restrict tb = t + b * width;
    const Acc cross = coeffs[b * 3], self_s = coeffs[b * 3 + 1], self_t = coeffs[b * 3 + 2];
    if (grad_s != nullptr) {
      T* __restrict out = grad_s + b * width;
#pragma omp simd
      for (int64_t d = 0; d < width; ++d)
        out[d] = static_cast<T>(cross * static_cast<Acc>(tb[d]) + self_s * static_cast<Acc>(sb[d]));
    }
    if (grad_t != nullptr) {
      T* __restrict out = grad_t + b * width;
#pragma omp simd
      for (int64_t d = 0; d < width; ++d)
        out[d] = static_cast<T>(cross * static_cast<Acc>(sb[d]) + self_t * static_cast<Acc>(tb[d]));
    }
  }
}

#define CLAREP_INSTANTIATE(T, Acc)                                                          \
  template void feature_align_sums_cpu<T, Acc>(const T*, const T*, Acc*, int64_t, int64_t); \
  template void feature_align_grads_cpu<T, Acc>(const T*, const T*, const Acc*, T*, T*, int64_t, int64_t);
CLAREP_FOR_EACH_CPU_TYPE(CLAREP_INSTANTIATE)
#undef CLAREP_INSTANTIATE

}  // namespace clarep_fast
