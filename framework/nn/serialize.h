// Module weights as safetensors files, keyed by state_dict names.
#pragma once
#include <map>
#include <string>

#include "framework/nn/module.h"

namespace ml {

// Writes every parameter and buffer of `module` (atomically, see save_safetensors).
void save_weights(const Module& module, const std::string& path, const std::map<std::string, std::string>& metadata = {});

// Copies the file's tensors into the module's existing tensors, in place, so that handles held
// elsewhere (optimizers) stay valid. Strict: the file must hold exactly the state_dict names,
// each with the module's shape and dtype; otherwise std::runtime_error names the file and the
// offending tensors, and the module is left unchanged. Returns the file's metadata.
std::map<std::string, std::string> load_weights(Module& module, const std::string& path);

}  // namespace ml
