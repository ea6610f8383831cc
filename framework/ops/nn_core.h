// Core neural-network functional ops, with torch.nn.functional semantics: linear, embedding,
// layer/RMS normalization, softmax, cross-entropy, dropout and attention. All are differentiable
// with respect to their floating inputs; normalization, softmax and cross-entropy run one fused
// backend kernel each way.
#pragma once
#include <optional>

#include "framework/random.h"
#include "framework/tensor.h"

namespace ml {

// x @ weight^T + bias for x [..., in], weight [out, in] and bias [out] (or undefined): [..., out].
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// The rows of weight [V, D] at the Int64 ids (any shape): [..., D]. An id outside [0, V) throws
// std::out_of_range. The gradient reaches weight only (rows hit twice accumulate).
Tensor embedding(const Tensor& ids, const Tensor& weight);

// (x - mean) / sqrt(var + eps) * weight + bias over the last dim (biased variance), as
// F.layer_norm(x, (D,), weight, bias, eps). weight and bias are [D] or undefined.
Tensor layer_norm(const Tensor& x, const Tensor& weight = Tensor(), const Tensor& bias = Tensor(),
                  double eps = 1e-5);

// x / sqrt(mean(x^2) + eps) * weight over the last dim; weight is [D] or undefined. As in
// F.rms_norm, eps defaults to the machine epsilon of x's dtype (1.19e-7 for float32).
Tensor rms_norm(const Tensor& x, const Tensor& weight = Tensor(), std::optional<double> eps = std::nullopt);

// scale * x / max(||x||_2, eps) over the last dim, as F.normalize(x, dim=-1, eps=eps) * scale, in
// one fused kernel: RMNP's row normalization. It has no backward (it serves optimizer updates,
// which run without gradients) and throws if x requires a gradient.
Tensor normalize_rows(const Tensor& x, double scale = 1.0, double eps = 1e-12);

// Numerically stable (max-shifted) softmax / log-softmax along dim. For dim other than the last
// the result is a transposed view.
Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);

enum class Reduction { Mean, Sum, None };

// F.cross_entropy for logits [..., C] (classes in the last dim) and Int64 class targets [...]:
// per element loss = (1 - s) * (-log p_target) + s * mean_c(-log p_c) with s = label_smoothing.
// Elements whose target is ignore_index get loss 0 and no gradient; Mean divides by the number of
// the others, so a batch with every target ignored gives NaN (0/0), as in PyTorch. None returns
// the per-element losses, shaped like targets. A target outside [0, C) throws std::out_of_range.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100,
                     double label_smoothing = 0.0, Reduction reduction = Reduction::Mean);

// Inverted dropout: in training, zeroes each element with probability p and scales the rest by
// 1 / (1 - p), so evaluation (training false, or p == 0) is the identity and returns x itself.
// p must be in [0, 1).
Tensor dropout(const Tensor& x, double p, bool training, Generator& gen = default_generator());

// How scaled_dot_product_attention runs. Composed: two batched matrix products around a fused
// softmax kernel, keeping the [T, S] probabilities for the backward. Fused: one FlashAttention-style
// kernel each way (Backend::attention), which keeps only a log-sum-exp per query row; on CUDA it
// takes float32 and head sizes up to 128. Auto: Fused where the tensors' backend runs it
// (Backend::can_fuse_attention), else Composed, like PyTorch's choice of an SDPA kernel; the
// fused kernels are the faster ones at the GPT's shapes on both backends (bench ops, 2026-12-04).
enum class AttentionImpl { Auto, Composed, Fused };

// softmax(q k^T / sqrt(D) + mask) v for q [..., T, D], k [..., S, D], v [..., S, Dv] (in practice
// [B, H, T, D]); the leading dims must match. Causal (the default here, unlike PyTorch's
// is_causal=False) lets query i attend to keys 0..i and needs S == T. The fused CPU kernel reads
// 4-D heads at their strides (heads split from a packed projection are not copied) and returns
// its [B, H, T, Dv] output as a view of [B, T, H, Dv] memory, as PyTorch's fused kernels do: it
// may not be contiguous (reshape, not view, merges the heads).
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal = true,
                                    AttentionImpl impl = AttentionImpl::Auto);

}  // namespace ml
