// Fused multi-layer feature pooling on CPU (OpenMP over (b, c) planes). Math: csrc/feature_pool/feature_pool.h.
#include "feature_pool.h"

#include "../common/cpu_types.h"

#include <algorithm>
#include <vector>

namespace clarep_fast {

template <typename T, typename Acc>
void feature_pool_pack_cpu(const T* map, Acc* out, const PoolGeometry& g) {
  const int64_t s = g.size;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < g.batch; ++b) {
    for (int64_t c = 0; c < g.channels; ++c) {
      const T* plane = map + b * g.stride_b + c * g.stride_c;
      Acc* cells = out + b * g.out_row + g.offset + c * s * s;
      if (g.stride_w == 1 && g.height % s == 0 && g.width % s == 0) {  // tiled windows, contiguous rows: row runs
        const int64_t rows = g.height / s, cols = g.width / s;
        for (int64_t k = 0; k < s * s; ++k) cells[k] = 0;
        for (int64_t h = 0; h < g.height; ++h) {
          const T* row = plane + h * g.stride_h;
          Acc* cell_row = cells + (h / rows) * s;
          for (int64_t j = 0; j < s; ++j) {
            Acc sum = 0;
            for (int64_t w = 0; w < cols; ++w) sum += static_cast<Acc>(row[j * cols + w]);
            cell_row[j] += sum;
          }
        }
        const Acc area = static_cast<Acc>(rows * cols);
        for (int64_t k = 0; k < s * s; ++k) cells[k] /= area;
        continue;
      }
      for (int64_t i = 0; i < s; ++i) {
        const int64_t h0 = window_start(i, g.height, s), h1 = window_end(i, g.height, s);
        for (int64_t j = 0; j < s; ++j) {
          const int64_t w0 = window_start(j, g.width, s), w1 = window_end(j, g.width, s);
          Acc sum = 0;
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) sum += static_cast<Acc>(plane[h * g.stride_h + w * g.stride_w]);
          cells[i * s + j] = sum / static_cast<Acc>((h1 - h0) * (w1 - w0));
        }
      }
    }
  }
}

template <typename T, typename Acc>
void feature_pool_spread_cpu(const Acc* grad, T* grad_map, const PoolGeometry& g) {
  const int64_t s = g.size, H = g.height, W = g.width;
  // The cells whose windows hold row h (column w) are i in [first, last]; the same for every
  // plane, so found once here instead of by integer divisions per element.
  std::vector<int64_t> row_first(H), row_last(H), col_first(W), col_last(W);
  for (int64_t h = 0; h < H; ++h) {
    row_first[h] = (h * s) / H;
    row_last[h] = std::min(s - 1, ((h + 1) * s + H - 1) / H - 1);
  }
  for (int64_t w = 0; w < W; ++w) {
    col_first[w] = (w * s) / W;
    col_last[w] = std::min(s - 1, ((w + 1) * s + W - 1) / W - 1);
  }
  std::vector<Acc> inverse_area(s * s);  // 1 / |window| of every cell
  for (int64_t i = 0; i < s; ++i)
    for (int64_t j = 0; j < s; ++j)
      inverse_area[i * s + j] = Acc(1) / static_cast<Acc>((window_end(i, H, s) - window_start(i, H, s)) *
                                                          (window_end(j, W, s) - window_start(j, W, s)));
#pragma omp parallel
  {
    std::vector<Acc> share(s * s);  // this plane's grad / |window|, per cell
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < g.batch; ++b) {
      for (int64_t c = 0; c < g.channels; ++c) {
        const Acc* cells = grad + b * g.out_row + g.offset + c * s * s;
        for (int64_t k = 0; k < s * s; ++k) share[k] = cells[k] * inverse_area[k];
        T* plane = grad_map + (b * g.channels + c) * H * W;
        if (H % s == 0 && W % s == 0) {  // windows tile the map: every element lies in one cell
          const int64_t rows = H / s, cols = W / s;
          for (int64_t h = 0; h < H; ++h) {
            const Acc* cell_row = share.data() + (h / rows) * s;
            T* out = plane + h * W;
            for (int64_t j = 0; j < s; ++j) {
              const T value = static_cast<T>(cell_row[j]);
              for (int64_t w = 0; w < cols; ++w) out[j * cols + w] = value;
            }
          }
          continue;
        }
        for (int64_t h = 0; h < H; ++h) {
          const int64_t i0 = row_first[h], i1 = row_last[h];
          for (int64_t w = 0; w < W; ++w) {
            Acc sum = 0;
            for (int64_t i = i0; i <= i1; ++i)
              for (int64_t j = col_first[w]; j <= col_last[w]; ++j) sum += share[i * s + j];
            plane[h * W + w] = static_cast<T>(sum);
          }
        }
      }
    }
  }
}

#define CLAREP_INSTANTIATE(T, Acc)                                                  \
  template void feature_pool_pack_cpu<T, Acc>(const T*, Acc*, const PoolGeometry&); \
  template void feature_pool_spread_cpu<T, Acc>(const Acc*, T*, const PoolGeometry&);
CLAREP_FOR_EACH_CPU_TYPE(CLAREP_INSTANTIATE)
#undef CLAREP_INSTANTIATE

}  // namespace clarep_fast
