#include "framework/ops/nn_core.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "framework/ops/creation.h"
#include "framework/ops/elementwise.h"
#include "framework/ops/linalg.h"
#include "framework/ops/op_utils.h"
#include "framework/ops/reduce.h"
#include "framework/ops/shape.h"

namespace ml {
using detail::empty_like;
using detail::op_error;

namespace {

// A contiguous copy (or x itself), made without recording history: the ops below record their
// own fused backward against the original input.
Tensor contiguous_data(const Tensor& x) {
  NoGradGuard no_grad;
  return x.detach().contiguous();
}

// An optional per-feature parameter (normalization weight or bias) must be [features] and match x.
void check_feature_param(const char* op, const char* what, const Tensor& x, const Tensor& param) {
  if (!param.defined()) return;
  detail::check_compatible(op, x, param);
  if (param.shape() != Shape{x.size(-1)})
    op_error(op, std::string(what) + " of shape " + shape_str(param.shape()) + " does not match input " +
                     shape_str(x.shape()) + " (expected [" + std::to_string(x.size(-1)) + "])");
}

void check_has_dims(const char* op, const Tensor& x, int64_t min_dims) {
  detail::check_floating(op, x);
  if (x.dim() < min_dims)
    op_error(op, "expected at least " + std::to_string(min_dims) + " dims, got shape " + shape_str(x.shape()));
}

Tensor rows_stat(const Tensor& x) {
  return Tensor::empty({x.size(-1) == 0 ? 0 : x.numel() / x.size(-1)}, x.dtype(), x.device());
}

Tensor needed_like(bool needed, const Tensor& t) { return needed ? empty_like(t) : Tensor(); }

// Softmax over the last dim through the backend kernel; causal masks each trailing [T, T] slice.
Tensor softmax_last_dim(const char* op, const Tensor& x, bool log, bool causal) {
  const Tensor xc = contiguous_data(x);
  Tensor y = empty_like(xc);
  backend_of(xc).softmax(xc, y, log, causal);
  if (needs_grad(x))
    record(y, op, {x}, [y = y.detach(), log](const Tensor& g) {
      Tensor gx = empty_like(y);
      backend_of(y).softmax_backward(g.contiguous(), y, gx, log);
      return Grads{gx};
    });
  return y;
}

// Moves dim to the end for the kernel and back afterwards (both are views).
Tensor softmax_along(const char* op, const Tensor& x, int64_t dim, bool log) {
  check_has_dims(op, x, 1);
  const int64_t d = normalize_dim(dim, x.dim(), op);
  const int64_t last = x.dim() - 1;
  if (d == last) return softmax_last_dim(op, x, log, false);
  return softmax_last_dim(op, x.transpose(d, last), log, false).transpose(d, last);
}

}  // namespace

// ---------------------------------------------------------------------------------- linear, embedding

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_has_dims("linear", x, 1);
  detail::check_compatible("linear", x, weight);
  if (weight.dim() != 2 || weight.size(1) != x.size(-1))
    op_error("linear", "input " + shape_str(x.shape()) + " does not match weight " + shape_str(weight.shape()) +
                           " (expected weight [out, " + std::to_string(x.size(-1)) + "])");
  const int64_t out_features = weight.size(0), in_features = weight.size(1);
  if (bias.defined()) {
    detail::check_compatible("linear", x, bias);
    if (bias.shape() != Shape{out_features})
      op_error("linear", "bias " + shape_str(bias.shape()) + " does not match weight " + shape_str(weight.shape()));
  }
  Tensor y;
  {
    NoGradGuard no_grad;
    // BLAS reads the transposed view directly, no copy of weight; the bias is its beta term.
    y = bias.defined() ? detail::matmul_add_forward(x, weight.t(), bias) : matmul(x, weight.t());
  }
  if (needs_grad(x, weight, bias))
    record(y, "linear", {x, weight, bias},
           [x = x.detach(), weight = weight.detach(), out_features, in_features, need_x = x.requires_grad(),
            need_w = weight.requires_grad(), need_b = bias.defined() && bias.requires_grad()](const Tensor& g) {
             // One [N, out] x [N, in] product for the weight gradient gives it contiguous, in
             // weight's own layout, whatever the rank of x.
             const Tensor g_rows = g.reshape({-1, out_features});
             return Grads{need_x ? matmul(g, weight) : Tensor(),
                          need_w ? matmul(g_rows.t(), x.reshape({-1, in_features})) : Tensor(),
                          need_b ? sum(g_rows, {0}) : Tensor()};
           });
  return y;
}

Tensor embedding(const Tensor& ids, const Tensor& weight) {
  detail::check_defined("embedding", ids);
  detail::check_floating("embedding", weight);
  if (ids.dtype() != DType::Int64) op_error("embedding", std::string("ids must be int64, got ") + dtype_name(ids.dtype()));
  if (weight.dim() != 2) op_error("embedding", "weight must be [V, D], got " + shape_str(weight.shape()));
  Shape out_shape = ids.shape();
  out_shape.push_back(weight.size(1));
  Tensor rows;
  try {
    rows = index_select(weight, 0, ids.reshape({-1}));  // records index_add as the backward
  } catch (const std::out_of_range& e) {
    // The kernel names the bad id; this says which op and vocabulary it was checked against.
    throw std::out_of_range("embedding: ids must be in [0, " + std::to_string(weight.size(0)) +
                            ") for weight " + shape_str(weight.shape()) + " (" + e.what() + ")");
  }
  return rows.view(out_shape);
}

// ---------------------------------------------------------------------------------- normalization

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  check_has_dims("layer_norm", x, 1);
  check_feature_param("layer_norm", "weight", x, weight);
  check_feature_param("layer_norm", "bias", x, bias);
  const Tensor xc = contiguous_data(x);
  const Tensor w = weight.defined() ? contiguous_data(weight) : Tensor();
  const Tensor b = bias.defined() ? contiguous_data(bias) : Tensor();
  Tensor y = empty_like(xc), mean = rows_stat(xc), rstd = rows_stat(xc);
  backend_of(xc).layer_norm(xc, w, b, eps, y, mean, rstd);
  if (needs_grad(x, weight, bias))
    record(y, "layer_norm", {x, weight, bias},
           [xc, w, mean, rstd, need_x = x.requires_grad(), need_w = weight.defined() && weight.requires_grad(),
            need_b = bias.defined() && bias.requires_grad(), b](const Tensor& g) {
             Tensor gx = needed_like(need_x, xc), gw = needed_like(need_w, w), gb = needed_like(need_b, b);
             backend_of(xc).layer_norm_backward(g.contiguous(), xc, w, mean, rstd, gx, gw, gb);
             return Grads{gx, gw, gb};
           });
  return y;
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, std::optional<double> eps) {
  check_has_dims("rms_norm", x, 1);
  check_feature_param("rms_norm", "weight", x, weight);
  const double epsilon = eps ? *eps
                             : (x.dtype() == DType::Float32 ? std::numeric_limits<float>::epsilon()
                                                            : std::numeric_limits<double>::epsilon());
  const Tensor xc = contiguous_data(x);
  const Tensor w = weight.defined() ? contiguous_data(weight) : Tensor();
  Tensor y = empty_like(xc), rstd = rows_stat(xc);
  backend_of(xc).rms_norm(xc, w, epsilon, y, rstd);
  if (needs_grad(x, weight))
    record(y, "rms_norm", {x, weight},
           [xc, w, rstd, need_x = x.requires_grad(), need_w = weight.defined() && weight.requires_grad()](
               const Tensor& g) {
             Tensor gx = needed_like(need_x, xc), gw = needed_like(need_w, w);
             backend_of(xc).rms_norm_backward(g.contiguous(), xc, w, rstd, gx, gw);
             return Grads{gx, gw};
           });
  return y;
}

Tensor normalize_rows(const Tensor& x, double scale, double eps) {
  check_has_dims("normalize_rows", x, 1);
  if (needs_grad(x))
    throw std::invalid_argument("normalize_rows: has no backward, but its input " + shape_str(x.shape()) +
                                " requires a gradient (run it under NoGradGuard)");
  const Tensor xc = contiguous_data(x);
  Tensor y = empty_like(xc);
  backend_of(xc).normalize_rows(xc, scale, eps, y);
  return y;
}

// ---------------------------------------------------------------------------------- softmax, losses

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_along("softmax", x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_along("log_softmax", x, dim, true); }

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, double label_smoothing,
                     Reduction reduction) {
  check_has_dims("cross_entropy", logits, 1);
  detail::check_defined("cross_entropy", targets);
  if (targets.dtype() != DType::Int64)
    op_error("cross_entropy", std::string("targets must be int64 class indices, got ") + dtype_name(targets.dtype()));
  if (targets.device() != logits.device())
    op_error("cross_entropy", "targets on " + targets.device().str() + ", logits on " + logits.device().str());
  const Shape expected(logits.shape().begin(), logits.shape().end() - 1);
  if (targets.shape() != expected)
    op_error("cross_entropy", "logits " + shape_str(logits.shape()) + " need targets of shape " + shape_str(expected) +
                                  ", got " + shape_str(targets.shape()));
  if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0))
    op_error("cross_entropy", "label_smoothing must be in [0, 1], got " + std::to_string(label_smoothing));

  const int64_t classes = logits.size(-1);
  const Tensor rows = logits.reshape({-1, classes});  // differentiable: the gradient flows back through it
  const Tensor logits_data = contiguous_data(rows);
  const Tensor target_rows = contiguous_data(targets).reshape({-1});
  Tensor losses = Tensor::empty({target_rows.numel()}, logits.dtype(), logits.device());
  // Each row's max and sum of exponentials, kept for the backward.
  const Tensor row_stats = Tensor::empty({target_rows.numel(), 2}, DType::Float64, logits.device());
  backend_of(logits).cross_entropy(logits_data, target_rows, ignore_index, label_smoothing, losses, row_stats);
  if (needs_grad(rows))
    record(losses, "cross_entropy", {rows},
           [logits_data, target_rows, row_stats, ignore_index, label_smoothing](const Tensor& g) {
             Tensor grad_logits = empty_like(logits_data);
             backend_of(logits_data)
                 .cross_entropy_backward(logits_data, target_rows, row_stats, ignore_index, label_smoothing,
                                         g.contiguous(), grad_logits);
             return Grads{grad_logits};
           });

  switch (reduction) {
    case Reduction::None: return losses.view(targets.shape());
    case Reduction::Sum: return sum(losses);
    case Reduction::Mean: break;
  }
  // The count stays a tensor on the logits' device, so no device-to-host sync is needed.
  const Tensor ignored = eq(target_rows, full({}, static_cast<double>(ignore_index), DType::Int64, logits.device()));
  const Tensor counted = static_cast<double>(target_rows.numel()) - sum(ignored.to(logits.dtype()));
  return div(sum(losses), counted);
}

// ---------------------------------------------------------------------------------- dropout, attention

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  detail::check_floating("dropout", x);
  if (!(p >= 0.0 && p < 1.0)) op_error("dropout", "p must be in [0, 1), got " + std::to_string(p));
  if (!training || p == 0.0) return x;
  Tensor keep_scale = bernoulli(x.shape(), 1.0 - p, x.dtype(), x.device(), gen);
  mul_(keep_scale, 1.0 / (1.0 - p));
  return mul(x, keep_scale);
}

namespace {

Tensor composed_attention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                          double scale) {
  Tensor probs, out;
  {
    NoGradGuard no_grad;
    const Tensor scores = matmul(q, k.transpose(-1, -2), scale);  // [..., T, S], one small GEMM per head
    probs = empty_like(scores);
    backend_of(q).softmax(scores, probs, /*log=*/false, causal);
    out = matmul(probs, v);
  }
  if (needs_grad(q, k, v))
    record(out, op, {q, k, v},
           [q = q.detach(), k = k.detach(), v = v.detach(), probs, scale, need_q = q.requires_grad(),
            need_k = k.requires_grad(), need_v = v.requires_grad()](const Tensor& g) {
             // out = P v with P = softmax(S), S = scale * q k^T:
             //   dv = P^T g,  dP = g v^T,  dS = softmax'(dP),  dq = scale dS k,  dk = scale dS^T q
             const Tensor grad_probs = matmul(g, v.transpose(-1, -2));
             Tensor grad_scores = empty_like(probs);
             backend_of(probs).softmax_backward(grad_probs, probs, grad_scores, /*log=*/false);
             return Grads{need_q ? matmul(grad_scores, k, scale) : Tensor(),
                          need_k ? matmul(grad_scores.transpose(-1, -2), q, scale) : Tensor(),
                          need_v ? matmul(probs.transpose(-1, -2), g) : Tensor()};
           });
  return out;
}

// The backend's operands are [B, H, T, D] (Backend::attention). Where the backend reads strided
// heads, a 4-D q, k or v with contiguous rows goes as it is: heads split from a packed projection
// (the GPT's) are not copied. The output and those heads' gradients then lie in memory as
// [B, T, H, D] (their [B, H, T, D] views are what the op returns), as PyTorch's fused kernels leave
// them: merging the heads back, y.transpose(1, 2).reshape(B, T, H * Dv), is a view, and so is the
// gradients' way back into the projection. A contiguous operand's gradient is contiguous, as
// PyTorch's empty_like makes it: a leaf's .grad then takes it without a copy. Otherwise (a backend
// that reads no strided heads) every operand is a contiguous copy seen as [1, BH, T, D], the
// leading dims flattened into one.
Tensor fused_attention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                       double scale) {
  const Shape lead(q.shape().begin(), q.shape().end() - 2);
  const int64_t batch_heads = numel_of(lead), queries = q.size(-2), value_dim = v.size(-1);
  const bool strided = q.dim() == 4 && backend_of(q).attention_reads_strided_heads();
  const auto operand = [batch_heads, strided](const Tensor& t) {
    if (strided) return t.strides().back() == 1 ? t.detach() : contiguous_data(t);
    return contiguous_data(t).view({1, batch_heads, t.size(-2), t.size(-1)});
  };
  // An empty [B, H, rows, width] result, laid out as described above.
  const auto result = [batch = q.size(0), heads = q.size(1), batch_heads, strided, dtype = q.dtype(),
                       device = q.device()](int64_t rows, int64_t width) {
    if (strided) return Tensor::empty({batch, rows, heads, width}, dtype, device).transpose(1, 2);
    return Tensor::empty({1, batch_heads, rows, width}, dtype, device);
  };
  const Tensor qh = operand(q), kh = operand(k), vh = operand(v);
  const Tensor out_heads = result(queries, value_dim);
  const Tensor lse = Tensor::empty({qh.size(0), qh.size(1), queries}, q.dtype(), q.device());
  backend_of(q).attention(qh, kh, vh, causal, scale, out_heads, lse);
  Shape out_shape = lead;
  out_shape.insert(out_shape.end(), {queries, value_dim});
  // A view of its own: the backward keeps out_heads, which must not hold the node that holds it.
  Tensor out = strided ? out_heads.detach() : out_heads.view(out_shape);
  if (needs_grad(q, k, v))
    record(out, op, {q, k, v},
           [qh, kh, vh, out_heads, lse, causal, scale, operand, result, q_shape = q.shape(), k_shape = k.shape(),
            v_shape = v.shape()](const Tensor& g) {
             const auto gradient_of = [&result](const Tensor& heads) {
               return heads.is_contiguous() ? empty_like(heads) : result(heads.size(2), heads.size(3));
             };
             const Tensor grad_q = gradient_of(qh), grad_k = gradient_of(kh), grad_v = gradient_of(vh);
             backend_of(qh).attention_backward(operand(g), qh, kh, vh, out_heads, lse, causal, scale, grad_q, grad_k,
                                               grad_v);
             return Grads{grad_q.reshape(q_shape), grad_k.reshape(k_shape), grad_v.reshape(v_shape)};
           });
  return out;
}

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                    AttentionImpl impl) {
  const char* op = "scaled_dot_product_attention";
  check_has_dims(op, q, 2);
  detail::check_compatible(op, q, k);
  detail::check_compatible(op, q, v);
  const Shape lead(q.shape().begin(), q.shape().end() - 2);
  auto lead_of = [](const Tensor& t) { return Shape(t.shape().begin(), t.shape().end() - std::min<int64_t>(2, t.dim())); };
  const bool shapes_ok = k.dim() == q.dim() && v.dim() == q.dim() && lead_of(k) == lead && lead_of(v) == lead &&
                         k.size(-1) == q.size(-1) && v.size(-2) == k.size(-2);
  if (!shapes_ok)
    op_error(op, "q " + shape_str(q.shape()) + ", k " + shape_str(k.shape()) + ", v " + shape_str(v.shape()) +
                     " do not fit q [..., T, D], k [..., S, D], v [..., S, Dv]");
  if (causal && k.size(-2) != q.size(-2))
    op_error(op, "causal attention needs as many keys as queries, got q " + shape_str(q.shape()) + " and k " +
                     shape_str(k.shape()));
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  const bool fused =
      impl == AttentionImpl::Fused ||
      (impl == AttentionImpl::Auto && backend_of(q).can_fuse_attention(q.dtype(), q.size(-1), v.size(-1)));
  return fused ? fused_attention(op, q, k, v, causal, scale) : composed_attention(op, q, k, v, causal, scale);
}

}  // namespace ml
