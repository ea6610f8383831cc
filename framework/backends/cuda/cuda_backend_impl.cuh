// The CUDA backend class; its kernels are spread over cuda_*.cu by area, like the CPU backend.
#pragma once
#include "framework/backend.h"

namespace ml {

class CudaBackend final : public Backend {
 public:
  const char* name() const override { return "cuda"; }
  void* allocate(size_t nbytes) override;
  void deallocate(void* ptr, size_t nbytes) override;
  void copy_from_host(void* dst, const void* host_src, size_t nbytes) override;
  void copy_to_host(void* host_dst, const void* src, size_t nbytes) override;
  void synchronize() override;

  // cuda_elementwise.cu
  void fill(const Tensor& out, double value) override;
  void copy(const Tensor& src, const Tensor& dst) override;
  void unary(UnaryOp op, const Tensor& x, const Tensor& out, UnaryParams p) override;
  void unary_backward(UnaryOp op, const Tensor& grad_out, const Tensor& x, const Tensor& y, const Tensor& grad_in,
                      UnaryParams p) override;
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void random(const Tensor& out, RandomDist dist, uint64_t seed, uint64_t offset, double a, double b) override;
  void arange(const Tensor& out, double start, double step) override;

  // cuda_reduce.cu
  void reduce_rows(ReduceOp op, const Tensor& x, const Tensor& out, const Tensor& indices) override;
  void topk(const Tensor& x, int64_t k, TopkOrder order, const Tensor& values, const Tensor& indices) override;

  // cuda_linalg.cu
  void gemm(const Tensor& a, const Tensor& b, const Tensor& c, double alpha, double beta, GemmMath math) override;

  // cuda_index.cu
  void index_select(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) override;
  void index_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override;
  void gather(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) override;
  void scatter_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override;

  // cuda_nn.cu
  void softmax(const Tensor& x, const Tensor& y, bool log, bool causal) override;
  void softmax_backward(const Tensor& grad_y, const Tensor& y, const Tensor& grad_x, bool log) override;
  void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const Tensor& y,
                  const Tensor& mean, const Tensor& rstd) override;
  void layer_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& mean,
                           const Tensor& rstd, const Tensor& grad_x, const Tensor& grad_weight,
                           const Tensor& grad_bias) override;
  void rms_norm(const Tensor& x, const Tensor& weight, double eps, const Tensor& y, const Tensor& rstd) override;
  void rms_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                         const Tensor& grad_x, const Tensor& grad_weight) override;
  void normalize_rows(const Tensor& x, double scale, double eps, const Tensor& y) override;
  void cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, double label_smoothing,
                     const Tensor& losses, const Tensor& row_stats) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& row_stats, int64_t ignore_index,
                              double label_smoothing, const Tensor& grad_losses, const Tensor& grad_logits) override;

  // cuda_attention.cu: fused (FlashAttention-style) attention
  bool can_fuse_attention(DType dtype, int64_t head_dim, int64_t value_dim) const override;
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale, const Tensor& out,
                 const Tensor& lse) override;
  void attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                          const Tensor& lse, bool causal, double scale, const Tensor& grad_q, const Tensor& grad_k,
                          const Tensor& grad_v) override;

  // cuda_conv.cu
  void conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, Conv2dParams p) override;
  void conv2d_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                       const Tensor& grad_w, const Tensor& grad_bias, Conv2dParams p) override;
  void max_pool2d(const Tensor& x, const Tensor& y, const Tensor& indices, Pool2dParams p) override;
  void max_pool2d_backward(const Tensor& grad_y, const Tensor& indices, const Tensor& grad_x) override;
  void avg_pool2d(const Tensor& x, const Tensor& y, Pool2dParams p) override;
  void avg_pool2d_backward(const Tensor& grad_y, const Tensor& grad_x, Pool2dParams p) override;
  void batch_norm_stats(const Tensor& x, const Tensor& mean, const Tensor& var) override;
  void batch_norm_apply(const Tensor& x, const Tensor& mean, const Tensor& invstd, const Tensor& weight,
                        const Tensor& bias, std::optional<UnaryOp> activation, const Tensor& y) override;
  void batch_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& mean, const Tensor& invstd,
                           const Tensor& weight, const Tensor& bias, std::optional<UnaryOp> activation,
                           const Tensor& grad_x, const Tensor& grad_weight, const Tensor& grad_bias) override;
  void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                    const AdamWStep& step) override;
};

}  // namespace ml
