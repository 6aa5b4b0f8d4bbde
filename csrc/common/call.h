// What the whole-call operators (csrc/<op>/<op>_call.cpp) share: a typed handle on a kernel
// operator registered by another file, found once. A whole-call operator is one PyTorch operator
// per user call with its autograd in C++ (a torch::autograd::Function under the Autograd key):
// on small training-loop batches the Python around the kernels costs more than the arithmetic.
#pragma once
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

namespace clarep_fast {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// torch.ops.clarep_fast_C.<name> as a C++ callable of signature Signature; callers keep it in a
// function-local static, so the lookup happens once per kernel.
template <typename Signature>
c10::TypedOperatorHandle<Signature> kernel_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace clarep_fast
