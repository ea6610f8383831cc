#include "framework/ops/linalg.h"

#include "framework/backends/gemm_layout.h"
#include "framework/ops/elementwise.h"
#include "framework/ops/op_utils.h"

namespace ml {
using detail::op_error;

namespace {

// Whether BLAS can read t's last two dims as matrices in place (gemm_layout.h: not an expanded view).
bool matrices_readable(const Tensor& t) {
  const int64_t nd = t.dim();
  return blas_layout(t.size(-2), t.size(-1), t.strides()[nd - 2], t.strides()[nd - 1], 0).has_value();
}

// Whether t's batch dims (all but its last two) merge into one stride, as one gemm call needs.
bool batch_dims_merge(const Tensor& t) {
  for (int64_t d = 0; d + 1 < t.dim() - 2; ++d)
    if (t.size(d + 1) != 1 && t.strides()[d] != t.strides()[d + 1] * t.size(d + 1) && t.size(d) != 1) return false;
  return true;
}

// Views [..., R, C] as [B, R, C] without copying when the batch dims merge into one stride and
// BLAS can read the matrices as they are; otherwise copies to contiguous.
Tensor as_batched_matrices(const Tensor& t) {
  if (!matrices_readable(t) || !batch_dims_merge(t)) return as_batched_matrices(t.contiguous());
  const int64_t nd = t.dim();
  const int64_t rows = t.size(-2), cols = t.size(-1);
  int64_t batch = 1;
  for (int64_t d = 0; d < nd - 2; ++d) batch *= t.size(d);
  int64_t batch_stride = rows * cols;
  for (int64_t d = nd - 3; d >= 0; --d)
    if (t.size(d) != 1) {
      batch_stride = t.strides()[d];
      break;
    }
  return Tensor::view_of(t, {batch, rows, cols}, {batch_stride, t.strides()[nd - 2], t.strides()[nd - 1]}, t.offset());
}

// t[i] along its first dim, as a view one dim shorter.
Tensor index_first(const Tensor& t, int64_t i) {
  return Tensor::view_of(t, Shape(t.shape().begin() + 1, t.shape().end()), Shape(t.strides().begin() + 1, t.strides().end()),
                         t.offset() + i * t.strides()[0]);
}

// out = a @ b for a [..., M, K] and b [..., K, N] of out's batch shape, out contiguous. When an
// operand's batch dims do not merge into one stride but its matrices are readable (the heads of a
// [B, T, H, D] activation seen as [B, H, T, D], as attention does), the product runs once per
// index of the first batch dim instead of copying the operand: those copies were 5% of a
// Shakespeare GPT step.
void batched_product(const Tensor& a, const Tensor& b, const Tensor& out, double alpha, double beta) {
  if (out.dim() > 3 && (!batch_dims_merge(a) || !batch_dims_merge(b)) && matrices_readable(a) && matrices_readable(b)) {
    for (int64_t i = 0; i < out.size(0); ++i)
      batched_product(index_first(a, i), index_first(b, i), index_first(out, i), alpha, beta);
    return;
  }
  const int64_t M = out.size(-2), N = out.size(-1);
  const Tensor out3 = Tensor::view_of(out, {out.numel() / std::max<int64_t>(M * N, 1), M, N}, {M * N, N, 1}, out.offset());
  backend_of(a).gemm(as_batched_matrices(a), as_batched_matrices(b), out3, alpha, beta, GemmMath::Configured);
}

// The forward product alpha * a @ b of validated operands (a [..., M, K], b [..., K, N]), plus
// `added` broadcast to the product's shape where it is given; no history. The sum is BLAS's beta:
// the output starts as a copy of `added` and the product adds into it, where adding afterwards
// would take another pass over the output (and BLAS zeroes it first when beta is 0). A bias row
// under x @ W goes to Backend::gemm_add_rows, which may start the product from the row itself.
Tensor matmul_forward(const Tensor& a, const Tensor& b, double alpha, const Tensor& added = Tensor()) {
  const int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  Shape batch_a(a.shape().begin(), a.shape().end() - 2), batch_b(b.shape().begin(), b.shape().end() - 2);
  Shape out_shape = detail::broadcast_shapes("matmul", batch_a, batch_b);
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor out = Tensor::empty(out_shape, a.dtype(), a.device());
  const double beta = added.defined() ? 1.0 : 0.0;
  // x @ W: a's batch folded into its rows, one large product instead of many small ones.
  const bool folded = b.dim() == 2 && a.is_contiguous();
  // A bias (a linear layer's) under x @ W: the backend may start the product from it.
  const bool bias_row = folded && added.defined() && added.dim() == 1 && added.size(0) == N && added.is_contiguous();
  if (added.defined() && !bias_row) backend_of(out).copy(detail::broadcast_view(added, out_shape), out);
  if (folded) {
    const Tensor a3 = Tensor::view_of(a, {1, a.numel() / std::max<int64_t>(K, 1), K}, {0, K, 1}, a.offset());
    const Tensor c3 = Tensor::view_of(out, {1, out.numel() / std::max<int64_t>(N, 1), N}, {0, N, 1}, 0);
    if (bias_row)
      backend_of(a).gemm_add_rows(a3, as_batched_matrices(b), c3, alpha, added, GemmMath::Configured);
    else
      backend_of(a).gemm(a3, as_batched_matrices(b), c3, alpha, beta, GemmMath::Configured);
    return out;
  }
  Shape full_a = out_shape, full_b = out_shape;
  full_a[full_a.size() - 1] = K;
  full_b[full_b.size() - 2] = K;
  batched_product(detail::broadcast_view(a, full_a), detail::broadcast_view(b, full_b), out, alpha, beta);
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a_in, const Tensor& b_in, double alpha) {
  detail::check_compatible("matmul", a_in, b_in);
  detail::check_floating("matmul", a_in);
  if (a_in.dim() == 0 || b_in.dim() == 0) op_error("matmul", "both arguments need at least one dimension");
  const Tensor a = a_in.dim() == 1 ? a_in.unsqueeze(0) : a_in;
  const Tensor b = b_in.dim() == 1 ? b_in.unsqueeze(1) : b_in;
  if (a.size(-1) != b.size(-2))
    op_error("matmul", "shapes " + shape_str(a_in.shape()) + " and " + shape_str(b_in.shape()) +
                           " cannot be multiplied (" + std::to_string(a.size(-1)) + " vs " + std::to_string(b.size(-2)) + ")");
  Tensor out = matmul_forward(a, b, alpha);
  if (needs_grad(a, b))
    record(out, "matmul", {a, b}, [a, b, alpha](const Tensor& g) {
      Tensor ga, gb;
      if (a.requires_grad()) ga = matmul_forward(g, b.transpose(-1, -2), alpha);
      if (b.requires_grad()) {
        if (b.dim() == 2 && a.dim() > 2)  // sum over a's batch inside one product
          gb = matmul_forward(a.reshape({-1, a.size(-1)}).t(), g.reshape({-1, g.size(-1)}), alpha);
        else
          gb = matmul_forward(a.transpose(-1, -2), g, alpha);
      }
      return Grads{ga, gb};
    });
  if (a_in.dim() == 1) out = out.squeeze(-2);
  if (b_in.dim() == 1) out = out.squeeze(-1);
  return out;
}

Tensor detail::matmul_add_forward(const Tensor& a, const Tensor& b, const Tensor& c) {
  if (a.dim() == 1) return matmul_forward(a.unsqueeze(0), b, 1.0, c).squeeze(-2);  // as matmul promotes it
  return matmul_forward(a, b, 1.0, c);
}

Tensor syrk(const Tensor& x_in, double alpha, const Tensor& c, double beta) {
  detail::check_floating("syrk", x_in);
  if (x_in.dim() != 2 && x_in.dim() != 3)
    op_error("syrk", "expected a matrix or a stack of matrices, got shape " + shape_str(x_in.shape()));
  Shape out_shape = x_in.shape();
  out_shape.back() = x_in.size(-2);  // [..., k, l] -> [..., k, k]
  if (beta != 0.0) {
    if (!c.defined()) op_error("syrk", "beta is " + std::to_string(beta) + " but no matrix c was given");
    detail::check_compatible("syrk", x_in, c);
    if (c.shape() != out_shape)
      op_error("syrk", "c has shape " + shape_str(c.shape()) + "; x of shape " + shape_str(x_in.shape()) + " needs " +
                           shape_str(out_shape));
  }
  const Tensor x = as_batched_matrices(x_in);  // [B, k, l], a view where BLAS can read x_in as it is
  const Shape batched{x.size(0), x.size(1), x.size(1)};
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  const Tensor d = beta != 0.0 ? c.contiguous().view(batched) : Tensor();
  backend_of(x).syrk(x, x, out.view(batched), alpha, beta, d, GemmMath::Configured);
  const Tensor given_c = beta != 0.0 ? c : Tensor();
  if (needs_grad(x_in, given_c))
    record(out, "syrk", {x_in, given_c}, [x_in, given_c, alpha, beta](const Tensor& g) {
      // d(alpha x x^T) = alpha (dx x^T + x dx^T), so x's gradient is alpha (g + g^T) x.
      Tensor gx, gc;
      if (x_in.requires_grad()) gx = matmul_forward(add(g, g.transpose(-1, -2)), x_in, alpha);
      if (given_c.defined() && given_c.requires_grad()) gc = mul(g, beta);
      return Grads{gx, gc};
    });
  return out;
}

Tensor symmetric_product(const Tensor& x_in, const Tensor& y_in, double alpha) {
  detail::check_compatible("symmetric_product", x_in, y_in);
  detail::check_floating("symmetric_product", x_in);
  if ((x_in.dim() != 2 && x_in.dim() != 3) || x_in.shape() != y_in.shape())
    op_error("symmetric_product", "expected two matrices or stacks of matrices of one shape, got " +
                                      shape_str(x_in.shape()) + " and " + shape_str(y_in.shape()));
  if (needs_grad(x_in, y_in))
    op_error("symmetric_product", "records no gradient; use matmul(x, y.t()) where one is needed");
  Shape out_shape = x_in.shape();
  out_shape.back() = x_in.size(-2);  // [..., k, l] -> [..., k, k]
  const Tensor x = as_batched_matrices(x_in), y = as_batched_matrices(y_in);
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  backend_of(x).syrk(x, y, out.view({x.size(0), x.size(1), x.size(1)}), alpha, 0.0, Tensor(), GemmMath::Configured);
  return out;
}

}  // namespace ml
