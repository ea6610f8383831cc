#include "optimizers/matrix_optimizer.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "framework/backend.h"
#include "framework/distributed/communicator.h"
#include "framework/ops.h"

namespace ml {

const EnumNames<UpdateScaling>& update_scaling_names() {
  static const EnumNames<UpdateScaling> names{
      {UpdateScaling::Keller, "keller"}, {UpdateScaling::Moonlight, "moonlight"}, {UpdateScaling::Spectral, "spectral"}};
  return names;
}

double update_scale(UpdateScaling scaling, int64_t rows, int64_t cols) {
  const double m = static_cast<double>(rows), n = static_cast<double>(cols);
  switch (scaling) {
    case UpdateScaling::Keller: return std::sqrt(std::max(1.0, m / n));
    case UpdateScaling::Moonlight: return 0.2 * std::sqrt(std::max(m, n));
    case UpdateScaling::Spectral: return std::sqrt(m / n);
  }
  return 1.0;
}

const std::vector<std::pair<std::string, OtherDefaults>>& non_matrix_defaults() {
  static const std::vector<std::pair<std::string, OtherDefaults>> defaults{
      {AdamWSettings::kind, {{"lr", 3e-4}, {"betas", std::array<double, 2>{0.9, 0.95}}}},
      {SgdSettings::kind, {{"lr", 3e-4}, {"momentum", 0.9}, {"nesterov", true}}},
      {LionSettings::kind, {{"lr", 1e-4}}},
  };
  return defaults;
}

NonMatrixSettings default_non_matrix_settings() { return with_defaults(non_matrix_settings<AdamWSettings>()); }

NsSchedule ns_schedule(const NewtonSchulzSettings& settings, bool aol) {
  return ns_schedule(settings.ns_coefficients, settings.ns_steps, aol);
}

std::vector<int> assign_matrix_owners(const std::vector<Shape>& shapes, int ranks) {
  const auto cost = [&](size_t i) {  // Newton–Schulz work grows as small side^2 x large side
    const double small = static_cast<double>(std::min(shapes[i][0], shapes[i][1]));
    return small * small * static_cast<double>(std::max(shapes[i][0], shapes[i][1]));
  };
  std::vector<size_t> order(shapes.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (cost(a) != cost(b)) return cost(a) > cost(b);
    return shapes[a] < shapes[b];
  });
  std::vector<int> owners(shapes.size(), 0);
  std::vector<double> load(static_cast<size_t>(ranks), 0.0);
  for (const size_t i : order) {
    const auto least = std::min_element(load.begin(), load.end());
    owners[i] = static_cast<int>(least - load.begin());
    *least += cost(i);
  }
  return owners;
}

MatrixOptimizer::MatrixOptimizer(std::string kind, std::vector<NamedParam> params,
                                 const MatrixOptimizerSettings& settings)
    : Optimizer(std::move(kind), std::move(params), settings.lr),
      weight_decay_(settings.weight_decay),
      scaling_(settings.scaling) {
  for (const NamedParam& p : this->params())
    if ((p.param.dim() != 2 && p.param.dim() != 4) || !p.param.is_contiguous())
      throw std::invalid_argument(this->kind() + ": parameter '" + p.name + "' " + shape_str(p.param.shape()) +
                                  " must be a contiguous 2-D matrix or 4-D conv filter");
}

Shape MatrixOptimizer::matrix_shape(size_t index) const {
  const Tensor& p = params()[index].param;
  return {p.size(0), p.numel() / p.size(0)};
}

Tensor MatrixOptimizer::add_matrix_buffer(size_t index, const std::string& buffer) {
  const Tensor& p = params()[index].param;
  return add_buffer(params()[index].name, buffer, zeros(matrix_shape(index), p.dtype(), p.device()));
}

void MatrixOptimizer::step_impl() {
  // The matrices with a gradient: the same on every rank, since the gradient all-reduce agrees on
  // which parameters have one.
  std::vector<size_t> present;
  for (size_t i = 0; i < params().size(); ++i)
    if (params()[i].param.grad().defined()) present.push_back(i);
  if (comm_ && comm_->size() > 1 && shards_orthogonalization()) {
    sharded_step(present);
    return;
  }
  if (stacks_orthogonalization()) {
    stacked_step(present);
    return;
  }
  for (const size_t i : present) update_alone(i);
}

Tensor MatrixOptimizer::begin_update_of(size_t index) {
  return begin_update(index, params()[index].param.grad().reshape(matrix_shape(index)));
}

void MatrixOptimizer::update_alone(size_t index) {
  Tensor weight = params()[index].param.view(matrix_shape(index));
  finish_update(index, weight, orthogonalize(index, begin_update_of(index)));
}

void MatrixOptimizer::stacked_step(const std::vector<size_t>& present) {
  // Groups of one matrix shape, dtype and device, in the order of their first member.
  std::vector<std::vector<size_t>> groups;
  const auto same_group = [&](size_t a, size_t b) {
    const Tensor &pa = params()[a].param, &pb = params()[b].param;
    return matrix_shape(a) == matrix_shape(b) && pa.dtype() == pb.dtype() && pa.device() == pb.device();
  };
  for (const size_t i : present) {
    const auto group = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return same_group(g.front(), i); });
    if (group == groups.end())
      groups.push_back({i});
    else
      group->push_back(i);
  }
  for (const std::vector<size_t>& group : groups) {
    const Shape shape = matrix_shape(group.front());
    const int64_t k = std::min(shape[0], shape[1]), count = static_cast<int64_t>(group.size());
    if (!backend_of(params()[group.front()].param).batched_products_pay(count, k * k * k)) {
      for (const size_t i : group) update_alone(i);
      continue;
    }
    std::vector<Tensor> inputs;
    for (const size_t i : group) inputs.push_back(begin_update_of(i));
    const Tensor results = orthogonalize(group.front(), stack(inputs, 0));
    for (int64_t j = 0; j < count; ++j) {
      Tensor weight = params()[group[static_cast<size_t>(j)]].param.view(shape);
      finish_update(group[static_cast<size_t>(j)], weight, results.narrow(0, j, 1).squeeze(0));
    }
  }
}

void MatrixOptimizer::sharded_step(const std::vector<size_t>& present) {
  if (present.empty()) return;
  std::vector<Tensor> inputs;
  std::vector<Shape> shapes;
  for (const size_t i : present) {
    inputs.push_back(begin_update_of(i));
    shapes.push_back(inputs.back().shape());
  }
  const Tensor& first = inputs.front();
  for (const Tensor& input : inputs)
    if (input.dtype() != first.dtype() || input.device() != first.device())
      throw std::logic_error(kind() + ": a data-parallel step needs matrices of one dtype and device");
  const std::vector<int> owners = assign_matrix_owners(shapes, comm_->size());

  // This rank's results in list order, then everyone's: rank r's part of the gathered buffer
  // holds its matrices in list order, which every rank knows from the plan.
  std::vector<int64_t> counts(static_cast<size_t>(comm_->size()), 0);
  std::vector<Tensor> mine;
  for (size_t j = 0; j < present.size(); ++j) {
    counts[static_cast<size_t>(owners[j])] += inputs[j].numel();
    if (owners[j] != comm_->rank()) continue;
    const Tensor ortho = orthogonalize(present[j], inputs[j]);
    if (ortho.shape() != inputs[j].shape() || ortho.dtype() != inputs[j].dtype())
      throw std::logic_error(kind() + ": orthogonalize changed the shape or dtype of its input");
    mine.push_back(ortho.contiguous().reshape({ortho.numel()}));
  }
  const Tensor local = mine.empty() ? zeros({0}, first.dtype(), first.device()) : cat(mine, 0);
  int64_t total = 0;
  for (const int64_t count : counts) total += count;
  Tensor gathered = Tensor::empty({total}, first.dtype(), first.device());
  comm_->all_gather(local, gathered, counts);

  std::vector<int64_t> offsets(counts.size(), 0);  // where each rank's next matrix starts
  for (size_t r = 1; r < counts.size(); ++r) offsets[r] = offsets[r - 1] + counts[r - 1];
  for (size_t j = 0; j < present.size(); ++j) {
    int64_t& offset = offsets[static_cast<size_t>(owners[j])];
    const Tensor ortho = gathered.narrow(0, offset, inputs[j].numel()).view(inputs[j].shape());
    offset += inputs[j].numel();
    Tensor weight = params()[present[j]].param.view(matrix_shape(present[j]));
    finish_update(present[j], weight, ortho);
  }
}

}  // namespace ml
