#include "framework/ops/creation.h"

#include <cmath>

#include "framework/backend.h"
#include "framework/ops/op_utils.h"

namespace ml {

Tensor full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = Tensor::empty(shape, dtype, device);
  backend_of(t).fill(t, value);
  return t;
}
Tensor zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }
Tensor ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }
Tensor full_like(const Tensor& t, double value) { return full(t.shape(), value, t.dtype(), t.device()); }
Tensor zeros_like(const Tensor& t) { return full_like(t, 0.0); }
Tensor ones_like(const Tensor& t) { return full_like(t, 1.0); }
Tensor scalar_tensor(double value, DType dtype, Device device) { return full({}, value, dtype, device); }

Tensor arange(double start, double end, double step, DType dtype, Device device) {
  if (step == 0.0 || (end - start) / step < 0.0)
    detail::op_error("arange", "empty or infinite range [" + std::to_string(start) + ", " + std::to_string(end) +
                                   ") with step " + std::to_string(step));
  Tensor t = Tensor::empty({static_cast<int64_t>(std::ceil((end - start) / step))}, dtype, device);
  backend_of(t).arange(t, start, step);
  return t;
}

static Tensor random_tensor(const Shape& shape, RandomDist dist, double a, double b, DType dtype, Device device,
                            Generator& gen) {
  Tensor t = Tensor::empty(shape, dtype, device);
  detail::check_floating("random", t);
  const uint64_t n = static_cast<uint64_t>(t.numel());
  backend_of(t).random(t, dist, gen.seed(), gen.take(dist == RandomDist::Normal ? 2 * n : n), a, b);
  return t;
}

Tensor randn(const Shape& shape, DType dtype, Device device, Generator& gen) {
  return random_tensor(shape, RandomDist::Normal, 0.0, 1.0, dtype, device, gen);
}
Tensor rand(const Shape& shape, double low, double high, DType dtype, Device device, Generator& gen) {
  return random_tensor(shape, RandomDist::Uniform, low, high, dtype, device, gen);
}
Tensor bernoulli(const Shape& shape, double p, DType dtype, Device device, Generator& gen) {
  return random_tensor(shape, RandomDist::Bernoulli, p, 0.0, dtype, device, gen);
}

}  // namespace ml
