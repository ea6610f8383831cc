#include "framework/nn/module.h"

#include <unordered_set>

namespace ml {
namespace {

using OwnTensors = const NamedTensors& (Module::*)() const;

// Depth-first walk in registration order; `seen` de-duplicates tensors shared between modules.
void collect(const Module& module, const std::string& prefix, OwnTensors own, std::unordered_set<TensorImpl*>& seen,
             NamedTensors& out) {
  for (const auto& [name, tensor] : (module.*own)())
    if (seen.insert(tensor.impl()).second) out.emplace_back(prefix + name, tensor);
  for (const auto& [name, child] : module.children()) collect(*child, prefix + name + ".", own, seen, out);
}

NamedTensors collect(const Module& module, OwnTensors own) {
  std::unordered_set<TensorImpl*> seen;
  NamedTensors out;
  collect(module, "", own, seen, out);
  return out;
}

// Replaces the storage behind `tensor` with a copy on `device`, keeping its TensorImpl.
void move_in_place(const Tensor& tensor, Device device) {
  if (tensor.device() == device) return;
  const Tensor moved = tensor.detach().contiguous().to(device);
  TensorImpl* impl = tensor.impl();
  impl->storage = moved.storage();
  impl->strides = moved.strides();
  impl->offset = moved.offset();
  if (impl->grad) move_in_place(Tensor(impl->grad), device);
}

}  // namespace

void Module::check_new_name(const std::string& kind, const std::string& name) const {
  if (name.empty() || name.find('.') != std::string::npos)
    throw std::invalid_argument("register_" + kind + ": invalid name '" + name + "' (must be non-empty without '.')");
  auto taken = [&](const auto& list) {
    for (const auto& entry : list)
      if (entry.first == name) return true;
    return false;
  };
  if (taken(parameters_) || taken(buffers_) || taken(children_))
    throw std::invalid_argument("register_" + kind + ": name '" + name + "' is already registered");
}

Tensor Module::register_parameter(const std::string& name, Tensor tensor) {
  check_new_name("parameter", name);
  if (!tensor.defined()) throw std::invalid_argument("register_parameter: tensor '" + name + "' is undefined");
  if (!tensor.is_leaf())
    throw std::invalid_argument("register_parameter: tensor '" + name + "' has history; register a leaf (detach it)");
  tensor.requires_grad_(true);
  parameters_.emplace_back(name, tensor);
  return tensor;
}

Tensor Module::replace_parameter(const std::string& name, Tensor tensor) {
  for (auto& entry : parameters_) {
    if (entry.first != name) continue;
    if (!tensor.defined() || tensor.shape() != entry.second.shape())
      throw std::invalid_argument("replace_parameter: parameter '" + name + "' is " +
                                  shape_str(entry.second.shape()) + ", the replacement is " +
                                  (tensor.defined() ? shape_str(tensor.shape()) : std::string("undefined")));
    tensor.requires_grad_(true);
    entry.second = tensor;
    return tensor;
  }
  throw std::invalid_argument("replace_parameter: parameter '" + name + "' is not registered");
}

Tensor Module::register_buffer(const std::string& name, Tensor tensor) {
  check_new_name("buffer", name);
  if (!tensor.defined()) throw std::invalid_argument("register_buffer: tensor '" + name + "' is undefined");
  buffers_.emplace_back(name, tensor);
  return tensor;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> module) {
  check_new_name("module", name);
  children_.emplace_back(name, std::move(module));
}

NamedTensors Module::named_parameters() const { return collect(*this, &Module::own_parameters); }

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& entry : named_parameters()) out.push_back(std::move(entry.second));
  return out;
}

NamedTensors Module::named_buffers() const { return collect(*this, &Module::own_buffers); }

NamedTensors Module::state_dict() const {
  NamedTensors out = named_parameters();
  for (auto& entry : named_buffers()) out.push_back(std::move(entry));
  return out;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& entry : children_) entry.second->train(on);
}

void Module::zero_grad() {
  for (Tensor& p : parameters()) p.zero_grad();
}

int64_t Module::num_parameters() const {
  int64_t total = 0;
  for (const Tensor& p : parameters()) total += p.numel();
  return total;
}

void Module::to(Device device) {
  for (const auto& entry : state_dict()) move_in_place(entry.second, device);
}

}  // namespace ml
