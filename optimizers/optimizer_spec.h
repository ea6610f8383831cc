// Plain hyper-parameter records for make_optimizer. The trainer fills them from the YAML
// `optimizer:` section (experiments/config.h uses the same key names); the defaults below are the
// papers' own, for code that builds an optimizer directly (tests, benchmarks).
#pragma once
#include <array>
#include <cstdint>
#include <string>

namespace ml {

// The optimizer of the parameters a Muon-family optimizer does not handle (embeddings, output
// head, first conv, biases, norm gains). Defaults: the AdamW of the Muon README example.
struct NonMatrixSpec {
  std::string kind = "adamw";  // adamw | sgd
  double lr = 3e-4;
  double weight_decay = 0.0;
  std::array<double, 2> betas{0.9, 0.95};  // adamw
  double eps = 1e-8;                       // adamw
  double momentum = 0.9;                   // sgd
  bool nesterov = true;                    // sgd
};

struct OptimizerSpec {
  std::string kind = "muon";  // sgd | adamw | muon | turbo_muon | cache_muon | dion2 | rmnp | normuon
  double lr = 0.02;
  double weight_decay = 0.0;
  double momentum = 0.95;  // sgd and the Muon family
  bool nesterov = true;    // sgd and the Muon family
  // adamw
  std::array<double, 2> betas{0.9, 0.999};
  double eps = 1e-8;
  // Muon family. 0 / "" pick the method's own default: 5 steps (Turbo-Muon 4); Keller's
  // coefficients (Turbo-Muon "muon_plus", Dion2 "polar_express"); Keller's scaling (Dion2 "spectral").
  int64_t ns_steps = 0;
  std::string ns_coefficients;  // keller | muon_plus | polar_express
  std::string scaling;          // keller | moonlight | spectral
  // muon: rescale each matrix to Frobenius norm sqrt(rows) before every update, in place of
  // weight decay (airbench94_muon); see optimizers/muon.cpp.
  bool renormalize = false;
  NonMatrixSpec non_matrix;
  // cache_muon
  double gamma = 0.1;
  int64_t k_max = 10;
  // dion2
  double fraction = 0.25;
  double ef_decay = 0.95;
  std::string selection = "l1";  // l1 | random
  uint64_t seed = 0;             // for random selection
  // normuon
  double beta2 = 0.95;
};

}  // namespace ml
