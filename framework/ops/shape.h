// Shape ops. Views (reshape of a contiguous tensor, permute, narrow, expand, ...) share storage;
// the Tensor member functions declared in tensor.h are implemented here.
#pragma once
#include <vector>

#include "framework/tensor.h"

namespace ml {

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim);
Tensor stack(const std::vector<Tensor>& tensors, int64_t dim);
// Pieces of `split_size` along dim (the last may be smaller), as views.
std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim);
// `chunks` nearly equal pieces along dim, as views.
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim);
// Rows of x along dim at the Int64 1-D `index` (torch.index_select).
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
// self's slices at the Int64 1-D `index` along dim gain src's slices, in place
// (torch.Tensor.index_add_): src has self's shape with index.numel() slices along dim; a repeated
// index adds in index order. For optimizers and buffers: no history; self must be contiguous.
Tensor& index_add_(Tensor& self, int64_t dim, const Tensor& index, const Tensor& src);
// out[..., i, ...] = x[..., index[..., i, ...], ...] along dim (torch.gather).
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
// base with src added at `index` along dim (out-of-place torch.scatter_add).
Tensor scatter_add(const Tensor& base, int64_t dim, const Tensor& index, const Tensor& src);

}  // namespace ml
