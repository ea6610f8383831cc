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

struct Node {
  const char* op;              // for error messages and graph dumps
  std::vector<Tensor> inputs;  // the edges of the graph
  BackwardFn backward;
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
void record(Tensor& output, const char* op, std::vector<Tensor> inputs, BackwardFn backward);

// Sums a broadcast gradient back down to `shape` (the reverse of NumPy broadcasting).
Tensor sum_to_shape(const Tensor& grad, const Shape& shape);

}  // namespace ml
