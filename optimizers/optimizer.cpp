#include "optimizers/optimizer.h"

#include <stdexcept>

#include "framework/autograd.h"
#include "framework/ops/elementwise.h"

namespace ml {

Optimizer::Optimizer(std::string kind, std::vector<NamedParam> params, double lr)
    : kind_(std::move(kind)), params_(std::move(params)), base_lr_(lr) {
  if (!(lr >= 0.0)) throw std::invalid_argument(kind_ + ": learning rate must be >= 0, got " + std::to_string(lr));
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].param.defined())
      throw std::invalid_argument(kind_ + ": parameter '" + params_[i].name + "' is undefined");
    for (size_t j = 0; j < i; ++j)
      if (params_[j].name == params_[i].name || params_[j].param.is_same(params_[i].param))
        throw std::invalid_argument(kind_ + ": parameter '" + params_[i].name + "' is listed twice (as '" +
                                    params_[j].name + "')");
  }
}

void check_betas(const std::string& kind, const std::array<double, 2>& betas) {
  if (!(betas[0] >= 0.0 && betas[0] < 1.0 && betas[1] >= 0.0 && betas[1] < 1.0))
    throw std::invalid_argument(kind + ": betas must lie in [0, 1), got " + std::to_string(betas[0]) + ", " +
                                std::to_string(betas[1]));
}

void Optimizer::step() {
  NoGradGuard no_grad;
  step_impl();
}

void Optimizer::zero_grad() {
  for (NamedParam& p : params_) p.param.zero_grad();
}

void Optimizer::set_lr_scale(double scale) {
  if (!(scale >= 0.0)) throw std::invalid_argument(kind_ + ": lr scale must be >= 0, got " + std::to_string(scale));
  lr_scale_ = scale;
}

void Optimizer::decay_weight(Tensor& weight, double weight_decay) const {
  if (weight_decay != 0.0) mul_(weight, 1.0 - lr() * weight_decay);
}

Tensor Optimizer::add_buffer(const std::string& owner, const std::string& buffer, const Tensor& initial) {
  const std::string key = owner + "." + buffer;
  if (buffers_.count(key) || counters_.count(key)) throw std::logic_error(kind_ + ": state entry '" + key + "' registered twice");
  buffers_[key] = initial;
  return initial;
}

int64_t& Optimizer::add_counter(const std::string& key) {
  if (buffers_.count(key) || counters_.count(key)) throw std::logic_error(kind_ + ": state entry '" + key + "' registered twice");
  return counters_[key] = 0;
}

StateDict Optimizer::state_dict() const {
  StateDict state;
  for (const auto& [key, buffer] : buffers_) state[key] = buffer.clone();
  for (const auto& [key, value] : counters_) state[key] = Tensor::from_data<int64_t>(&value, {});
  return state;
}

void Optimizer::load_state_dict(const StateDict& state) {
  std::string problems;
  auto report = [&](const std::string& what) { problems += (problems.empty() ? "" : "; ") + what; };
  for (const auto& [key, buffer] : buffers_) {
    const auto it = state.find(key);
    if (it == state.end()) {
      report("missing '" + key + "'");
    } else if (!it->second.defined() || it->second.shape() != buffer.shape() || it->second.dtype() != buffer.dtype()) {
      report("'" + key + "' is " + (it->second.defined() ? it->second.str() : "undefined") + ", expected " +
             shape_str(buffer.shape()) + " " + dtype_name(buffer.dtype()));
    }
  }
  for (const auto& [key, value] : counters_) {
    const auto it = state.find(key);
    if (it == state.end())
      report("missing '" + key + "'");
    else if (!it->second.defined() || it->second.numel() != 1 || it->second.dtype() != DType::Int64)
      report("counter '" + key + "' must be a one-element int64 tensor, got " +
             (it->second.defined() ? it->second.str() : "undefined"));
  }
  for (const auto& [key, tensor] : state)
    if (!buffers_.count(key) && !counters_.count(key)) report("unexpected '" + key + "'");
  if (!problems.empty()) throw std::runtime_error(kind_ + ": load_state_dict: " + problems);

  NoGradGuard no_grad;
  for (auto& [key, buffer] : buffers_) copy_(buffer, state.at(key));
  for (auto& [key, value] : counters_) value = state.at(key).to_vector<int64_t>().front();
}

}  // namespace ml
