// Tensor factories (torch.zeros, torch.randn, ...). Random factories draw from a Generator
// (the default one unless given), so a seeded run is reproducible on any thread count.
#pragma once
#include "framework/random.h"
#include "framework/tensor.h"

namespace ml {

Tensor full(const Shape& shape, double value, DType dtype = DType::Float32, Device device = cpu());
Tensor zeros(const Shape& shape, DType dtype = DType::Float32, Device device = cpu());
Tensor ones(const Shape& shape, DType dtype = DType::Float32, Device device = cpu());
Tensor full_like(const Tensor& t, double value);
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
// A 0-d tensor.
Tensor scalar_tensor(double value, DType dtype = DType::Float32, Device device = cpu());
// [start, end) in steps of `step`, as torch.arange.
Tensor arange(double start, double end, double step = 1.0, DType dtype = DType::Float32, Device device = cpu());

Tensor randn(const Shape& shape, DType dtype = DType::Float32, Device device = cpu(),
             Generator& gen = default_generator());
// Uniform in [low, high).
Tensor rand(const Shape& shape, double low = 0.0, double high = 1.0, DType dtype = DType::Float32,
            Device device = cpu(), Generator& gen = default_generator());
// 1 with probability p, else 0.
Tensor bernoulli(const Shape& shape, double p, DType dtype = DType::Float32, Device device = cpu(),
                 Generator& gen = default_generator());

}  // namespace ml
