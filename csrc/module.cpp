// The Python module clarep_fast._C. Importing it runs the static registrations of every op in
// csrc/<op>/<op>.cpp (torch.ops.clarep_fast_C.*); the module itself says how it was built and
// holds one host-side helper of the NaN/Inf rule (clarep_fast/finite.py).
#include <torch/extension.h>

#include <cmath>

namespace {
bool built_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

// Whether every entry of a CPU tensor is finite: a plain loop over the few statistics an op checks
// (norms, traces, HSIC terms, a small packed output), called from Python through pybind, with none
// of a torch op's dispatch (torch.isfinite + a reduction + a host read cost ~7 µs a call, this ~1).
bool all_finite(const at::Tensor& values) {
  TORCH_CHECK(values.device().is_cpu(), "all_finite: values must be a CPU tensor, got ", values.device());
  const at::Tensor dense = values.contiguous();
  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dense.scalar_type(), "all_finite", [&] {
    const scalar_t* data = dense.const_data_ptr<scalar_t>();
    const int64_t count = dense.numel();
    for (int64_t i = 0; i < count && finite; ++i) finite = std::isfinite(static_cast<double>(data[i]));
  });
  return finite;
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() =
      "clarep_fast compiled kernels (C++/OpenMP CPU, CUDA when built with it), registered as torch.ops.clarep_fast_C";
  m.def("built_with_cuda", &built_with_cuda, "True when the CUDA kernels were compiled in");
  m.def("all_finite", &all_finite, "Whether every entry of a CPU floating tensor is finite", pybind11::arg("values"));
}
