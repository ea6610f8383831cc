// Fused attention on the CPU (cpu_attention.cpp): the reference loops that the CUDA kernels follow,
// and the blocked path that CpuBackend::attention takes where it applies. Both compute, per head
// of q [B, H, T, D], k [B, H, S, D], v [B, H, S, Dv], out = softmax(scale q k^T (causal: keys
// j <= i)) v [B, H, T, Dv] and lse (the rows' log-sum-exp, [B, H, T]); the backward takes out and
// lse from the forward and writes grad_q, grad_k, grad_v shaped like q, k, v. Every tensor is read
// and written at its own strides, its rows (last dim) contiguous: heads split from a packed
// projection are read where they lie. Exposed so that tests can hold the two together.
#pragma once

#include "framework/tensor.h"

namespace ml::cpu_attention {

void reference_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, const Tensor& out,
                       const Tensor& lse);
void reference_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, bool causal, double scale, const Tensor& grad_q, const Tensor& grad_k,
                        const Tensor& grad_v);

// Whether the blocked path runs these shapes (at least one key and query, and a head's [T, S]
// probability matrices within its scratch budget); the reference runs the rest.
bool blocked_applies(const Tensor& q, const Tensor& k);
void blocked_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, const Tensor& out,
                     const Tensor& lse);
void blocked_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                      const Tensor& lse, bool causal, double scale, const Tensor& grad_q, const Tensor& grad_k,
                      const Tensor& grad_v);

}  // namespace ml::cpu_attention
