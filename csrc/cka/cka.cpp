// CKA's n×n kernels as PyTorch operators (torch.ops.clarep_fast_C.cka_stats / cka_grads): schema,
// argument checks, allocation, and the CPU and CUDA registrations. Math and layout: cka.h.
#include "../common/op.h"
#include "cka.h"

namespace clarep_fast {
namespace {

void check_grams(const at::Tensor& grams) {
  TORCH_CHECK(grams.dim() == 4 && grams.size(1) == 2 && grams.size(2) == grams.size(3),
              "grams must have shape (P, 2, n, n), got ", grams.sizes());
  TORCH_CHECK(grams.is_contiguous(), "grams must be contiguous");
  TORCH_CHECK(grams.scalar_type() == at::kFloat || grams.scalar_type() == at::kDouble,
              "grams must be float32 or float64, got ", grams.scalar_type());
}

void check_like(const at::Tensor& t, const at::Tensor& grams, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == grams.scalar_type(), name, " must have dtype ", grams.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == grams.device(), name, " must be on ", grams.device(), ", got ", t.device());
}

void check_grads_inputs(const at::Tensor& grams, const at::Tensor& rowsums, const at::Tensor& stats,
                        const at::Tensor& grad) {
  check_grams(grams);
  const int64_t pairs = grams.size(0), n = grams.size(2);
  check_like(rowsums, grams, "rowsums", {pairs, 2, n});
  check_like(stats, grams, "stats", {pairs, kNumStats});
  check_like(grad, grams, "grad", {pairs});
}

std::tuple<at::Tensor, at::Tensor> cka_stats_cpu_op(const at::Tensor& grams, bool unbiased, double rtol) {
  check_grams(grams);
  const int64_t pairs = grams.size(0), n = grams.size(2);
  auto stats = at::empty({pairs, kNumStats}, grams.options());
  auto rowsums = at::empty({pairs, 2, n}, grams.options());
  AT_DISPATCH_FLOATING_TYPES(grams.scalar_type(), "cka_stats", [&] {
    cka_stats_cpu<scalar_t>(grams.data_ptr<scalar_t>(), rowsums.data_ptr<scalar_t>(), stats.data_ptr<scalar_t>(), pairs,
                            n, unbiased, rtol);
  });
  return {stats, rowsums};
}

at::Tensor cka_grads_cpu_op(const at::Tensor& grams, const at::Tensor& rowsums, const at::Tensor& stats,
                            const at::Tensor& grad, bool unbiased, double rtol) {
  check_grads_inputs(grams, rowsums, stats, grad);
  auto coeffs = at::empty_like(grams);
  AT_DISPATCH_FLOATING_TYPES(grams.scalar_type(), "cka_grads", [&] {
    cka_grads_cpu<scalar_t>(grams.data_ptr<scalar_t>(), rowsums.data_ptr<scalar_t>(), stats.data_ptr<scalar_t>(),
                            grad.data_ptr<scalar_t>(), coeffs.data_ptr<scalar_t>(), grams.size(0), grams.size(2),
                            unbiased, rtol);
  });
  return coeffs;
}

#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor> cka_stats_cuda_op(const at::Tensor& grams, bool unbiased, double rtol) {
  check_grams(grams);
  const c10::cuda::CUDAGuard guard(grams.device());
  const int64_t pairs = grams.size(0), n = grams.size(2);
  auto stats = at::empty({pairs, kNumStats}, grams.options());
  auto rowsums = at::empty({pairs, 2, n}, grams.options());
  auto partials = at::empty({pairs, cka_stats_cuda_blocks(n), kNumPartials}, grams.options().dtype(at::kDouble));
  auto counters = at::zeros({pairs}, grams.options().dtype(at::kInt));
  check_launch(cka_stats_cuda(grams.data_ptr(), rowsums.data_ptr(), stats.data_ptr(), partials.data_ptr<double>(),
                              reinterpret_cast<unsigned int*>(counters.data_ptr<int32_t>()),
                              dtype_code(grams.scalar_type()), pairs, n, unbiased, rtol, current_stream(grams)),
               "cka_stats_cuda");
  return {stats, rowsums};
}

at::Tensor cka_grads_cuda_op(const at::Tensor& grams, const at::Tensor& rowsums, const at::Tensor& stats,
                             const at::Tensor& grad, bool unbiased, double rtol) {
  check_grads_inputs(grams, rowsums, stats, grad);
  const c10::cuda::CUDAGuard guard(grams.device());
  auto coeffs = at::empty_like(grams);
  check_launch(cka_grads_cuda(grams.data_ptr(), rowsums.data_ptr(), stats.data_ptr(), grad.data_ptr(),
                              coeffs.data_ptr(), dtype_code(grams.scalar_type()), grams.size(0), grams.size(2),
                              unbiased, rtol, current_stream(grams)),
               "cka_grads_cuda");
  return coeffs;
}
#endif

}  // namespace
}  // namespace clarep_fast

TORCH_LIBRARY_FRAGMENT(clarep_fast_C, m) {
  m.def("cka_stats(Tensor grams, bool unbiased, float rtol) -> (Tensor stats, Tensor rowsums)");
  m.def("cka_grads(Tensor grams, Tensor rowsums, Tensor stats, Tensor grad, bool unbiased, float rtol) -> Tensor");
}

TORCH_LIBRARY_IMPL(clarep_fast_C, CPU, m) {
  m.impl("cka_stats", &clarep_fast::cka_stats_cpu_op);
  m.impl("cka_grads", &clarep_fast::cka_grads_cpu_op);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(clarep_fast_C, CUDA, m) {
  m.impl("cka_stats", &clarep_fast::cka_stats_cuda_op);
  m.impl("cka_grads", &clarep_fast::cka_grads_cuda_op);
}
#endif
