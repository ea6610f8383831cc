// Quintic Newton–Schulz orthogonalization, shared by the Muon family and the ortho benchmark.
//
// Keller Jordan, "Muon: An optimizer for hidden layers in neural networks" (2024): on the small
// side (rows <= cols, transposing a tall matrix), X0 = U / (||U||_F + 1e-7), then per iteration
//   A = X X^T,  B = b A + c A^2,  X <- a X + B X.
// Per-iteration coefficient schedules: "Muon+" (the five triples of the Turbo-Muon paper's
// baseline) and Polar Express (Amsel et al. 2025, arXiv 2505.16932, as in modded-nanogpt, which
// also normalizes by 1.02 ||U||_F + 1e-6).
// Turbo-Muon (Boissin et al. 2025, arXiv 2512.04632) replaces the plain normalization by AOL
// preconditioning (Prach & Lampert 2022) that reuses the first Gram matrix, and drops one iteration.
// To learn the method, read newton_schulz_reference (the textbook loop) and docs/optimizers.md.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "framework/settings.h"
#include "framework/tensor.h"

namespace ml {

// The coefficient families: Keller Jordan's one triple, the five "Muon+" triples, Polar Express.
enum class NsCoefficients { Keller, MuonPlus, PolarExpress };
const EnumNames<NsCoefficients>& ns_coefficient_names();  // keller | muon_plus | polar_express

struct NsTriple {
  double a, b, c;
};

struct NsSchedule {
  std::vector<NsTriple> triples;  // one per iteration
  double norm_factor = 1.0;       // X0 = U / (norm_factor * ||U||_F + norm_eps)
  double norm_eps = 1e-7;
  bool aol = false;               // Turbo-Muon's AOL rescaling after the normalization
};

// The coefficient family run for `steps` iterations.
// Without AOL a per-iteration family is taken from its start (the first, aggressive triples lift
// small singular values); with AOL, which already brings X close to orthogonal, from its end, as
// in Turbo-Muon (4 steps = triples 2-5). Beyond the family's length the last triple repeats.
NsSchedule ns_schedule(NsCoefficients coefficients, int64_t steps, bool aol = false);

// The textbook iteration, for reading and as the tests' reference; newton_schulz computes the same
// map faster (see newton_schulz.cpp). On the small side S (rows <= cols; a tall matrix is
// transposed, and the result transposed back):
//   X = S / (norm_factor ||S||_F + norm_eps);   [AOL: X <- diag(s) X, s_i = max(sum_j |(X X^T)_ij|, 1e-7)^(-1/2)]
//   for each triple (a, b, c):  A = X X^T;  B = b A + c A^2;  X <- a X + B X.
// `transform`, when given, receives the k x k matrix T with result = T X0 (X0 the normalized S,
// before AOL), which follows the same recurrence T <- a T + B T from T = I (diag(s) with AOL).
Tensor newton_schulz_reference(const Tensor& matrix, const NsSchedule& schedule, Tensor* transform = nullptr);

// The view of a matrix that Newton–Schulz iterates on: the transpose of a tall matrix (of each
// matrix of a stack [B, rows, cols]).
Tensor small_side(const Tensor& matrix);

// An approximation of the polar factor U V^T of a 2-D matrix (any orientation, result in the same
// orientation, possibly a transposed view), multiplied by `output_scale` (folded into the last
// iteration's small left factor rather than paid for as a pass over the result). A stack of
// same-shape matrices [B, rows, cols] gives each matrix's result, as if solved alone, with every
// step one batched product for the whole stack (on a GPU one launch per product instead of B).
Tensor newton_schulz(const Tensor& matrix, const NsSchedule& schedule, double output_scale = 1.0);

// Newton–Schulz written as a left transform of the normalized input: with S = small_side(matrix)
// and X0 = S / (norm_factor ||S||_F + norm_eps), the result (on the small side) equals T X0 for a
// k x k matrix T (k = min(rows, cols)), the product of the iterations' polynomials in X X^T.
// Used by CacheMuon.
// `small_gram`, when given, is small_side_gram(matrix), computed by the caller for its own use: the
// solve starts from it instead of paying for it again.
struct NsTransformResult {
  Tensor result;     // like newton_schulz(matrix, schedule)
  Tensor transform;  // T, k x k
};
NsTransformResult newton_schulz_with_transform(const Tensor& matrix, const NsSchedule& schedule,
                                               const Tensor& small_gram = Tensor());

// S S^T for the small side S of `matrix` (k x k; [B, k, k] for a stack): the raw Gram matrix
// every solve starts from.
Tensor small_side_gram(const Tensor& matrix);

// 1 / (norm_factor ||S||_F + norm_eps) from that Gram matrix (||S||_F^2 = trace(S S^T)), as a 0-d
// tensor ([B, 1, 1] for a stack): the normalization X0 = S * inverse_norm of every solve.
Tensor inverse_norm_of_gram(const Tensor& small_gram, const NsSchedule& schedule);

// The diagonal of a contiguous square matrix as a strided view (writes go to the matrix); [B, k]
// for a stack [B, k, k].
Tensor diagonal_view(const Tensor& square);

// FLOPs (multiply-adds counted twice) of newton_schulz on a rows x cols matrix, or of
// newton_schulz_with_transform. With k = min(rows, cols), l = max(rows, cols), K = steps, the
// cheaper of two evaluation orders runs: direct, K (4 k^2 l + 2 k^3) (the transform adds
// 2 (K-1) k^3), or the Gram form for wide matrices, 4 k^2 l + (8K - 6) k^3 (transform included).
// `gram_given`: without the first Gram matrix (2 k^2 l), passed in by the caller.
double newton_schulz_flops(int64_t rows, int64_t cols, int64_t steps, bool with_transform = false,
                           bool gram_given = false);

// The FLOPs newton_schulz performs (no transform, own Gram matrix): as newton_schulz_flops, but its
// symmetric products compute one triangle, half their nominal count. Direct: K (3 k^2 l + k^3);
// Gram form: 3 k^2 l + (4K - 3) k^3. The useful work a rate is judged on against the GEMM peak, and
// the ratio of two schedules' counts is the speed-up they can reach running at the same rate.
double newton_schulz_performed_flops(int64_t rows, int64_t cols, int64_t steps);

}  // namespace ml
