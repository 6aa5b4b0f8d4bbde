// One whole CKA call (every layer pair, forward and backward) as one PyTorch operator with its
// autograd in C++: torch.ops.clarep_fast_C.cka_call(xs, ys, unbiased, rtol) -> (cka (P,), stats (P, 8)).
//
// Why: a training loop calls CKA on small batches (n = 8..256), where the Python around the n×n
// kernels (custom-op machinery, the Gram conditioning's many small tensor ops, an autograd.Function
// in Python) costs more than the arithmetic. Here the forward is one operator call and the backward
// one C++ autograd node, as torchvision's ops do. The Python path (clarep_fast/ops/cka.py with
// clarep_fast/ops/gram.py) computes exactly the same thing, step by step, and stays the path of the
// torch and triton backends, of torch.compile (its fake kernels) and of torch.func transforms.
//
// Forward (one call, P pairs sharing n; ops/cka.py and ops/gram.py give the math and the why):
//   1. K'_p = x'_p x'_pᵀ, x' = x - 1 x[0]ᵀ, into one (P, 2, n, n) buffer in the accumulation dtype.
//      CPU, x already in that dtype: the plain Gram first, and K' = K - k1ᵀ - 1kᵀ + k_0 11ᵀ when
//      tr C(K)/tr K >= 1/2; else the shifted copy chunk by chunk (never a whole copy of x).
//   2. Condition: scale each Gram by the power of two bringing its trace into [1, 2), and zero the
//      Gram of an input whose spread the accumulation cannot resolve (CKA 0, zero gradient).
//   3. The n×n stats kernel (clarep_fast_C::cka_stats): row sums, hkl, hkk, hll, traces, CKA.
// Backward: the n×n coefficient kernel (clarep_fast_C::cka_grads), times the scales, then one GEMM
// per input that needs a gradient: dx = G x' (or G x when the forward took K' from the plain Gram).
// Every product runs in full fp32 whatever TF32 setting the user made (restored after).
// Not taken here (the Python path runs them): fp16/bf16 inputs on CUDA (they use cuBLAS's
// low-precision GEMM with fp32 accumulation), which the Python wrapper routes away.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/call.h"
#include "../common/op.h"
#include "cka.h"

namespace clarep_fast {
namespace {

constexpr double kAlgebraicShiftMinShare = 1.0 / 2;  // ops/gram.py ALGEBRAIC_SHIFT_MIN_SHARE (it says why)
constexpr int64_t kRowBlocks = 2;                    // ops/gram.py _ROW_BLOCKS

int64_t split_min_rows(const at::Tensor& x) { return x.is_cuda() ? 512 : 128; }          // ops/gram.py _SPLIT_MIN_ROWS
int64_t chunk_elements(const at::Tensor& x) { return x.is_cuda() ? 1 << 24 : 1 << 21; }  // ops/gram.py _CHUNK_ELEMENTS

// (16 eps)² of the accumulation dtype: reference/cka.py SPREAD_RTOL.
double spread_rtol(at::ScalarType accumulate) {
  const double eps = accumulate == at::kDouble ? std::numeric_limits<double>::epsilon()
                                               : static_cast<double>(std::numeric_limits<float>::epsilon());
  return (16 * eps) * (16 * eps);
}

// Products in full fp32 inside a scope (TF32 would round the operands to 10 mantissa bits).
struct FullFp32Products {
  at::Float32MatmulPrecision saved = at::globalContext().float32MatmulPrecision();
  FullFp32Products() {
    if (saved != at::Float32MatmulPrecision::HIGHEST) at::globalContext().setFloat32MatmulPrecision("highest");
  }
  ~FullFp32Products() {
    if (saved == at::Float32MatmulPrecision::HIGH) at::globalContext().setFloat32MatmulPrecision("high");
    if (saved == at::Float32MatmulPrecision::MEDIUM) at::globalContext().setFloat32MatmulPrecision("medium");
  }
};

// out (+)= x xᵀ: for large n the upper block triangle only, mirrored (3 of 4 block products).
void syrk_into(const at::Tensor& x, at::Tensor out, bool accumulate) {
  const int64_t n = x.size(0);
  if (n < split_min_rows(x)) {
    if (accumulate) {
      out.addmm_(x, x.t());
    } else {
      at::mm_out(out, x, x.t());
    }
    return;
  }
  const int64_t block = (n + kRowBlocks - 1) / kRowBlocks;
  for (int64_t i = 0; i < n; i += block) {
    const auto xi = x.slice(0, i, i + block);
    for (int64_t j = i; j < n; j += block) {
      const auto product = at::mm(xi, x.slice(0, j, j + block).t());
      auto target = out.slice(0, i, i + block).slice(1, j, j + block);
      accumulate ? target.add_(product) : target.copy_(product);
      if (j > i) {
        auto mirror = out.slice(0, j, j + block).slice(1, i, i + block);
        accumulate ? mirror.add_(product.t()) : mirror.copy_(product.t());
      }
    }
  }
}

// Column chunks of x' = x - 1 x[0]ᵀ in `dtype`: fn(start, chunk).
template <typename Fn>
void for_shifted_chunks(const at::Tensor& x, at::ScalarType dtype, Fn&& fn) {
  const int64_t n = x.size(0), d = x.size(1);
  const int64_t chunk = std::max<int64_t>(1, chunk_elements(x) / std::max<int64_t>(n, 1));
  for (int64_t start = 0; start < d; start += chunk) {
    const auto part = x.slice(1, start, start + chunk).to(dtype);
    fn(start, part - part.select(0, 0));
  }
}

// out <- K' = x'x'ᵀ; returns whether x was shifted chunk by chunk (else K' came from the plain Gram).
bool shifted_gram_into(const at::Tensor& x, at::Tensor out) {
  // ops/gram.py: a stride-0 input shifts
  if (x.is_cpu() && x.scalar_type() == out.scalar_type() && x.stride(0) > 0 && x.stride(1) > 0) {
    syrk_into(x, out, false);
    const auto trace = out.diagonal().sum();
    const double share = ((trace - out.sum() / x.size(0)) / trace).item<double>();  // NaN: the shifted path
    if (share >= kAlgebraicShiftMinShare) {
      const auto k = out.select(1, 0).clone();
      out.sub_(k.unsqueeze(1)).sub_(k.unsqueeze(0)).add_(k[0]);
      return false;
    }
  }
  for_shifted_chunks(x, out.scalar_type(),
                     [&](int64_t start, const at::Tensor& chunk) { syrk_into(chunk, out, start > 0); });
  return true;
}

// dx = G x' (or G x), in x's dtype.
at::Tensor shifted_gram_backward(const at::Tensor& coefficients, const at::Tensor& x, bool shifted) {
  if (!shifted && x.scalar_type() == coefficients.scalar_type()) return at::mm(coefficients, x);
  auto grad = at::empty_like(x);
  for_shifted_chunks(x, coefficients.scalar_type(), [&](int64_t start, const at::Tensor& chunk) {
    grad.slice(1, start, start + chunk.size(1)).copy_(at::mm(coefficients, chunk));
  });
  return grad;
}

// Step 2: scales s (P, 2) in the Gram dtype; grams scaled by s and zeroed where unresolved, in place.
at::Tensor condition_grams(at::Tensor& grams, at::TensorList xs, at::TensorList ys) {
  const int64_t pairs = grams.size(0), n = grams.size(2);
  std::vector<at::Tensor> first;
  first.reserve(2 * pairs);
  for (int64_t p = 0; p < pairs; ++p) {
    first.push_back(xs[p].select(0, 0).to(at::kDouble).square().sum());
    first.push_back(ys[p].select(0, 0).to(at::kDouble).square().sum());
  }
  const auto first_norms = at::stack(first).view({pairs, 2});
  const auto trace = grams.diagonal(0, -2, -1).sum(-1, false, at::kDouble);  // (P, 2)
  const auto spread = trace - grams.sum({-2, -1}, false, at::kDouble) / static_cast<double>(n);
  const auto resolved =
      spread.le(spread_rtol(grams.scalar_type()) * (trace + static_cast<double>(n) * first_norms)).logical_not();
  const auto usable = trace.isfinite().logical_and(trace.gt(0));
  const auto ones = at::ones_like(trace);
  const auto exponent = at::floor(at::log2(at::where(usable, trace, ones))).neg().clamp(-126, 126);
  const auto scales = at::where(usable, at::exp2(exponent), ones).to(grams.scalar_type());
  grams.mul_((scales * resolved).unsqueeze(-1).unsqueeze(-1));
  return scales;
}

const auto& stats_op() {
  static const auto op =
      kernel_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, bool, double)>("clarep_fast_C::cka_stats");
  return op;
}

const auto& grads_op() {
  static const auto op =
      kernel_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, double)>(
          "clarep_fast_C::cka_grads");
  return op;
}

struct Forward {
  at::Tensor cka, stats, grams, rowsums, scales;
  std::vector<int64_t> shifted;  // (P, 2) flags, row-major
};

// Steps 1-2 for one input on CPU, the n×n work in plain loops (a Gram of a training batch is small:
// the dozen tensor ops of the generic path would cost more than their arithmetic). Returns the
// shift flag; writes the scale.
template <typename T>
bool gram_cpu(const at::Tensor& x, at::Tensor gram, double srtol, T* scale) {
  const int64_t n = x.size(0);
  T* k = gram.data_ptr<T>();
  bool shifted = true;
  const bool same_dtype = x.scalar_type() == c10::CppTypeToScalarType<T>::value;
  // a stride-0 input takes the dense shifted chunks (ops/gram.py)
  if (same_dtype && x.stride(0) > 0 && x.stride(1) > 0) {
    syrk_into(x, gram, false);
    double trace = 0, total = 0;
    for (int64_t i = 0; i < n; ++i) {
      trace += k[i * n + i];
      for (int64_t j = 0; j < n; ++j) total += k[i * n + j];
    }
    const double share = (trace - total / n) / trace;  // NaN: the shifted path
    if (share >= kAlgebraicShiftMinShare) {            // K' = K - k1ᵀ - 1kᵀ + k_0 11ᵀ, k = K[:, 0]
      std::vector<T> column(n);
      for (int64_t i = 0; i < n; ++i) column[i] = k[i * n];
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) k[i * n + j] = k[i * n + j] - column[i] - column[j] + column[0];
      shifted = false;
    }
  }
  if (shifted) {
    for_shifted_chunks(x, gram.scalar_type(),
                       [&](int64_t start, const at::Tensor& chunk) { syrk_into(chunk, gram, start > 0); });
  }
  // step 2: ‖x - 1 meanᵀ‖² = tr K' - 1ᵀK'1/n against (16 eps)² (tr K' + n ‖x[0]‖²), in double
  double trace = 0, total = 0, first = 0;
  for (int64_t i = 0; i < n; ++i) {
    trace += k[i * n + i];
    for (int64_t j = 0; j < n; ++j) total += k[i * n + j];
  }
  if (same_dtype && x.stride(1) == 1) {
    const T* row = x.data_ptr<T>();
    for (int64_t j = 0; j < x.size(1); ++j) first += static_cast<double>(row[j]) * row[j];
  } else {
    first = x.select(0, 0).to(at::kDouble).square().sum().item<double>();
  }
  const bool resolved = !((trace - total / n) <= srtol * (trace + n * first));
  const bool usable = std::isfinite(trace) && trace > 0;
  *scale = usable ? static_cast<T>(std::exp2(std::min(126.0, std::max(-126.0, -std::floor(std::log2(trace)))))) : T(1);
  const T factor = resolved ? *scale : T(0);
  if (factor != T(1))
    for (int64_t i = 0; i < n * n; ++i) k[i] *= factor;
  return shifted;
}

template <typename T>
void forward_cpu(at::TensorList xs, at::TensorList ys, bool unbiased, double rtol, Forward& out) {
  const int64_t pairs = out.grams.size(0), n = out.grams.size(2);
  out.scales = at::empty({pairs, 2}, out.grams.options());
  T* scales = out.scales.data_ptr<T>();
  const double srtol = spread_rtol(out.grams.scalar_type());
  for (int64_t p = 0; p < pairs; ++p) {
    out.shifted[2 * p] = gram_cpu<T>(xs[p], out.grams[p][0], srtol, scales + 2 * p);
    out.shifted[2 * p + 1] = gram_cpu<T>(ys[p], out.grams[p][1], srtol, scales + 2 * p + 1);
  }
  out.stats = at::empty({pairs, kNumStats}, out.grams.options());
  out.rowsums = at::empty({pairs, 2, n}, out.grams.options());
  cka_stats_cpu<T>(out.grams.data_ptr<T>(), out.rowsums.data_ptr<T>(), out.stats.data_ptr<T>(), pairs, n, unbiased,
                   rtol);
  out.cka = at::empty({pairs}, out.grams.options());
  for (int64_t p = 0; p < pairs; ++p) out.cka.data_ptr<T>()[p] = out.stats.data_ptr<T>()[p * kNumStats];
}

Forward forward_call(at::TensorList xs, at::TensorList ys, bool unbiased, double rtol) {
  TORCH_CHECK(!xs.empty() && xs.size() == ys.size(), "cka_call: xs and ys must be non-empty and of equal length");
  const FullFp32Products full_fp32;
  const int64_t pairs = static_cast<int64_t>(xs.size()), n = xs[0].size(0);
  bool wide = false;
  for (const auto& t : xs) wide |= t.scalar_type() == at::kDouble;
  for (const auto& t : ys) wide |= t.scalar_type() == at::kDouble;
  Forward out;
  out.grams = at::empty({pairs, 2, n, n}, xs[0].options().dtype(wide ? at::kDouble : at::kFloat));
  out.shifted.resize(2 * pairs);
  if (out.grams.is_cpu()) {
    AT_DISPATCH_FLOATING_TYPES(out.grams.scalar_type(), "cka_call",
                               [&] { forward_cpu<scalar_t>(xs, ys, unbiased, rtol, out); });
    return out;
  }
  for (int64_t p = 0; p < pairs; ++p) {  // CUDA: tensor ops on the device, no host sync
    out.shifted[2 * p] = shifted_gram_into(xs[p], out.grams[p][0]);
    out.shifted[2 * p + 1] = shifted_gram_into(ys[p], out.grams[p][1]);
  }
  out.scales = condition_grams(out.grams, xs, ys);
  std::tie(out.stats, out.rowsums) = stats_op().call(out.grams, unbiased, rtol);
  out.cka = out.stats.select(1, 0).clone();
  return out;
}

// Backward n×n work: coefficients (P, 2, n, n) = 2g dCKA/dK' times the scales.
at::Tensor coefficients_of(const at::Tensor& grams, const at::Tensor& rowsums, const at::Tensor& stats,
                           const at::Tensor& scales, const at::Tensor& grad, bool unbiased, double rtol) {
  if (!grams.is_cpu()) {
    auto coefficients = grads_op().call(grams, rowsums, stats, grad, unbiased, rtol);
    // the Grams were scaled by s: dCKA/dK = s · dCKA/d(sK)
    return coefficients.mul_(scales.unsqueeze(-1).unsqueeze(-1));
  }
  auto coefficients = at::empty_like(grams);
  const int64_t pairs = grams.size(0), n = grams.size(2);
  AT_DISPATCH_FLOATING_TYPES(grams.scalar_type(), "cka_call_backward", [&] {
    cka_grads_cpu<scalar_t>(grams.data_ptr<scalar_t>(), rowsums.data_ptr<scalar_t>(), stats.data_ptr<scalar_t>(),
                            grad.data_ptr<scalar_t>(), coefficients.data_ptr<scalar_t>(), pairs, n, unbiased, rtol);
    scalar_t* c = coefficients.data_ptr<scalar_t>();
    const scalar_t* s = scales.data_ptr<scalar_t>();
    for (int64_t g = 0; g < 2 * pairs; ++g)
      if (s[g] != scalar_t(1))
        for (int64_t i = 0; i < n * n; ++i) c[g * n * n + i] *= s[g];
  });
  return coefficients;
}

class CkaCall : public torch::autograd::Function<CkaCall> {
 public:
  // inputs: the P flattened xs, then the P flattened ys
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, int64_t pairs, bool unbiased, double rtol) {
    auto result = forward_call(inputs.slice(0, pairs), inputs.slice(pairs), unbiased, rtol);
    std::vector<at::Tensor> saved = {result.grams, result.rowsums, result.stats, result.scales};
    saved.insert(saved.end(), inputs.begin(), inputs.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["pairs"] = pairs;
    ctx->saved_data["unbiased"] = unbiased;
    ctx->saved_data["rtol"] = rtol;
    ctx->saved_data["shifted"] = result.shifted;
    ctx->mark_non_differentiable({result.stats});
    return {result.cka, result.stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // once differentiable: nothing below is recorded, so a second derivative (create_graph=True) raises
    // instead of silently missing the terms through the saved statistics
    const at::NoGradGuard once_differentiable;
    const FullFp32Products full_fp32;
    const auto saved = ctx->get_saved_variables();
    const int64_t pairs = ctx->saved_data["pairs"].toInt();
    const auto shifted = ctx->saved_data["shifted"].toIntVector();
    const auto &grams = saved[0], &rowsums = saved[1], &stats = saved[2], &scales = saved[3];
    auto grad = grad_outputs[0].defined() ? grad_outputs[0] : at::zeros({pairs}, stats.options());
    const auto coefficients = coefficients_of(grams, rowsums, stats, scales, grad.to(grams.scalar_type()).contiguous(),
                                              ctx->saved_data["unbiased"].toBool(), ctx->saved_data["rtol"].toDouble());
    variable_list grads(2 * pairs + 3);  // one per input tensor, then pairs, unbiased, rtol
    for (int64_t i = 0; i < 2 * pairs; ++i) {
      if (!ctx->needs_input_grad(i)) continue;
      const int64_t pair = i % pairs, side = i / pairs;
      grads[i] = shifted_gram_backward(coefficients[pair][side], saved[4 + i], shifted[2 * pair + side] != 0);
    }
    return grads;
  }
};

std::vector<at::Tensor> flattened(at::TensorList tensors) {
  std::vector<at::Tensor> flat;
  flat.reserve(tensors.size());
  for (const auto& t : tensors) flat.push_back(t.reshape({t.size(0), -1}));
  return flat;
}

// Autograd key: flatten (differentiable views), then one C++ autograd node for the whole call.
std::tuple<at::Tensor, at::Tensor> cka_call_autograd(at::TensorList xs, at::TensorList ys, bool unbiased, double rtol) {
  auto inputs = flattened(xs);
  const auto flat_ys = flattened(ys);
  inputs.insert(inputs.end(), flat_ys.begin(), flat_ys.end());
  const auto outputs = CkaCall::apply(at::TensorList(inputs), static_cast<int64_t>(xs.size()), unbiased, rtol);
  return {outputs[0], outputs[1]};
}

// Below autograd (inference mode): the forward alone.
std::tuple<at::Tensor, at::Tensor> cka_call_plain(at::TensorList xs, at::TensorList ys, bool unbiased, double rtol) {
  const auto result = forward_call(flattened(xs), flattened(ys), unbiased, rtol);
  return {result.cka, result.stats};
}

}  // namespace
}  // namespace clarep_fast

TORCH_LIBRARY_FRAGMENT(clarep_fast_C, m) {
  m.def("cka_call(Tensor[] xs, Tensor[] ys, bool unbiased, float rtol) -> (Tensor cka, Tensor stats)");
}

TORCH_LIBRARY_IMPL(clarep_fast_C, Autograd, m) { m.impl("cka_call", &clarep_fast::cka_call_autograd); }

TORCH_LIBRARY_IMPL(clarep_fast_C, CPU, m) { m.impl("cka_call", &clarep_fast::cka_call_plain); }

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(clarep_fast_C, CUDA, m) { m.impl("cka_call", &clarep_fast::cka_call_plain); }
#endif
