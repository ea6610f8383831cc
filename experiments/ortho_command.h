// `muonlab ortho` (orthogonalize one .npy matrix) and `muonlab bench ortho` (time the
// orthogonalization methods of the Muon family and measure how close they get to the exact
// polar factor). Methods:
//   ns5            Muon's quintic Newton–Schulz, Keller's coefficients, 5 iterations
//   muon_plus      the same with the per-iteration "Muon+" triples
//   polar_express  the same with the Polar Express triples
//   turbo          Turbo-Muon: AOL preconditioning, 4 iterations with Muon+ triples 2-5
//   rmnp           RMNP's row-wise l2 normalization (no iterations)
//   dion2          Dion2's preconditioning at fraction 0.25: the top 25% of slices along the shorter
//                  side by L1 norm, Polar Express on those, zeros elsewhere
#pragma once
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include "framework/tensor.h"

namespace ml {

const std::vector<std::string>& ortho_methods();

// The method's output for a 2-D matrix; steps 0 means the method's own iteration count (rmnp
// takes none). Throws std::invalid_argument for an unknown method or a bad step count.
Tensor orthogonalize(const std::string& method, const Tensor& matrix, int64_t steps = 0);

// Floating-point operations of one call (multiply-adds count twice): Nominal counts every product
// as a whole matmul; Performed counts half of each symmetric one, which computes one triangle
// (newton_schulz_performed_flops).
enum class FlopCount { Nominal, Performed };
double ortho_flops(const std::string& method, int64_t rows, int64_t cols, int64_t steps = 0,
                   FlopCount count = FlopCount::Nominal);

// Reads a 2-D float32/float64 .npy, runs the method in float32 and writes the float32 result;
// prints one summary line to `out`. Returns 0; throws std::runtime_error naming the file on
// unreadable input and naming the entry on NaN, infinities and float64 values float32 cannot
// hold. A matrix so large that float32 sums of its squares would overflow is first scaled by a
// power of two (the methods do not depend on the scale).
int run_ortho(const std::string& method, const std::string& in_path, const std::string& out_path, int64_t steps,
              std::ostream& out = std::cout);

// For each benchmark shape and method: median time per call over `repeats` timed calls back to
// back (after two untimed ones, as torch_reference.py times), GFLOP/s and the relative Frobenius
// error against the exact float64 polar factor; printed as a table, then one JSON object per
// row. device: "cpu" or "cuda".
int run_bench_ortho(const std::string& device, int64_t repeats, std::ostream& out = std::cout);

}  // namespace ml
