#include "optimizers/combined.h"

#include <stdexcept>

namespace ml {

namespace {

const char* const kMatrixPrefix = "matrix.";
const char* const kOtherPrefix = "non_matrix.";

std::vector<NamedParam> joined(const Optimizer& a, const Optimizer& b) {
  std::vector<NamedParam> all = a.params();
  all.insert(all.end(), b.params().begin(), b.params().end());
  return all;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

}  // namespace

CombinedOptimizer::CombinedOptimizer(std::unique_ptr<Optimizer> matrix, std::unique_ptr<Optimizer> other)
    : Optimizer(matrix->kind() + "+" + other->kind(), joined(*matrix, *other), matrix->base_lr()),
      matrix_(std::move(matrix)),
      other_(std::move(other)) {}

void CombinedOptimizer::step_impl() {
  matrix_->step();
  other_->step();
}

void CombinedOptimizer::zero_grad() {
  matrix_->zero_grad();
  other_->zero_grad();
}

void CombinedOptimizer::set_communicator(Communicator* comm) {
  matrix_->set_communicator(comm);
  other_->set_communicator(comm);
}

void CombinedOptimizer::set_lr_scale(double scale) {
  Optimizer::set_lr_scale(scale);
  matrix_->set_lr_scale(scale);
  other_->set_lr_scale(scale);
}

StateDict CombinedOptimizer::state_dict() const {
  StateDict state;
  for (const auto& [key, tensor] : matrix_->state_dict()) state[kMatrixPrefix + key] = tensor;
  for (const auto& [key, tensor] : other_->state_dict()) state[kOtherPrefix + key] = tensor;
  return state;
}

void CombinedOptimizer::load_state_dict(const StateDict& state) {
  StateDict matrix_state, other_state;
  std::string unexpected;
  for (const auto& [key, tensor] : state) {
    if (starts_with(key, kMatrixPrefix))
      matrix_state[key.substr(std::string(kMatrixPrefix).size())] = tensor;
    else if (starts_with(key, kOtherPrefix))
      other_state[key.substr(std::string(kOtherPrefix).size())] = tensor;
    else
      unexpected += (unexpected.empty() ? "'" : ", '") + key + "'";
  }
  if (!unexpected.empty())
    throw std::runtime_error(kind() + ": load_state_dict: unexpected " + unexpected + " (entries start with '" +
                             kMatrixPrefix + "' or '" + kOtherPrefix + "')");
  // A part rejects a bad state before changing anything; restoring the first part when the
  // second one fails keeps the whole optimizer unchanged.
  const StateDict matrix_backup = matrix_->state_dict();
  matrix_->load_state_dict(matrix_state);
  try {
    other_->load_state_dict(other_state);
  } catch (...) {
    matrix_->load_state_dict(matrix_backup);
    throw;
  }
}

std::map<std::string, double> CombinedOptimizer::metrics() const {
  std::map<std::string, double> all = matrix_->metrics();
  for (const auto& [name, value] : other_->metrics()) all[kOtherPrefix + name] = value;
  return all;
}

}  // namespace ml
