// The Python module clarep_fast._C. Importing it runs the static registrations of every op in
// csrc/<op>/<op>.cpp (torch.ops.clarep_fast_C.*); the module itself only says how it was built.
#include <pybind11/pybind11.h>

namespace {
bool built_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "clarep_fast compiled kernels (C++/OpenMP CPU, CUDA when built with it), registered as torch.ops.clarep_fast_C";
  m.def("built_with_cuda", &built_with_cuda, "True when the CUDA kernels were compiled in");
}
