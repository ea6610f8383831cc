// Matrix products.
#pragma once
#include "framework/tensor.h"

namespace ml {

// torch.matmul, times alpha: 1-D operands are promoted to matrices; leading (batch) dims
// broadcast. The factor rides in the product (BLAS's alpha), so a scaled product, such as
// attention's scores, costs no extra pass over its result.
Tensor matmul(const Tensor& a, const Tensor& b, double alpha = 1.0);

// alpha * x @ x^T + beta * c for a matrix x [k, l] and, where beta != 0, a symmetric c [k, k]
// (its upper triangle is read): BLAS's symmetric rank-k update. It computes one triangle, half the
// products of matmul(x, x.t()), and the result is exactly symmetric. Newton-Schulz's Gram matrices
// X X^T and its polynomials' squares A A^T (A symmetric) are such products. A stack x [B, k, l]
// (with c [B, k, k]) gives each matrix its own update, in one call to the backend.
Tensor syrk(const Tensor& x, double alpha = 1.0, const Tensor& c = Tensor(), double beta = 0.0);

// alpha * x @ y^T for matrices x, y [k, l] whose product is known to be symmetric, as x y^T is
// when x and y^T are polynomials in one symmetric matrix (cuBLAS's syrkx): like syrk, it computes
// one triangle, half the products of matmul(x, y.t()), and mirrors it, so the result is exactly
// symmetric. Newton-Schulz's Gram form multiplies such polynomials. A stack of each [B, k, l]
// gives each pair its own product, in one call to the backend. No gradient: for optimizer
// arithmetic, outside autograd (an error names it when x or y requires one).
Tensor symmetric_product(const Tensor& x, const Tensor& y, double alpha = 1.0);

namespace detail {
// matmul(a, b) + c for a [..., M, K], b [K, N] or [..., K, N] and c broadcast to the product's shape
// (a linear layer's bias row): the product adds into a copy of c (BLAS's beta = 1) rather than
// taking a pass over its result afterwards. Records no history: for ops that record their own
// backward (linear). The caller has checked the shapes.
Tensor matmul_add_forward(const Tensor& a, const Tensor& b, const Tensor& c);
}  // namespace detail

}  // namespace ml
