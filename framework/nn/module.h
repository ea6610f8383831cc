// Module: a tree of layers that owns parameters and buffers (torch.nn.Module).
// A module registers its tensors and children by name; the recursive listings use dotted
// names ("blocks.0.attn.qkv.weight") in registration order, which are also the names that
// save_weights/load_weights use. Tensors are handles onto shared TensorImpls, so a layer keeps
// the handle returned by register_parameter as a member and uses it directly in forward().
#pragma once
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "framework/tensor.h"

namespace ml {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  // Copying would silently share (or not share) parameters; clone a model by saving and loading.
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Marks `tensor` as requiring grad and returns it (the same TensorImpl).
  Tensor register_parameter(const std::string& name, Tensor tensor);
  // State that is saved and moved with the module but not trained (e.g. running statistics).
  Tensor register_buffer(const std::string& name, Tensor tensor);
  // Points an existing parameter registration at `tensor` (same shape) and returns it: how a
  // model ties weights, e.g. head->weight = head->replace_parameter("weight", embed->weight).
  // The layer's member handle must be updated with the result, as in that example.
  Tensor replace_parameter(const std::string& name, Tensor tensor);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    if (!module) throw std::invalid_argument("register_module: module '" + name + "' is null");
    add_child(name, module);
    return module;
  }

  // Recursive listings with dotted names, in registration order (own tensors before children's).
  // A tensor registered in several places (weight tying) appears once, under its first name.
  NamedTensors named_parameters() const;
  std::vector<Tensor> parameters() const;
  NamedTensors named_buffers() const;
  // Parameters then buffers: what save_weights writes.
  NamedTensors state_dict() const;
  // This module's own tensors and direct children (not recursive), in registration order.
  const NamedTensors& own_parameters() const { return parameters_; }
  const NamedTensors& own_buffers() const { return buffers_; }
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }

  // Training mode (dropout active, batch norm using batch statistics), set on the whole tree.
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Drops every parameter's gradient.
  void zero_grad();
  // Total elements over the (de-duplicated) parameters.
  int64_t num_parameters() const;
  // Moves every parameter, buffer and gradient to `device` in place: the TensorImpls stay the
  // same, only their storage is replaced, so handles held elsewhere (optimizers) remain valid.
  void to(Device device);

 private:
  void add_child(const std::string& name, std::shared_ptr<Module> module);
  void check_new_name(const std::string& kind, const std::string& name) const;

  bool training_ = true;
  NamedTensors parameters_;
  NamedTensors buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

// A layer mapping one tensor to one tensor, usable in Sequential.
class UnaryModule : public Module {
 public:
  virtual Tensor forward(const Tensor& input) = 0;
  Tensor operator()(const Tensor& input) { return forward(input); }
};

}  // namespace ml
