#include "framework/autograd.h"

#include <stdexcept>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "framework/ops/creation.h"
#include "framework/ops/elementwise.h"
#include "framework/ops/reduce.h"

namespace ml {

namespace {
thread_local bool g_grad_enabled = true;
}

bool grad_enabled() { return g_grad_enabled; }

NoGradGuard::NoGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = previous_; }

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

void record(Tensor& output, const char* op, std::vector<Tensor> inputs, BackwardFn backward,
            AccumulateFn accumulate) {
  if (accumulate && inputs.size() != 1)
    throw std::logic_error(std::string("record: ") + op + " has an accumulate function but not exactly one input");
  auto node = std::make_shared<Node>();
  node->op = op;
  node->inputs = std::move(inputs);
  node->backward = std::move(backward);
  node->accumulate = std::move(accumulate);
  output.impl()->grad_fn = std::move(node);
  output.impl()->requires_grad = true;
}

Tensor sum_to_shape(const Tensor& grad, const Shape& shape) {
  if (grad.shape() == shape) return grad;
  const int64_t lead = grad.dim() - static_cast<int64_t>(shape.size());
  std::vector<int64_t> axes;
  for (int64_t d = 0; d < grad.dim(); ++d)
    if (d < lead || (shape[d - lead] == 1 && grad.size(d) != 1)) axes.push_back(d);
  return sum(grad, axes, /*keepdim=*/true).reshape(shape);
}

// Whether `grad` is the only handle on its memory, so that it may be added into in place: no other
// tensor (a gradient handed to two inputs, a view) sees the change.
static bool owns_its_memory(const Tensor& grad) {
  return grad.impl_ptr().use_count() == 1 && grad.storage().use_count() == 1 && grad.is_contiguous();
}

// Whether `term` may be added into the collected gradient `sum` in place: sum is the only handle
// on its memory, and of term's dtype (an in-place add keeps sum's dtype where add() would promote).
static bool can_add_in_place(const Tensor& sum, const Tensor& term) {
  return owns_its_memory(sum) && sum.dtype() == term.dtype();
}

static const std::shared_ptr<Node>& freed_marker() {
  static const auto marker = std::make_shared<Node>(Node{"freed", {}, [](const Tensor&) -> Grads {
    throw std::runtime_error("backward: trying to backward through a graph a second time (it was freed by the first "
                             "backward; recompute the forward pass)");
  }, nullptr});
  return marker;
}

// Reverse topological order of the tensors that require grad, found with an explicit stack
// so that deep graphs (long sequences of ops) cannot overflow the call stack. The list owns its
// tensors: freeing a node during backward must not free a tensor still waiting in the list.
static std::vector<std::shared_ptr<TensorImpl>> topological_order(const std::shared_ptr<TensorImpl>& root) {
  std::vector<std::shared_ptr<TensorImpl>> order;
  std::unordered_set<TensorImpl*> visited{root.get()};
  std::vector<std::pair<std::shared_ptr<TensorImpl>, size_t>> stack{{root, 0}};
  while (!stack.empty()) {
    const std::shared_ptr<TensorImpl> impl = stack.back().first;
    const size_t next_input = stack.back().second;
    if (impl->grad_fn && next_input < impl->grad_fn->inputs.size()) {
      ++stack.back().second;
      const std::shared_ptr<TensorImpl>& child = impl->grad_fn->inputs[next_input].impl_ptr();
      if (child && child->requires_grad && visited.insert(child.get()).second) stack.push_back({child, 0});
    } else {
      order.push_back(impl);
      stack.pop_back();
    }
  }
  return {order.rbegin(), order.rend()};
}

void Tensor::backward(const Tensor& grad_output) const {
  if (!requires_grad()) throw std::invalid_argument("backward: tensor does not require grad (no graph was recorded)");
  Tensor seed = grad_output;
  if (!seed.defined()) {
    if (numel() != 1)
      throw std::invalid_argument("backward: expected a scalar loss, got shape " + shape_str(shape()) +
                                  " (pass grad_output for non-scalar outputs)");
    seed = ones_like(*this);
  } else if (seed.shape() != shape()) {
    throw std::invalid_argument("backward: grad_output shape " + shape_str(seed.shape()) + " differs from tensor " +
                                shape_str(shape()));
  }

  NoGradGuard no_grad;
  std::unordered_map<TensorImpl*, Tensor> grads{{impl(), seed}};
  for (const std::shared_ptr<TensorImpl>& owner : topological_order(impl_)) {
    TensorImpl* impl = owner.get();
    auto it = grads.find(impl);
    if (it == grads.end()) continue;
    Tensor grad = std::move(it->second);
    grads.erase(it);
    if (!impl->grad_fn) {  // a leaf: accumulate into .grad
      // A gradient handed straight through (add's backward returns the same tensor twice) may share
      // storage with another leaf's; clone it so optimizers can modify .grad in place.
      impl->grad = impl->grad ? add(Tensor(impl->grad), grad).impl_ptr()
                              : (owns_its_memory(grad) ? grad : grad.clone()).impl_ptr();
      continue;
    }
    // Swapping in the "freed" marker releases this node's saved tensors as we go, and makes a
    // second backward through the same graph fail loudly instead of silently stopping here.
    std::shared_ptr<Node> node = std::exchange(impl->grad_fn, freed_marker());
    if (node->accumulate && node->inputs[0].requires_grad()) {
      const auto collected = grads.find(node->inputs[0].impl());
      if (collected != grads.end() && can_add_in_place(collected->second, grad)) {
        node->accumulate(grad, collected->second);
        continue;
      }
    }
    Grads input_grads = node->backward(grad);
    if (input_grads.size() != node->inputs.size())
      throw std::logic_error(std::string("backward of ") + node->op + " returned the wrong number of gradients");
    for (size_t i = 0; i < input_grads.size(); ++i) {
      const Tensor& input = node->inputs[i];
      if (!input.defined() || !input.requires_grad() || !input_grads[i].defined()) continue;
      Tensor g = sum_to_shape(input_grads[i], input.shape());
      auto [slot, inserted] = grads.try_emplace(input.impl(), g);
      if (inserted) continue;
      if (can_add_in_place(slot->second, g))
        add_(slot->second, g);  // no new tensor: the sum lands in memory that is already warm
      else
        slot->second = add(slot->second, g);
    }
  }
}

}  // namespace ml
