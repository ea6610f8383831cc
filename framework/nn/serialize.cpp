#include "framework/nn/serialize.h"

#include <set>
#include <stdexcept>

#include "framework/autograd.h"
#include "framework/io/safetensors.h"
#include "framework/ops/elementwise.h"

namespace ml {

void save_weights(const Module& module, const std::string& path, const std::map<std::string, std::string>& metadata) {
  save_safetensors(path, module.state_dict(), metadata);
}

std::map<std::string, std::string> load_weights(Module& module, const std::string& path) {
  const SafetensorsFile file = load_safetensors(path);
  const NamedTensors targets = module.state_dict();
  auto fail = [&](const std::string& what) {
    return std::runtime_error("load_weights '" + path + "': " + what);
  };
  auto join = [](const std::vector<std::string>& names) {
    std::string out;
    for (const std::string& name : names) out += (out.empty() ? "'" : ", '") + name + "'";
    return out;
  };

  std::map<std::string, const Tensor*> stored_by_name;
  for (const auto& [name, tensor] : file.tensors) stored_by_name[name] = &tensor;
  std::set<std::string> expected;
  std::vector<std::string> missing;
  for (const auto& [name, tensor] : targets) {
    expected.insert(name);
    if (!stored_by_name.count(name)) missing.push_back(name);
  }
  std::vector<std::string> unexpected;
  for (const auto& entry : file.tensors)
    if (!expected.count(entry.first)) unexpected.push_back(entry.first);
  if (!missing.empty() || !unexpected.empty()) {
    std::string what;
    if (!missing.empty()) what += "missing tensors " + join(missing);
    if (!unexpected.empty()) what += (what.empty() ? "" : "; ") + std::string("unexpected tensors ") + join(unexpected);
    throw fail(what);
  }
  // Every tensor is checked before any is written, so a failed load leaves the module intact.
  for (const auto& [name, tensor] : targets) {
    const Tensor& stored = *stored_by_name.at(name);
    if (stored.shape() != tensor.shape() || stored.dtype() != tensor.dtype())
      throw fail("tensor '" + name + "' is " + shape_str(stored.shape()) + " " + dtype_name(stored.dtype()) +
                 " in the file but " + shape_str(tensor.shape()) + " " + dtype_name(tensor.dtype()) +
                 " in the module");
  }
  NoGradGuard no_grad;
  for (const auto& [name, tensor] : targets) {
    Tensor target = tensor;
    copy_(target, *stored_by_name.at(name));
  }
  return file.metadata;
}

}  // namespace ml
