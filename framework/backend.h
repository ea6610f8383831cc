// The one interface every device implements (as in ggml: an op is written once per backend).
// Ops in framework/ops/ check shapes, allocate outputs and record autograd; they then call
// these kernels on the backend of their tensors' device. Kernels never allocate outputs,
// never record history and may assume shapes were validated by the op.
//
// A backend overrides what it supports; the defaults below throw "<backend> does not implement
// <kernel>".
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>

#include "framework/tensor.h"

namespace ml {

enum class UnaryOp {
  Neg, Exp, Log, Sqrt, Rsqrt, Abs, Sign, Tanh, Sigmoid, Relu, Relu2, GeluTanh, GeluErf, Silu,
  AddScalar,   // x + alpha
  MulScalar,   // x * alpha
  PowScalar,   // x ^ alpha
  RDivScalar,  // alpha / x
  Clamp,       // min(max(x, alpha), beta)
};
struct UnaryParams {
  double alpha = 0.0;
  double beta = 0.0;
};

enum class BinaryOp { Add, Sub, Mul, Div, Pow, Maximum, Minimum, Greater, Less, Equal };
// SumOfSquares squares each element in x's dtype and sums the squares like Sum: one pass over x
// for norms (a row reduction only; no collective offers it).
enum class ReduceOp { Sum, SumOfSquares, Max, Min };
// The order of top-k's k entries: by rank (largest first), or by their position in the input.
enum class TopkOrder { ByValue, ByIndex };
enum class RandomDist { Uniform, Normal, Bernoulli };  // Uniform[a,b), Normal(a, b^2), Bernoulli(p=a)

// The arithmetic a gemm may use. Matrix products follow the run's setting (on CUDA, TF32 or bf16
// operands where the config allows them); sums that are computed as a product with a ones vector
// stay exact, like every other reduction. The CPU backend always computes exactly.
enum class GemmMath { Configured, Exact };

// The arithmetic of float32 matrix products on CUDA (the config's matmul_precision). Float32:
// exact; Tf32: TF32 tensor cores; Bf16: both operands rounded to bfloat16 (nearest, ties to even),
// products accumulated and stored in float32. Convolutions use TF32 tensor cores under Tf32 and
// Bf16. float64 and sums (GemmMath::Exact) always stay exact.
enum class MatmulPrecision { Float32, Tf32, Bf16 };

struct Conv2dParams {
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
};
struct Pool2dParams {
  int64_t kernel_h = 2, kernel_w = 2;
  int64_t stride_h = 2, stride_w = 2;
  int64_t pad_h = 0, pad_w = 0;
};
// One AdamW step's settings (optimizers/adamw.cpp), with the bias corrections 1 - beta^t of the
// parameter's step count t.
struct AdamWStep {
  double lr = 0.0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  double bias_correction1 = 1.0, bias_correction2 = 1.0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // ---------------------------------------------------------------- memory
  virtual void* allocate(size_t nbytes) = 0;
  virtual void deallocate(void* ptr, size_t nbytes) = 0;
  virtual void copy_from_host(void* dst, const void* host_src, size_t nbytes) = 0;
  virtual void copy_to_host(void* host_dst, const void* src, size_t nbytes) = 0;
  virtual void synchronize() {}

  // The kernels. Each default throws "<backend> does not implement <kernel>", so that a backend
  // can be brought up op by op; the bodies ignore their arguments.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"

  // ---------------------------------------------------------------- elementwise (any strides)
  virtual void fill(const Tensor& out, double value) { unsupported(__func__); }
  // dst = src elementwise; same shape, any strides, converts between dtypes.
  virtual void copy(const Tensor& src, const Tensor& dst) { unsupported(__func__); }
  virtual void unary(UnaryOp op, const Tensor& x, const Tensor& out, UnaryParams p) { unsupported(__func__); }
  // grad_in = grad_out * d op(x) / dx, given x and y = op(x).
  virtual void unary_backward(UnaryOp op, const Tensor& grad_out, const Tensor& x, const Tensor& y,
                              const Tensor& grad_in, UnaryParams p) { unsupported(__func__); }
  // a and b are already broadcast (stride-0 views) to out's shape; out may alias a.
  virtual void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) { unsupported(__func__); }
  virtual void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) { unsupported(__func__); }
  // Counter-based: element i of out draws from (seed, offset + i) (Normal: offset + 2i and
  // offset + 2i + 1), independent of threads and device.
  virtual void random(const Tensor& out, RandomDist dist, uint64_t seed, uint64_t offset, double a, double b) { unsupported(__func__); }
  virtual void arange(const Tensor& out, double start, double step) { unsupported(__func__); }

  // ---------------------------------------------------------------- reductions
  // x is contiguous [rows, n]; out is [rows]; indices (Int64 [rows]) is filled for Max/Min when defined.
  virtual void reduce_rows(ReduceOp op, const Tensor& x, const Tensor& out, const Tensor& indices) { unsupported(__func__); }
  // x is contiguous floating [rows, n]; values (x's dtype) and indices (Int64) are contiguous
  // [rows, k] with 1 <= k <= n: each row's k entries that rank first by ranks_before
  // (backends/ranking.h), in `order`.
  virtual void topk(const Tensor& x, int64_t k, TopkOrder order, const Tensor& values, const Tensor& indices) { unsupported(__func__); }

  // ---------------------------------------------------------------- linear algebra
  // c[i] = alpha * a[i] @ b[i] + beta * c[i] for 3-D a [B,M,K], b [B,K,N], c [B,M,N] (c contiguous).
  // a[i] and b[i] may be transposed views (unit stride in either of their last two dims);
  // a batch stride of 0 broadcasts one matrix over the batch.
  virtual void gemm(const Tensor& a, const Tensor& b, const Tensor& c, double alpha, double beta, GemmMath math) { unsupported(__func__); }
  // c[0] = alpha * a[0] @ b[0] + bias in every row, for a batch of one (a, b as gemm's, c [1, M, N]
  // contiguous) and a contiguous bias [N]: a linear layer's output. This default writes the bias
  // into c's rows and adds the product to them (beta = 1); a backend whose product can start from
  // the bias itself (the CPU's own kernel) skips that pass over c.
  virtual void gemm_add_rows(const Tensor& a, const Tensor& b, const Tensor& c, double alpha, const Tensor& bias,
                             GemmMath math) {
    copy(Tensor::view_of(bias, c.shape(), {0, 0, 1}, bias.offset()), c);
    gemm(a, b, c, alpha, 1.0, math);
  }
  // c[i] = alpha * a[i] @ b[i]^T + beta * d[i] for 3-D a, b [B, k, l] (each matrix with unit stride
  // in one dim) whose products are symmetric: b is a itself (a Gram matrix, BLAS's syrk), or a
  // matrix that commutes with a (cuBLAS's syrkx; Newton-Schulz's polynomials in one matrix), and
  // a contiguous c [B, k, k]; d is c itself where undefined, else another contiguous [B, k, k]
  // (a product that starts from it needs no copy of it in c first), symmetric where beta != 0.
  // It computes one triangle, half the products, reads only that triangle of d and mirrors the
  // result. This default, for backends without one, copies d into c and runs the plain batched
  // product (symmetric up to rounding).
  virtual void syrk(const Tensor& a, const Tensor& b, const Tensor& c, double alpha, double beta, const Tensor& d,
                    GemmMath math) {
    if (d.defined() && beta != 0.0) copy(d, c);
    gemm(a, b.transpose(1, 2), c, alpha, beta, math);
  }
  // Whether `batch` same-shape products of `multiply_adds` each are faster as one batched call
  // than one after another. This default, a GPU's answer: always, one launch instead of `batch`.
  virtual bool batched_products_pay(int64_t batch, int64_t multiply_adds) const { return batch > 1; }

  // ---------------------------------------------------------------- indexing (index is Int64)
  // out = x.index_select(dim, index); out.index_add_(dim, index, src).
  virtual void index_select(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) { unsupported(__func__); }
  virtual void index_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) { unsupported(__func__); }
  // out = x.gather(dim, index); out.scatter_add_(dim, index, src).
  virtual void gather(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) { unsupported(__func__); }
  virtual void scatter_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) { unsupported(__func__); }

  // ---------------------------------------------------------------- nn (contiguous inputs)
  // Softmax over the last dim; causal masks row i of every [T,T] slice to columns <= i: masked
  // entries are written as probability 0 (log: -inf), and the log backward gives -inf entries no
  // gradient. Backward kernels skip any output gradient passed undefined.
  virtual void softmax(const Tensor& x, const Tensor& y, bool log, bool causal) { unsupported(__func__); }
  virtual void softmax_backward(const Tensor& grad_y, const Tensor& y, const Tensor& grad_x, bool log) { unsupported(__func__); }
  // Fused attention in the style of FlashAttention (Dao et al. 2022, "FlashAttention: Fast and
  // Memory-Efficient Exact Attention with IO-Awareness", Algorithms 1 and 2): the [T, S] matrix of
  // probabilities is never stored. q [B, H, T, D], k [B, H, S, D], v [B, H, S, Dv]; writes out
  // [B, H, T, Dv] = softmax(scale * q k^T) v and lse [B, H, T], each row's log-sum-exp of the
  // scaled scores (-inf, with an output row of zeros, for a row that sees no key). Causal (needs
  // S == T) lets query i see keys 0..i. All contiguous, unless attention_reads_strided_heads():
  // then every tensor (the backward's too) is read and written at its strides, its rows contiguous.
  virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                         const Tensor& out, const Tensor& lse) { unsupported(__func__); }
  // Whether attention() runs q/k of head size head_dim and v of value_dim in this dtype.
  virtual bool can_fuse_attention(DType dtype, int64_t head_dim, int64_t value_dim) const { return true; }
  // Whether attention() and attention_backward() take strided heads (see attention()): heads split
  // from a packed projection, read in place, as PyTorch's fused attention reads them.
  virtual bool attention_reads_strided_heads() const { return false; }
  // Recomputes the probabilities from q, k and lse and writes all of grad_q, grad_k, grad_v.
  virtual void attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse, bool causal, double scale,
                                  const Tensor& grad_q, const Tensor& grad_k, const Tensor& grad_v) { unsupported(__func__); }
  // Normalizes over the last dim. weight/bias may be undefined; mean/rstd are [rows] (float32/64).
  virtual void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                          const Tensor& y, const Tensor& mean, const Tensor& rstd) { unsupported(__func__); }
  virtual void layer_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                                   const Tensor& mean, const Tensor& rstd, const Tensor& grad_x,
                                   const Tensor& grad_weight, const Tensor& grad_bias) { unsupported(__func__); }
  virtual void rms_norm(const Tensor& x, const Tensor& weight, double eps, const Tensor& y, const Tensor& rstd) { unsupported(__func__); }
  virtual void rms_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                                 const Tensor& rstd, const Tensor& grad_x, const Tensor& grad_weight) { unsupported(__func__); }
  // y_i = scale * x_i / max(||x_i||_2, eps) for every row i of the last dim, in one pass over
  // each row for its norm and one to write it (an optimizer's update: no backward).
  virtual void normalize_rows(const Tensor& x, double scale, double eps, const Tensor& y) { unsupported(__func__); }
  // logits [N,C], targets Int64 [N]; losses [N] (0 where target == ignore_index) and row_stats
  // Float64 [N, 2]: each row's max m and sum of exp(logits[i, c] - m) (0, 0 where ignored), which
  // the backward reuses.
  virtual void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                             double label_smoothing, const Tensor& losses, const Tensor& row_stats) { unsupported(__func__); }
  // grad_logits[i] = grad_losses[i] * d losses[i] / d logits[i], given the forward's row_stats: one
  // pass over each row (softmax_c = exp(logits[i, c] - m) / sum), the same arithmetic as finding
  // m and the sum again.
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& row_stats,
                                      int64_t ignore_index, double label_smoothing, const Tensor& grad_losses,
                                      const Tensor& grad_logits) { unsupported(__func__); }
  // x [N,Cin,H,W], w [Cout,Cin,kh,kw], bias [Cout] or undefined, y [N,Cout,Ho,Wo].
  virtual void conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, Conv2dParams p) { unsupported(__func__); }
  // Any of grad_x / grad_w / grad_bias may be undefined (not needed).
  virtual void conv2d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                               const Tensor& grad_w, const Tensor& grad_bias, Conv2dParams p) { unsupported(__func__); }
  // indices (Int64, same shape as y) record the argmax within each window's plane.
  virtual void max_pool2d(const Tensor& x, const Tensor& y, const Tensor& indices, Pool2dParams p) { unsupported(__func__); }
  virtual void max_pool2d_backward(const Tensor& grad_y, const Tensor& indices, const Tensor& grad_x) { unsupported(__func__); }
  virtual void avg_pool2d(const Tensor& x, const Tensor& y, Pool2dParams p) { unsupported(__func__); }
  virtual void avg_pool2d_backward(const Tensor& grad_y, const Tensor& grad_x, Pool2dParams p) { unsupported(__func__); }
  // Batch statistics over (N,H,W) of x [N,C,H,W]: mean [C] and biased variance [C].
  virtual void batch_norm_stats(const Tensor& x, const Tensor& mean, const Tensor& var) { unsupported(__func__); }
  // y = activation((x - mean) * invstd * weight + bias), per channel, in one pass; weight/bias may be
  // undefined, and without an activation y is the normalized value itself.
  virtual void batch_norm_apply(const Tensor& x, const Tensor& mean, const Tensor& invstd, const Tensor& weight,
                                const Tensor& bias, std::optional<UnaryOp> activation, const Tensor& y) {
    unsupported(__func__);
  }
  // Backward of training-mode batch norm (statistics from this batch) and of the activation after it,
  // where given: grad_y is then the gradient of the activation's output, whose input the kernel
  // recomputes from x (so the forward pass keeps no normalized copy).
  virtual void batch_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& mean, const Tensor& invstd,
                                   const Tensor& weight, const Tensor& bias, std::optional<UnaryOp> activation,
                                   const Tensor& grad_x, const Tensor& grad_weight, const Tensor& grad_bias) {
    unsupported(__func__);
  }

  // ---------------------------------------------------------------- optimizer steps
  // AdamW in place in one pass over contiguous param, grad, exp_avg and exp_avg_sq of one shape and
  // dtype (elementwise::adamw_element; optimizers/adamw.cpp writes the same step one op per term).
  virtual void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                            const Tensor& exp_avg_sq, const AdamWStep& step) { unsupported(__func__); }

#pragma GCC diagnostic pop

 protected:
  [[noreturn]] void unsupported(const char* kernel) const;
};

// The backend that runs tensors on `device`; throws when it is not compiled in or not present.
Backend& backend_for(Device device);
inline Backend& backend_of(const Tensor& t) { return backend_for(t.device()); }
// Whether a CUDA device can be used in this process (false when built without CUDA).
bool cuda_available();

}  // namespace ml
