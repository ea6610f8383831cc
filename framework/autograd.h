// Define-by-run autograd. Every differentiable op computes its output, then (when grad mode is
// on and an input requires grad) records a Node holding its inputs and a closure that maps the
// output's gradient to one gradient per input. Tensor::backward() walks the recorded graph in
// reverse topological order and frees it as it goes.
#pragma once
#include <functional>
#include <initializer_list>
#include <vector>

#include "framework/tensor.h"

namespace ml {

using Grads = std::vector<Tensor>;  // one entry per input; an undefined Tensor means "no gradient"
using BackwardFn = std::function<Grads(const Tensor& grad_output)>;
// Adds a one-input node's gradient contribution into the gradient its input has already
// collected, in place. For views that cover part of their input (narrow): the backward pass
// would build an input-sized zero tensor holding grad_output in the view's place and then sum it
// with the collected one, where this writes only the view's part.
using AccumulateFn = std::function<void(const Tensor& grad_output, const Tensor& input_grad)>;

struct Node {
  const char* op;              // for error messages and graph dumps
  std::vector<Tensor> inputs;  // the edges of the graph
  BackwardFn backward;
  AccumulateFn accumulate;     // optional, one-input nodes only: used when the input's gradient exists
};

// Whether ops record history on this thread (torch.is_grad_enabled()).
bool grad_enabled();

// RAII scope that disables recording (torch.no_grad()).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// True when grad mode is on and some input requires grad: the op must record a Node.
bool needs_grad(std::initializer_list<const Tensor*> inputs);
inline bool needs_grad(const Tensor& a) { return needs_grad({&a}); }
inline bool needs_grad(const Tensor& a, const Tensor& b) { return needs_grad({&a, &b}); }
inline bool needs_grad(const Tensor& a, const Tensor& b, const Tensor& c) { return needs_grad({&a, &b, &c}); }

// Attaches a backward Node to `output`. A closure that needs the output itself must capture
// output.detach(), never `output`, or the node would keep itself alive.
// `accumulate` (optional, one input only): see AccumulateFn.
void record(Tensor& output, const char* op, std::vector<Tensor> inputs, BackwardFn backward,
            AccumulateFn accumulate = nullptr);

// Sums a broadcast gradient back down to `shape` (the reverse of NumPy broadcasting).
Tensor sum_to_shape(const Tensor& grad, const Shape& shape);

}  // namespace ml
