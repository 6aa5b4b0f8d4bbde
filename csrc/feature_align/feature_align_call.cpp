// One whole feature_align call (every layer pair, the loss, forward and backward) as one PyTorch
// operator with its autograd in C++: torch.ops.clarep_fast_C.feature_align_call(students, teachers,
// cosine, mean) -> (loss (0-dim if mean, else (B,)), stats (P, B, 4)). csrc/common/call.h says why;
// the Python path (clarep_fast/ops/feature_align.py) computes the same for the torch and triton
// backends, torch.compile and torch.func transforms.
//
// Forward: per pair one kernel writes the row statistics [st, ss, tt, dd] (clarep_fast_C::
// feature_align_sums), then per sample and pair, with a = max(ss, eps²), c = max(tt, eps²),
//     cosine: f = 1 - st / (sqrt(a) sqrt(c))        mse: f = dd / D_l
// and the loss is the mean of f over pairs (and over samples for mean).
// Backward: with w = the upstream gradient / P (/ B for mean) per sample,
//     cosine: df/dst = -1/r, df/dss = st/(2 a r) [ss >= eps²], df/dtt = st/(2 c r) [tt >= eps²], r = sqrt(a) sqrt(c)
//     mse:    df/ddd = 1/D_l
// then coefficients [A, Bs, Ct] = [g_st - 2 g_dd, 2 (g_ss + g_dd), 2 (g_tt + g_dd)] and one kernel
// per pair writes ds = A t + Bs s and dt = A s + Ct t (clarep_fast_C::feature_align_grads).
#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/call.h"
#include "../common/op.h"

namespace clarep_fast {
namespace {

constexpr double kAlignEps = 1e-8;  // clarep_fast/reference/feature_align.py ALIGN_EPS

const auto& stats_op() {
  static const auto op =
      kernel_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("clarep_fast_C::feature_align_sums");
  return op;
}

const auto& grads_op() {
  static const auto op = kernel_op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, bool)>("clarep_fast_C::feature_align_grads");
  return op;
}

// (P, B) per-pair losses from the (P, B, 4) statistics.
at::Tensor per_pair_loss(const at::Tensor& stats, at::TensorList students, bool cosine) {
  const auto st = stats.select(2, 0), ss = stats.select(2, 1), tt = stats.select(2, 2), dd = stats.select(2, 3);
  if (cosine) {
    const double floor = kAlignEps * kAlignEps;
    return 1 - st / (ss.clamp_min(floor).sqrt() * tt.clamp_min(floor).sqrt());
  }
  std::vector<double> inverse_widths;
  for (const auto& s : students) inverse_widths.push_back(1.0 / static_cast<double>(s.size(1)));
  // Python scalars on the host: multiplied pair by pair, no host-to-device copy
  std::vector<at::Tensor> rows;
  for (size_t p = 0; p < students.size(); ++p) rows.push_back(dd[p] * inverse_widths[p]);
  return at::stack(rows);
}

// The loss from the statistics on CPU, in plain loops (a training batch's (P, B, 4) statistics are
// a few hundred numbers: the dozen tensor ops of the generic form cost more than their arithmetic).
template <typename Acc>
at::Tensor loss_cpu(const at::Tensor& stats, at::TensorList students, bool cosine, bool mean) {
  const int64_t pairs = stats.size(0), batch = stats.size(1);
  const Acc* r = stats.data_ptr<Acc>();
  const Acc floor = static_cast<Acc>(kAlignEps * kAlignEps);
  auto per_sample = at::empty({batch}, stats.options());
  Acc* out = per_sample.data_ptr<Acc>();
  for (int64_t b = 0; b < batch; ++b) {
    Acc total = 0;
    for (int64_t p = 0; p < pairs; ++p) {
      const Acc* row = r + (p * batch + b) * 4;
      total += cosine ? 1 - row[0] / (std::sqrt(std::max(row[1], floor)) * std::sqrt(std::max(row[2], floor)))
                      : row[3] / static_cast<Acc>(students[p].size(1));
    }
    out[b] = total / static_cast<Acc>(pairs);
  }
  return mean ? per_sample.mean() : per_sample;
}

std::tuple<at::Tensor, at::Tensor> forward_call(at::TensorList students, at::TensorList teachers, bool cosine,
                                                bool mean) {
  std::vector<at::Tensor> stats;
  for (size_t p = 0; p < students.size(); ++p)
    stats.push_back(stats_op().call(students[p].contiguous(), teachers[p].contiguous()));
  auto all = at::stack(stats);  // (P, B, 4)
  if (all.is_cpu()) {
    at::Tensor loss;
    AT_DISPATCH_FLOATING_TYPES(all.scalar_type(), "feature_align_call",
                               [&] { loss = loss_cpu<scalar_t>(all, students, cosine, mean); });
    return {loss, all};
  }
  auto loss = per_pair_loss(all, students, cosine).mean(0);
  return {mean ? loss.mean() : loss, all};
}

// Backward coefficients [A, Bs, Ct] (P, B, 3) on CPU, in plain loops (the chain rule of the header).
template <typename Acc>
at::Tensor coefficients_cpu(const at::Tensor& stats, const at::Tensor& grad, const std::vector<int64_t>& widths,
                            bool cosine, bool mean) {
  const int64_t pairs = stats.size(0), batch = stats.size(1);
  const Acc* r = stats.data_ptr<Acc>();
  const auto g = grad.contiguous();
  const Acc* upstream = g.data_ptr<Acc>();
  const Acc floor = static_cast<Acc>(kAlignEps * kAlignEps);
  auto coeffs = at::empty({pairs, batch, 3}, stats.options());
  Acc* c = coeffs.data_ptr<Acc>();
  for (int64_t p = 0; p < pairs; ++p) {
    for (int64_t b = 0; b < batch; ++b) {
      const Acc w = (mean ? upstream[0] / static_cast<Acc>(batch) : upstream[b]) / static_cast<Acc>(pairs);
      const Acc* row = r + (p * batch + b) * 4;
      Acc g_st = 0, g_ss = 0, g_tt = 0, g_dd = 0;
      if (cosine) {
        const Acc a = std::max(row[1], floor), cc = std::max(row[2], floor), norm = std::sqrt(a) * std::sqrt(cc);
        g_st = -w / norm;
        g_ss = row[1] >= floor ? w * row[0] / (2 * a * norm) : Acc(0);
        g_tt = row[2] >= floor ? w * row[0] / (2 * cc * norm) : Acc(0);
      } else {
        g_dd = w / static_cast<Acc>(widths[p]);
      }
      Acc* out = c + (p * batch + b) * 3;
      out[0] = g_st - 2 * g_dd;
      out[1] = 2 * (g_ss + g_dd);
      out[2] = 2 * (g_tt + g_dd);
    }
  }
  return coeffs;
}

class FeatureAlignCall : public torch::autograd::Function<FeatureAlignCall> {
 public:
  // inputs: the P students, then the P teachers, each (B, D_l)
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, int64_t pairs, bool cosine, bool mean) {
    auto [loss, stats] = forward_call(inputs.slice(0, pairs), inputs.slice(pairs), cosine, mean);
    std::vector<at::Tensor> saved = {stats};
    saved.insert(saved.end(), inputs.begin(), inputs.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["pairs"] = pairs;
    ctx->saved_data["cosine"] = cosine;
    ctx->saved_data["mean"] = mean;
    ctx->mark_non_differentiable({stats});
    return {loss, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // once differentiable: nothing below is recorded, so a second derivative (create_graph=True) raises
    // instead of silently missing the terms through the saved statistics
    const at::NoGradGuard once_differentiable;
    const auto saved = ctx->get_saved_variables();
    const auto& stats = saved[0];
    const int64_t pairs = ctx->saved_data["pairs"].toInt(), batch = stats.size(1);
    const bool cosine = ctx->saved_data["cosine"].toBool(), mean = ctx->saved_data["mean"].toBool();
    variable_list grads(2 * pairs + 3);  // one per input tensor, then pairs, cosine, mean
    if (!grad_outputs[0].defined()) return grads;
    if (stats.is_cpu()) {
      std::vector<int64_t> widths;
      for (int64_t p = 0; p < pairs; ++p) widths.push_back(saved[1 + p].size(1));
      at::Tensor coeffs;
      const auto grad = grad_outputs[0].to(stats.scalar_type());
      AT_DISPATCH_FLOATING_TYPES(stats.scalar_type(), "feature_align_call_backward",
                                 [&] { coeffs = coefficients_cpu<scalar_t>(stats, grad, widths, cosine, mean); });
      return input_grads(ctx, saved, coeffs, pairs, std::move(grads));
    }
    // w (1, B): dLoss/df_pb for every pair
    auto weight = grad_outputs[0].to(stats.scalar_type()) / static_cast<double>(pairs);
    weight = mean ? (weight / static_cast<double>(batch)).expand({1, batch}) : weight.unsqueeze(0);
    const auto st = stats.select(2, 0), ss = stats.select(2, 1), tt = stats.select(2, 2);
    at::Tensor grad_stats = at::zeros_like(stats);  // (P, B, 4)
    if (cosine) {
      const double floor = kAlignEps * kAlignEps;
      const auto a = ss.clamp_min(floor), c = tt.clamp_min(floor);
      const auto r = a.sqrt() * c.sqrt();
      grad_stats.select(2, 0).copy_(-weight / r);
      grad_stats.select(2, 1).copy_(weight * st / (2 * a * r) * ss.ge(floor));
      grad_stats.select(2, 2).copy_(weight * st / (2 * c * r) * tt.ge(floor));
    } else {
      for (int64_t p = 0; p < pairs; ++p)
        grad_stats[p].select(1, 3).copy_(weight[0] / static_cast<double>(saved[1 + p].size(1)));
    }
    const auto g_st = grad_stats.select(2, 0), g_ss = grad_stats.select(2, 1), g_tt = grad_stats.select(2, 2),
               g_dd = grad_stats.select(2, 3);
    // (P, B, 3)
    const auto coeffs = at::stack({g_st - 2 * g_dd, 2 * (g_ss + g_dd), 2 * (g_tt + g_dd)}, -1).contiguous();
    return input_grads(ctx, saved, coeffs, pairs, std::move(grads));
  }

  // ds = A t + Bs s, dt = A s + Ct t: one kernel per pair with a side that needs a gradient
  static variable_list input_grads(AutogradContext* ctx, const variable_list& saved, const at::Tensor& coeffs,
                                   int64_t pairs, variable_list grads) {
    for (int64_t p = 0; p < pairs; ++p) {
      const bool need_s = ctx->needs_input_grad(p), need_t = ctx->needs_input_grad(pairs + p);
      if (!need_s && !need_t) continue;
      auto [grad_s, grad_t] =
          grads_op().call(saved[1 + p].contiguous(), saved[1 + pairs + p].contiguous(), coeffs[p], need_s, need_t);
      if (need_s) grads[p] = grad_s;
      if (need_t) grads[pairs + p] = grad_t;
    }
    return grads;
  }
};

std::vector<at::Tensor> flattened(at::TensorList tensors) {
  std::vector<at::Tensor> flat;
  for (const auto& t : tensors) flat.push_back(t.reshape({t.size(0), -1}));
  return flat;
}

std::tuple<at::Tensor, at::Tensor> feature_align_call_autograd(at::TensorList students, at::TensorList teachers,
                                                               bool cosine, bool mean) {
  auto inputs = flattened(students);
  const auto flat_teachers = flattened(teachers);
  inputs.insert(inputs.end(), flat_teachers.begin(), flat_teachers.end());
  const auto outputs =
      FeatureAlignCall::apply(at::TensorList(inputs), static_cast<int64_t>(students.size()), cosine, mean);
  return {outputs[0], outputs[1]};
}

std::tuple<at::Tensor, at::Tensor> feature_align_call_plain(at::TensorList students, at::TensorList teachers,
                                                            bool cosine, bool mean) {
  return forward_call(flattened(students), flattened(teachers), cosine, mean);
}

}  // namespace
}  // namespace clarep_fast

TORCH_LIBRARY_FRAGMENT(clarep_fast_C, m) {
  m.def(
      "feature_align_call(Tensor[] students, Tensor[] teachers, bool cosine, bool mean) -> (Tensor loss, Tensor "
      "stats)");
}

TORCH_LIBRARY_IMPL(clarep_fast_C, Autograd, m) {
  m.impl("feature_align_call", &clarep_fast::feature_align_call_autograd);
}

TORCH_LIBRARY_IMPL(clarep_fast_C, CPU, m) { m.impl("feature_align_call", &clarep_fast::feature_align_call_plain); }

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(clarep_fast_C, CUDA, m) { m.impl("feature_align_call", &clarep_fast::feature_align_call_plain); }
#endif
