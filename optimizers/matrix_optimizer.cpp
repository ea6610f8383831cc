#include "optimizers/matrix_optimizer.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "framework/ops.h"

namespace ml {

UpdateScaling parse_update_scaling(const std::string& name) {
  if (name == "keller") return UpdateScaling::Keller;
  if (name == "moonlight") return UpdateScaling::Moonlight;
  if (name == "spectral") return UpdateScaling::Spectral;
  throw std::invalid_argument("unknown update scaling '" + name + "' (expected keller, moonlight or spectral)");
}

double update_scale(UpdateScaling scaling, int64_t rows, int64_t cols) {
  const double m = static_cast<double>(rows), n = static_cast<double>(cols);
  switch (scaling) {
    case UpdateScaling::Keller: return std::sqrt(std::max(1.0, m / n));
    case UpdateScaling::Moonlight: return 0.2 * std::sqrt(std::max(m, n));
    case UpdateScaling::Spectral: return std::sqrt(m / n);
  }
  return 1.0;
}

NsSchedule schedule_from_spec(const OptimizerSpec& spec, int64_t default_steps, const std::string& default_coefficients,
                              bool aol) {
  return ns_schedule(spec.ns_coefficients.empty() ? default_coefficients : spec.ns_coefficients,
                     spec.ns_steps > 0 ? spec.ns_steps : default_steps, aol);
}

UpdateScaling scaling_from_spec(const OptimizerSpec& spec, UpdateScaling method_default) {
  return spec.scaling.empty() ? method_default : parse_update_scaling(spec.scaling);
}

MatrixOptimizer::MatrixOptimizer(std::string kind, std::vector<NamedParam> params, double lr, double weight_decay)
    : Optimizer(std::move(kind), std::move(params), lr), weight_decay_(weight_decay) {
  for (const NamedParam& p : this->params())
    if ((p.param.dim() != 2 && p.param.dim() != 4) || !p.param.is_contiguous())
      throw std::invalid_argument(this->kind() + ": parameter '" + p.name + "' " + shape_str(p.param.shape()) +
                                  " must be a contiguous 2-D matrix or 4-D conv filter");
}

Shape MatrixOptimizer::matrix_shape(size_t index) const {
  const Tensor& p = params()[index].param;
  return {p.size(0), p.numel() / p.size(0)};
}

Tensor MatrixOptimizer::add_matrix_buffer(size_t index, const std::string& buffer) {
  const Tensor& p = params()[index].param;
  return add_buffer(params()[index].name, buffer, zeros(matrix_shape(index), p.dtype(), p.device()));
}

void MatrixOptimizer::decay_weight(Tensor& weight) const {
  if (weight_decay_ != 0.0) mul_(weight, 1.0 - lr() * weight_decay_);
}

void MatrixOptimizer::step_impl() {
  for (size_t i = 0; i < params().size(); ++i) {
    const Tensor& param = params()[i].param;
    const Tensor grad = param.grad();
    if (!grad.defined()) continue;
    const Shape shape = matrix_shape(i);
    Tensor weight = param.view(shape);
    update_matrix(i, weight, grad.reshape(shape));
  }
}

}  // namespace ml
