#include "framework/distributed/data_parallel.h"

#include <stdexcept>

#include "framework/autograd.h"
#include "framework/ops.h"

namespace ml {

void reduce_gradients(Communicator& comm, const std::vector<Tensor>& params, int64_t bucket_bytes) {
  if (comm.size() == 1) return;
  NoGradGuard no_grad;
  std::vector<double> has_grad(params.size());
  for (size_t i = 0; i < params.size(); ++i) has_grad[i] = params[i].grad().defined() ? 1.0 : 0.0;
  const std::vector<double> any_has_grad = all_reduce_values(comm, has_grad, ReduceOp::Max);

  std::vector<size_t> bucket;
  const auto flush = [&] {
    if (bucket.empty()) return;
    const Tensor& first = params[bucket.front()];
    int64_t total = 0;
    for (const size_t i : bucket) total += params[i].numel();
    Tensor flat = zeros({total}, first.dtype(), first.device());
    int64_t offset = 0;
    for (const size_t i : bucket) {
      const Tensor grad = params[i].grad();
      Tensor slot = flat.narrow(0, offset, params[i].numel()).view(params[i].shape());
      if (grad.defined()) copy_(slot, grad);
      offset += params[i].numel();
    }
    comm.all_reduce(flat);
    offset = 0;
    for (const size_t i : bucket) {
      Tensor grad = params[i].grad();
      const Tensor slot = flat.narrow(0, offset, params[i].numel()).view(params[i].shape());
      if (grad.defined()) {
        copy_(grad, slot);
      } else {
        Tensor param = params[i];  // a handle: the gradient lands on the shared tensor
        param.set_grad(slot.clone());
      }
      offset += params[i].numel();
    }
    bucket.clear();
  };
  int64_t bucket_size = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    if (any_has_grad[i] == 0.0) continue;  // no rank has a gradient for it: it stays without one
    const Tensor& param = params[i];
    const int64_t bytes = param.numel() * static_cast<int64_t>(dtype_size(param.dtype()));
    const bool fits = !bucket.empty() && bucket_size + bytes <= bucket_bytes &&
                      params[bucket.front()].dtype() == param.dtype() &&
                      params[bucket.front()].device() == param.device();
    if (!fits) {
      flush();
      bucket_size = 0;
    }
    bucket.push_back(i);
    bucket_size += bytes;
  }
  flush();
}

}  // namespace ml
