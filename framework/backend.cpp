#include "framework/backend.h"

#include <stdexcept>
#include <string>

#include "framework/backends/cpu/cpu_backend.h"
#ifdef MUONLAB_WITH_CUDA
#include "framework/backends/cuda/cuda_backend.h"
#include "framework/backends/cuda/cuda_runtime_probe.h"
#endif

namespace ml {

void Backend::unsupported(const char* kernel) const {
  throw std::runtime_error(std::string(name()) + " backend does not implement " + kernel);
}

// Every kernel defaults to "unsupported" so that a backend can be brought up op by op.
void Backend::fill(const Tensor&, double) { unsupported("fill"); }
void Backend::copy(const Tensor&, const Tensor&) { unsupported("copy"); }
void Backend::unary(UnaryOp, const Tensor&, const Tensor&, UnaryParams) { unsupported("unary"); }
void Backend::unary_backward(UnaryOp, const Tensor&, const Tensor&, const Tensor&, const Tensor&, UnaryParams) {
  unsupported("unary_backward");
}
void Backend::binary(BinaryOp, const Tensor&, const Tensor&, const Tensor&) { unsupported("binary"); }
void Backend::where(const Tensor&, const Tensor&, const Tensor&, const Tensor&) { unsupported("where"); }
void Backend::random(const Tensor&, RandomDist, uint64_t, uint64_t, double, double) { unsupported("random"); }
void Backend::arange(const Tensor&, double, double) { unsupported("arange"); }
void Backend::reduce_rows(ReduceOp, const Tensor&, const Tensor&, const Tensor&) { unsupported("reduce_rows"); }
void Backend::topk(const Tensor&, int64_t, TopkOrder, const Tensor&, const Tensor&) { unsupported("topk"); }
void Backend::gemm(const Tensor&, const Tensor&, const Tensor&, double, double, GemmMath) { unsupported("gemm"); }
void Backend::index_select(const Tensor&, int64_t, const Tensor&, const Tensor&) { unsupported("index_select"); }
void Backend::index_add(const Tensor&, int64_t, const Tensor&, const Tensor&) { unsupported("index_add"); }
void Backend::gather(const Tensor&, int64_t, const Tensor&, const Tensor&) { unsupported("gather"); }
void Backend::scatter_add(const Tensor&, int64_t, const Tensor&, const Tensor&) { unsupported("scatter_add"); }
void Backend::softmax(const Tensor&, const Tensor&, bool, bool) { unsupported("softmax"); }
void Backend::softmax_backward(const Tensor&, const Tensor&, const Tensor&, bool) { unsupported("softmax_backward"); }
void Backend::attention(const Tensor&, const Tensor&, const Tensor&, bool, double, const Tensor&, const Tensor&) {
  unsupported("attention");
}
void Backend::attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                 const Tensor&, bool, double, const Tensor&, const Tensor&, const Tensor&) {
  unsupported("attention_backward");
}
void Backend::layer_norm(const Tensor&, const Tensor&, const Tensor&, double, const Tensor&, const Tensor&,
                         const Tensor&) {
  unsupported("layer_norm");
}
void Backend::layer_norm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                  const Tensor&, const Tensor&, const Tensor&) {
  unsupported("layer_norm_backward");
}
void Backend::rms_norm(const Tensor&, const Tensor&, double, const Tensor&, const Tensor&) { unsupported("rms_norm"); }
void Backend::rms_norm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                const Tensor&) {
  unsupported("rms_norm_backward");
}
void Backend::cross_entropy(const Tensor&, const Tensor&, int64_t, double, const Tensor&) {
  unsupported("cross_entropy");
}
void Backend::cross_entropy_backward(const Tensor&, const Tensor&, int64_t, double, const Tensor&, const Tensor&) {
  unsupported("cross_entropy_backward");
}
void Backend::conv2d(const Tensor&, const Tensor&, const Tensor&, const Tensor&, Conv2dParams) { unsupported("conv2d"); }
void Backend::conv2d_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                              const Tensor&, Conv2dParams) {
  unsupported("conv2d_backward");
}
void Backend::max_pool2d(const Tensor&, const Tensor&, const Tensor&, Pool2dParams) { unsupported("max_pool2d"); }
void Backend::max_pool2d_backward(const Tensor&, const Tensor&, const Tensor&) { unsupported("max_pool2d_backward"); }
void Backend::avg_pool2d(const Tensor&, const Tensor&, Pool2dParams) { unsupported("avg_pool2d"); }
void Backend::avg_pool2d_backward(const Tensor&, const Tensor&, Pool2dParams) { unsupported("avg_pool2d_backward"); }
void Backend::batch_norm_stats(const Tensor&, const Tensor&, const Tensor&) { unsupported("batch_norm_stats"); }
void Backend::batch_norm_apply(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                               const Tensor&) {
  unsupported("batch_norm_apply");
}
void Backend::batch_norm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                  const Tensor&, const Tensor&, const Tensor&) {
  unsupported("batch_norm_backward");
}

bool cuda_available() {
#ifdef MUONLAB_WITH_CUDA
  return cuda_device_count() > 0;
#else
  return false;
#endif
}

Backend& backend_for(Device device) {
  if (device.is_cpu()) return cpu_backend();
#ifdef MUONLAB_WITH_CUDA
  if (!cuda_available()) throw std::runtime_error("device " + device.str() + " requested but no CUDA device is present");
  if (device.index != 0) throw std::runtime_error("only cuda:0 is supported, got " + device.str());
  return cuda_backend();
#else
  throw std::runtime_error("device " + device.str() + " requested but muonlab was built without CUDA");
#endif
}

}  // namespace ml
