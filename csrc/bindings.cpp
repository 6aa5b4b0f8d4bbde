// Torch-facing entry points of clarep_fast._C: argument checks, allocation, dispatch to the raw-pointer
// kernels in cpu/ and cuda/. The only file that includes torch headers.
#include <torch/extension.h>

#include "cka.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace clarep_fast {
namespace {

void check_grams(const torch::Tensor& grams) {
  TORCH_CHECK(grams.dim() == 4 && grams.size(1) == 2 && grams.size(2) == grams.size(3),
              "grams must have shape (P, 2, n, n), got ", grams.sizes());
  TORCH_CHECK(grams.is_contiguous(), "grams must be contiguous");
  TORCH_CHECK(grams.scalar_type() == torch::kFloat32 || grams.scalar_type() == torch::kFloat64,
              "grams must be float32 or float64, got ", grams.scalar_type());
}

void check_like(const torch::Tensor& t, const torch::Tensor& grams, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == grams.scalar_type(), name, " must have dtype ", grams.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == grams.device(), name, " must be on ", grams.device(), ", got ", t.device());
}

#ifdef WITH_CUDA
void check_launch(int status, const char* what) {
  TORCH_CHECK(status == 0, what, " failed to launch: ", cudaGetErrorString(static_cast<cudaError_t>(status)));
}
#endif

std::tuple<torch::Tensor, torch::Tensor> cka_stats(const torch::Tensor& grams, bool unbiased, double rtol) {
  check_grams(grams);
  const int64_t pairs = grams.size(0), n = grams.size(2);
  auto stats = torch::empty({pairs, kNumStats}, grams.options());
  auto rowsums = torch::empty({pairs, 2, n}, grams.options());
  AT_DISPATCH_FLOATING_TYPES(grams.scalar_type(), "cka_stats", [&] {
    if (grams.is_cuda()) {
#ifdef WITH_CUDA
      const c10::cuda::CUDAGuard guard(grams.device());
      auto partials = torch::empty({pairs, cka_stats_cuda_blocks(n), 5}, grams.options().dtype(torch::kFloat64));
      auto counters = torch::zeros({pairs}, grams.options().dtype(torch::kInt32));
      check_launch(cka_stats_cuda<scalar_t>(grams.data_ptr<scalar_t>(), rowsums.data_ptr<scalar_t>(),
                                            stats.data_ptr<scalar_t>(), partials.data_ptr<double>(),
                                            reinterpret_cast<unsigned int*>(counters.data_ptr<int32_t>()), pairs, n,
                                            unbiased, rtol, c10::cuda::getCurrentCUDAStream().stream()),
                   "cka_stats_cuda");
#else
      TORCH_CHECK(false, "clarep_fast._C was built without CUDA");
#endif
    } else {
      cka_stats_cpu<scalar_t>(grams.data_ptr<scalar_t>(), rowsums.data_ptr<scalar_t>(), stats.data_ptr<scalar_t>(),
                              pairs, n, unbiased, rtol);
    }
  });
  return {stats, rowsums};
}

torch::Tensor cka_grads(const torch::Tensor& grams, const torch::Tensor& rowsums, const torch::Tensor& stats,
                        const torch::Tensor& grad, bool unbiased, double rtol) {
  check_grams(grams);
  const int64_t pairs = grams.size(0), n = grams.size(2);
  check_like(rowsums, grams, "rowsums", {pairs, 2, n});
  check_like(stats, grams, "stats", {pairs, kNumStats});
  check_like(grad, grams, "grad", {pairs});
  auto coeffs = torch::empty_like(grams);
  AT_DISPATCH_FLOATING_TYPES(grams.scalar_type(), "cka_grads", [&] {
    if (grams.is_cuda()) {
#ifdef WITH_CUDA
      const c10::cuda::CUDAGuard guard(grams.device());
      check_launch(cka_grads_cuda<scalar_t>(grams.data_ptr<scalar_t>(), rowsums.data_ptr<scalar_t>(),
                                            stats.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                                            coeffs.data_ptr<scalar_t>(), pairs, n, unbiased, rtol,
                                            c10::cuda::getCurrentCUDAStream().stream()),
                   "cka_grads_cuda");
#else
      TORCH_CHECK(false, "clarep_fast._C was built without CUDA");
#endif
    } else {
      cka_grads_cpu<scalar_t>(grams.data_ptr<scalar_t>(), rowsums.data_ptr<scalar_t>(), stats.data_ptr<scalar_t>(),
                              grad.data_ptr<scalar_t>(), coeffs.data_ptr<scalar_t>(), pairs, n, unbiased, rtol);
    }
  });
  return coeffs;
}

bool built_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace clarep_fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "clarep_fast compiled kernels (C++/OpenMP CPU, CUDA when built with it)";
  m.def("cka_stats", &clarep_fast::cka_stats, "CKA n×n forward kernel: (grams, unbiased, rtol) -> (stats, rowsums)",
        py::arg("grams"), py::arg("unbiased"), py::arg("rtol"));
  m.def("cka_grads", &clarep_fast::cka_grads,
        "CKA n×n backward kernel: (grams, rowsums, stats, grad, unbiased, rtol) -> coefficients", py::arg("grams"),
        py::arg("rowsums"), py::arg("stats"), py::arg("grad"), py::arg("unbiased"), py::arg("rtol"));
  m.def("built_with_cuda", &clarep_fast::built_with_cuda, "True when the CUDA kernels were compiled in");
}
