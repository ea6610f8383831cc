#include "framework/ops/nn_conv.h"

#include <optional>
#include <string>

#include "framework/ops/elementwise.h"
#include "framework/ops/op_utils.h"
#include "framework/ops/reduce.h"

namespace ml {
using detail::empty_like;
using detail::op_error;

namespace {

std::string str(int64_t v) { return std::to_string(v); }

void check_image(const char* op, const Tensor& x) {
  detail::check_floating(op, x);
  if (x.dim() != 4) op_error(op, "expected an input [N, C, H, W], got " + shape_str(x.shape()));
}

// A [C] per-channel parameter of x (undefined is allowed).
void check_channel_vector(const char* op, const char* name, const Tensor& t, const Tensor& x) {
  if (!t.defined()) return;
  detail::check_compatible(op, x, t);
  if (t.dim() != 1 || t.size(0) != x.size(1))
    op_error(op, std::string(name) + " " + shape_str(t.shape()) + " does not match the " + str(x.size(1)) +
                     " channels of input " + shape_str(x.shape()));
}

// Output length of a window sliding over `size` (padded by `pad` on both sides).
int64_t sliding_output(const char* op, const Tensor& x, int64_t size, int64_t kernel, int64_t stride, int64_t pad,
                       const char* axis) {
  if (kernel < 1 || stride < 1 || pad < 0)
    op_error(op, std::string("invalid ") + axis + " geometry: kernel " + str(kernel) + ", stride " + str(stride) +
                     ", padding " + str(pad));
  if (size + 2 * pad < kernel)
    op_error(op, std::string("kernel ") + axis + " " + str(kernel) + " is larger than the padded input " + axis + " " +
                     str(size + 2 * pad) + " of input " + shape_str(x.shape()));
  return (size + 2 * pad - kernel) / stride + 1;
}

Tensor contiguous_or_undefined(const Tensor& t) { return t.defined() ? t.contiguous() : t; }

Tensor pool_output(const char* op, const Tensor& x, const Pool2dParams& p) {
  check_image(op, x);
  // PyTorch's rule: a window more than half padding could hold no input at all.
  if (2 * p.pad_h > p.kernel_h || 2 * p.pad_w > p.kernel_w)
    op_error(op, "padding " + str(p.pad_h) + "x" + str(p.pad_w) + " exceeds half the kernel " + str(p.kernel_h) + "x" +
                     str(p.kernel_w));
  const int64_t out_h = sliding_output(op, x, x.size(2), p.kernel_h, p.stride_h, p.pad_h, "height");
  const int64_t out_w = sliding_output(op, x, x.size(3), p.kernel_w, p.stride_w, p.pad_w, "width");
  return Tensor::empty({x.size(0), x.size(1), out_h, out_w}, x.dtype(), x.device());
}

Pool2dParams square_pool(int64_t kernel, int64_t stride, int64_t padding) {
  const int64_t s = stride == 0 ? kernel : stride;
  return {kernel, kernel, s, s, padding, padding};
}

}  // namespace

// ---------------------------------------------------------------- convolution

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Conv2dParams p) {
  check_image("conv2d", x);
  detail::check_compatible("conv2d", x, weight);
  if (weight.dim() != 4)
    op_error("conv2d", "expected a weight [Cout, Cin, kh, kw], got " + shape_str(weight.shape()));
  if (x.size(1) == 0) op_error("conv2d", "input " + shape_str(x.shape()) + " has no channels");
  if (weight.size(1) != x.size(1))
    op_error("conv2d", "input " + shape_str(x.shape()) + " has " + str(x.size(1)) + " channels but weight " +
                           shape_str(weight.shape()) + " expects " + str(weight.size(1)));
  if (bias.defined()) {
    detail::check_compatible("conv2d", x, bias);
    if (bias.dim() != 1 || bias.size(0) != weight.size(0))
      op_error("conv2d", "bias " + shape_str(bias.shape()) + " does not match weight " + shape_str(weight.shape()));
  }
  const int64_t out_h = sliding_output("conv2d", x, x.size(2), weight.size(2), p.stride_h, p.pad_h, "height");
  const int64_t out_w = sliding_output("conv2d", x, x.size(3), weight.size(3), p.stride_w, p.pad_w, "width");

  const Tensor xc = x.contiguous(), wc = weight.contiguous(), bc = contiguous_or_undefined(bias);
  Tensor y = Tensor::empty({x.size(0), weight.size(0), out_h, out_w}, x.dtype(), x.device());
  backend_of(x).conv2d(xc, wc, bc, y, p);
  if (needs_grad(xc, wc, bc))
    record(y, "conv2d", {xc, wc, bc}, [xc, wc, bc, p](const Tensor& g) {
      const Tensor gx = xc.requires_grad() ? empty_like(xc) : Tensor();
      const Tensor gw = wc.requires_grad() ? empty_like(wc) : Tensor();
      const Tensor gb = bc.defined() && bc.requires_grad() ? empty_like(bc) : Tensor();
      backend_of(g).conv2d_backward(g.contiguous(), xc, wc, gx, gw, gb, p);
      return Grads{gx, gw, gb};
    });
  return y;
}

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride, int64_t padding) {
  return conv2d(x, weight, bias, Conv2dParams{stride, stride, padding, padding});
}

// ---------------------------------------------------------------- pooling

Tensor max_pool2d(const Tensor& x, Pool2dParams p) {
  Tensor y = pool_output("max_pool2d", x, p);
  const Tensor xc = x.contiguous();
  const Tensor indices = Tensor::empty(y.shape(), DType::Int64, x.device());
  backend_of(x).max_pool2d(xc, y, indices, p);
  if (needs_grad(xc))
    record(y, "max_pool2d", {xc}, [xc, indices](const Tensor& g) {
      const Tensor gx = empty_like(xc);
      backend_of(g).max_pool2d_backward(g.contiguous(), indices, gx);
      return Grads{gx};
    });
  return y;
}

Tensor max_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding) {
  return max_pool2d(x, square_pool(kernel, stride, padding));
}

Tensor avg_pool2d(const Tensor& x, Pool2dParams p) {
  Tensor y = pool_output("avg_pool2d", x, p);
  const Tensor xc = x.contiguous();
  backend_of(x).avg_pool2d(xc, y, p);
  if (needs_grad(xc))
    record(y, "avg_pool2d", {xc}, [xc, p](const Tensor& g) {
      const Tensor gx = empty_like(xc);
      backend_of(g).avg_pool2d_backward(g.contiguous(), gx, p);
      return Grads{gx};
    });
  return y;
}

Tensor avg_pool2d(const Tensor& x, int64_t kernel, int64_t stride, int64_t padding) {
  return avg_pool2d(x, square_pool(kernel, stride, padding));
}

// A window over the whole plane: the gradient goes to one maximum, like adaptive_max_pool2d.
Tensor global_max_pool2d(const Tensor& x) {
  check_image("global_max_pool2d", x);
  const Tensor pooled = max_pool2d(x, Pool2dParams{x.size(2), x.size(3), 1, 1, 0, 0});
  return pooled.reshape({x.size(0), x.size(1)});
}

Tensor global_avg_pool2d(const Tensor& x) {
  check_image("global_avg_pool2d", x);
  return mean(x, {2, 3});
}

// ---------------------------------------------------------------- batch normalization

Tensor batch_norm2d(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                    const Tensor& bias, bool training, double momentum, double eps, std::optional<UnaryOp> activation) {
  const char* op = "batch_norm2d";
  check_image(op, x);
  check_channel_vector(op, "weight", weight, x);
  check_channel_vector(op, "bias", bias, x);
  check_channel_vector(op, "running_mean", running_mean, x);
  check_channel_vector(op, "running_var", running_var, x);
  if (running_mean.defined() != running_var.defined())
    op_error(op, "running_mean and running_var must both be given or both be undefined");
  if (eps <= 0) op_error(op, "eps must be positive, got " + std::to_string(eps));
  if (activation) checked_activation_name(op, *activation);
  const int64_t channels = x.size(1), count = x.size(0) * x.size(2) * x.size(3);
  const Tensor xc = x.contiguous(), wc = contiguous_or_undefined(weight), bc = contiguous_or_undefined(bias);
  Tensor y = empty_like(xc);

  if (!training) {
    if (!running_mean.defined()) op_error(op, "evaluation mode needs running_mean and running_var");
    Tensor mean_used, invstd;
    {
      NoGradGuard no_grad;  // running statistics are buffers, never differentiated
      mean_used = running_mean.contiguous();
      invstd = rsqrt(add(running_var, eps)).contiguous();
    }
    backend_of(x).batch_norm_apply(xc, mean_used, invstd, wc, bc, std::nullopt, y);
    // With fixed statistics the layer is a per-channel affine map: y = x * scale + shift.
    if (needs_grad(xc, wc, bc))
      record(y, op, {xc, wc, bc}, [xc, wc, bc, mean_used, invstd, channels](const Tensor& g) {
        const Shape per_channel{1, channels, 1, 1};
        const Tensor scale = wc.defined() ? mul(invstd, wc) : invstd;
        const Tensor gx = xc.requires_grad() ? mul(g, scale.reshape(per_channel)) : Tensor();
        const Tensor gw = wc.defined() && wc.requires_grad()
                              ? mul(sum(mul(g, sub(xc, mean_used.reshape(per_channel))), {0, 2, 3}), invstd)
                              : Tensor();
        const Tensor gb = bc.defined() && bc.requires_grad() ? sum(g, {0, 2, 3}) : Tensor();
        return Grads{gx, gw, gb};
      });
    // Evaluation applies the activation as an op of its own: only training needs the fused pass.
    return activation ? ml::activation(*activation, y) : y;
  }

  if (count < 2)
    op_error(op, "training needs more than one value per channel, got input " + shape_str(x.shape()));
  const Tensor batch_mean = Tensor::empty({channels}, x.dtype(), x.device());
  const Tensor batch_var = Tensor::empty({channels}, x.dtype(), x.device());
  backend_of(x).batch_norm_stats(xc, batch_mean, batch_var);
  Tensor invstd;
  {
    NoGradGuard no_grad;
    invstd = rsqrt(add(batch_var, eps));
    if (running_mean.defined()) {
      Tensor rm = running_mean, rv = running_var;
      const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
      mul_(rm, 1.0 - momentum);
      add_(rm, batch_mean, momentum);
      mul_(rv, 1.0 - momentum);
      add_(rv, batch_var, momentum * unbias);
    }
  }
  backend_of(x).batch_norm_apply(xc, batch_mean, invstd, wc, bc, activation, y);
  if (needs_grad(xc, wc, bc))
    record(y, op, {xc, wc, bc}, [xc, wc, bc, batch_mean, invstd, activation](const Tensor& g) {
      const Tensor gx = xc.requires_grad() ? empty_like(xc) : Tensor();
      const Tensor gw = wc.defined() && wc.requires_grad() ? empty_like(wc) : Tensor();
      const Tensor gb = bc.defined() && bc.requires_grad() ? empty_like(bc) : Tensor();
      backend_of(g).batch_norm_backward(g.contiguous(), xc, batch_mean, invstd, wc, bc, activation, gx, gw, gb);
      return Grads{gx, gw, gb};
    });
  return y;
}

}  // namespace ml
