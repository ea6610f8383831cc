#include "models/patch_whitening.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "framework/symmetric_eigen.h"

namespace ml {

namespace {

// P^T P / count over every k x k patch, accumulated in float64 (upper triangle, then mirrored).
std::vector<double> patch_covariance(const std::vector<float>& pixels, int64_t images, int64_t channels,
                                     int64_t height, int64_t width, int64_t kernel) {
  const int64_t dim = channels * kernel * kernel;
  std::vector<double> covariance(static_cast<size_t>(dim * dim), 0.0);
  std::vector<double> patch(static_cast<size_t>(dim));
  for (int64_t n = 0; n < images; ++n)
    for (int64_t y = 0; y + kernel <= height; ++y)
      for (int64_t x = 0; x + kernel <= width; ++x) {
        int64_t d = 0;
        for (int64_t c = 0; c < channels; ++c)
          for (int64_t dy = 0; dy < kernel; ++dy)
            for (int64_t dx = 0; dx < kernel; ++dx)
              patch[d++] = pixels[static_cast<size_t>(((n * channels + c) * height + y + dy) * width + x + dx)];
        for (int64_t i = 0; i < dim; ++i)
          for (int64_t j = i; j < dim; ++j) covariance[i * dim + j] += patch[i] * patch[j];
      }
  const double count = static_cast<double>(images * (height - kernel + 1) * (width - kernel + 1));
  for (int64_t i = 0; i < dim; ++i)
    for (int64_t j = i; j < dim; ++j) covariance[j * dim + i] = covariance[i * dim + j] /= count;
  return covariance;
}

}  // namespace

Tensor patch_whitening_filters(const Tensor& images, int64_t kernel, double eps) {
  if (images.dim() != 4 || images.size(2) < kernel || images.size(3) < kernel || images.size(0) == 0)
    throw std::invalid_argument("patch_whitening_filters: expected images [N, C, H, W] with N >= 1 and sides >= " +
                                std::to_string(kernel) + ", got " + shape_str(images.shape()));
  if (!(eps > 0)) throw std::invalid_argument("patch_whitening_filters: eps must be > 0");
  const int64_t channels = images.size(1);
  const int64_t dim = channels * kernel * kernel;
  const SymmetricEigen eigen = symmetric_eigen(
      patch_covariance(images.to(cpu()).to(DType::Float32).contiguous().to_vector<float>(), images.size(0), channels,
                       images.size(2), images.size(3), kernel),
      dim);
  std::vector<float> filters(static_cast<size_t>(2 * dim * dim));
  for (int64_t i = 0; i < dim; ++i) {
    const double scale = 1.0 / std::sqrt(eigen.values[i] + eps);
    for (int64_t j = 0; j < dim; ++j) {
      const double value = eigen.vectors[i * dim + j] * scale;
      filters[i * dim + j] = static_cast<float>(value);
      filters[(dim + i) * dim + j] = static_cast<float>(-value);
    }
  }
  return Tensor::from_vector(filters, {2 * dim, channels, kernel, kernel});
}

}  // namespace ml
