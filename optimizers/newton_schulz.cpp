#include "optimizers/newton_schulz.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "framework/ops.h"

namespace ml {

namespace {

const std::vector<NsTriple>& keller_triples() {
  static const std::vector<NsTriple> triples{{3.4445, -4.7750, 2.0315}};
  return triples;
}
const std::vector<NsTriple>& muon_plus_triples() {
  static const std::vector<NsTriple> triples{{4.0848, -6.8946, 2.9270},
                                            {3.9505, -6.3029, 2.6377},
                                            {3.7418, -5.5913, 2.3037},
                                            {2.8769, -3.1427, 1.2046},
                                            {2.8366, -3.0525, 1.2012}};
  return triples;
}
const std::vector<NsTriple>& polar_express_triples() {
  static const std::vector<NsTriple> triples{{8.156554524902461, -22.48329292557795, 15.878769915207462},
                                            {4.042929935166739, -2.808917465908714, 0.5000178451051316},
                                            {3.8916678022926607, -2.772484153217685, 0.5060648178503393},
                                            {3.285753657755655, -2.3681294933425376, 0.46449024233003106},
                                            {2.3465413258596377, -1.7097828382687081, 0.42323551169305323}};
  return triples;
}

// P = a I + b A + c A^2 for a symmetric A: c A A^T + b A is one symmetric rank-k update (syrk,
// half the products of a k x k matmul), then a on the diagonal.
Tensor polynomial(const Tensor& gram, const NsTriple& t) {
  Tensor p = syrk(gram, t.c, gram, t.b);
  Tensor p_diagonal = diagonal_view(p);
  add_(p_diagonal, t.a);
  return p;
}

// FLOPs (multiply-adds twice) of the two evaluation orders for k x l (k <= l) and K steps, every
// product counted as a full matmul: the nominal count that the evaluation order is chosen on and
// CacheMuon's FLOP ratios use. The symmetric products X X^T and A A^T run as syrk and do
// half of theirs, so the arithmetic done is less.
double direct_flops(double k, double l, double steps) { return steps * (4 * k * k * l + 2 * k * k * k); }
double gram_form_flops(double k, double l, double steps) {
  // S S^T and T X0 (2 k^2 l each); per step P (2 k^3); all but the last: A update (4 k^3);
  // all but the first: T update (2 k^3).
  return 4 * k * k * l + (8 * steps - 6) * k * k * k;
}
bool uses_gram_form(int64_t k, int64_t l, int64_t steps) {
  return gram_form_flops(k, l, steps) < direct_flops(k, l, steps);
}

// Newton–Schulz on the small side S (k x l) of `matrix`, or of each matrix of a stack [B, rows,
// cols]: every product below is then one batched product. X0 = S / (f ||S||_F + eps) is never
// formed: its scaling (1/norm, and diag(s) for AOL) is folded into a k x k factor, and the first
// Gram matrix is the raw one rescaled (||S||_F^2 = trace(S S^T)), so the normalization costs
// O(k^2), not O(k l). Two equivalent evaluation orders, whichever needs fewer FLOPs:
//  - direct: X_{i+1} = P_i X_i with P_i = a I + b A_i + c A_i^2, A_i = X_i X_i^T
//    (per iteration 2 k^2 l + 2 k^3 + 2 k^2 l);
//  - Gram form (Dao-AILab/gram-newton-schulz), for wide S: iterate on k x k matrices only,
//    A_{i+1} = P_i A_i P_i^T and T_{i+1} = P_i T_i, then X_K = T_K X0 with one k x l product.
// `transform` (optional) receives T = P_{K-1} ... P_0 diag(s), the map from X0 to the result.
Tensor iterate(const Tensor& matrix, const NsSchedule& schedule, double output_scale, Tensor* transform,
               const Tensor& small_gram) {
  if (matrix.dim() != 2 && matrix.dim() != 3)
    throw std::invalid_argument("newton_schulz: expected a 2-D matrix or a 3-D stack of them, got " +
                                shape_str(matrix.shape()));
  if (schedule.triples.empty()) throw std::invalid_argument("newton_schulz: the schedule has no iterations");
  const bool tall = matrix.size(-2) > matrix.size(-1);
  const Tensor raw = small_side(matrix);
  const int64_t steps = static_cast<int64_t>(schedule.triples.size());

  const Tensor raw_gram = small_gram.defined() ? small_gram : syrk(raw);
  const Tensor inv_norm = inverse_norm_of_gram(raw_gram, schedule);
  const Tensor inv_norm_squared = mul(inv_norm, inv_norm);
  // X0 = diag(x0_scale) S: 1/norm (one scalar a matrix), for AOL times s_i on row i ([..., k, 1]).
  Tensor gram, aol_scale, x0_scale = inv_norm;
  if (schedule.aol) {
    // Turbo-Muon: s_i = max(sum_j |A_ij|, 1e-7)^(-1/2) on the normalized A = G / norm^2 bounds
    // ||diag(s) X||_2 <= 1, and diag(s) A diag(s) is the Gram matrix of diag(s) X, so the first
    // iteration needs no new product. Both scalings reach G in one factor on each side.
    const Tensor row_sums = mul(sum(abs(raw_gram), {-1}, true), inv_norm_squared);  // of |A|
    aol_scale = rsqrt(clamp(row_sums, 1e-7, std::numeric_limits<double>::infinity()));
    x0_scale = mul(aol_scale, inv_norm);
    gram = mul(raw_gram, x0_scale);
    mul_(gram, x0_scale.transpose(-1, -2));
  } else {
    gram = mul(raw_gram, inv_norm_squared);
  }

  if (uses_gram_form(raw.size(-2), raw.size(-1), steps)) {
    // Every P_i is a polynomial in A_0, so P_i, A_i and T = P_i ... P_0 commute and their products
    // are symmetric: each runs as a symmetric product (one triangle, mirrored), half the products
    // of a matmul, and stays exactly symmetric. (A_{i+1} as A_i (P_i P_i^T), equal in exact
    // arithmetic, lost that symmetry in float32 as a plain product, and Polar Express's triples
    // amplified it: 7e-4 from the float64 iteration on a 12x20 matrix, against under 1e-4.)
    Tensor t;
    for (int64_t i = 0; i < steps; ++i) {
      Tensor p = polynomial(gram, schedule.triples[i]);
      if (i + 1 < steps) gram = symmetric_product(symmetric_product(p, gram), p);  // P A P^T
      t = i == 0 ? p : symmetric_product(p, t);
    }
    if (schedule.aol) t = mul(t, aol_scale.transpose(-1, -2));  // AOL's diag(s) applies to X0 first
    if (transform) *transform = t;
    const Tensor x = matmul(mul(t, mul(inv_norm, output_scale)), raw);
    return tall ? x.transpose(-1, -2) : x;
  }

  Tensor x, t;  // t = P_i ... P_0, symmetric as in the Gram form
  for (int64_t i = 0; i < steps; ++i) {
    if (i > 0) gram = syrk(x);
    Tensor p = polynomial(gram, schedule.triples[i]);
    if (transform) t = i == 0 ? p.clone() : symmetric_product(p, t);
    if (i == 0) mul_(p, schedule.aol ? x0_scale.transpose(-1, -2) : x0_scale);  // P_0 X0 = (P_0 diag(x0_scale)) S
    if (i + 1 == steps && output_scale != 1.0) mul_(p, output_scale);
    x = matmul(p, i == 0 ? raw : x);
  }
  if (transform) *transform = schedule.aol ? mul(t, aol_scale.transpose(-1, -2)) : t;
  return tall ? x.transpose(-1, -2) : x;
}

}  // namespace

const EnumNames<NsCoefficients>& ns_coefficient_names() {
  static const EnumNames<NsCoefficients> names{{NsCoefficients::Keller, "keller"},
                                               {NsCoefficients::MuonPlus, "muon_plus"},
                                               {NsCoefficients::PolarExpress, "polar_express"}};
  return names;
}

NsSchedule ns_schedule(NsCoefficients coefficients, int64_t steps, bool aol) {
  if (steps < 1) throw std::invalid_argument("ns_schedule: steps must be >= 1, got " + std::to_string(steps));
  const std::vector<NsTriple>* family = nullptr;
  NsSchedule schedule;
  schedule.aol = aol;
  switch (coefficients) {
    case NsCoefficients::Keller:
      family = &keller_triples();
      break;
    case NsCoefficients::MuonPlus:
      family = &muon_plus_triples();
      break;
    case NsCoefficients::PolarExpress:
      family = &polar_express_triples();
      schedule.norm_factor = 1.02;
      schedule.norm_eps = 1e-6;
      break;
  }
  const int64_t length = static_cast<int64_t>(family->size());
  const int64_t first = aol ? std::max<int64_t>(length - steps, 0) : 0;
  for (int64_t i = 0; i < steps; ++i) schedule.triples.push_back((*family)[std::min(first + i, length - 1)]);
  return schedule;
}

Tensor diagonal_view(const Tensor& square) {
  if ((square.dim() != 2 && square.dim() != 3) || square.size(-2) != square.size(-1) || !square.is_contiguous())
    throw std::invalid_argument("diagonal_view: expected a contiguous square matrix or a stack of them, got " +
                                shape_str(square.shape()));
  const int64_t k = square.size(-1);
  if (square.dim() == 3) return Tensor::view_of(square, {square.size(0), k}, {k * k, k + 1}, square.offset());
  return Tensor::view_of(square, {k}, {k + 1}, square.offset());
}

Tensor small_side(const Tensor& matrix) {
  return matrix.size(-2) > matrix.size(-1) ? matrix.transpose(-1, -2) : matrix;
}

// The textbook iteration (see the header). Each step maps every singular value s of X to
// a s + b s^3 + c s^5 and keeps the singular vectors, so the steps drive the singular values towards 1.
Tensor newton_schulz_reference(const Tensor& matrix, const NsSchedule& schedule, Tensor* transform) {
  if (matrix.dim() != 2)
    throw std::invalid_argument("newton_schulz_reference: expected a 2-D matrix, got " + shape_str(matrix.shape()));
  if (matrix.size(0) > matrix.size(1)) return newton_schulz_reference(matrix.t(), schedule, transform).t();  // tall
  // X = S / (f ||S||_F + eps): every singular value in [0, 1]
  Tensor x = mul(matrix, 1.0 / (schedule.norm_factor * norm(matrix).item() + schedule.norm_eps));
  Tensor t;  // T = I, kept only when asked for
  if (transform) {
    t = zeros({x.size(0), x.size(0)}, x.dtype(), x.device());
    Tensor t_diagonal = diagonal_view(t);
    add_(t_diagonal, 1.0);
  }
  if (schedule.aol) {
    const Tensor s = rsqrt(clamp(sum(abs(matmul(x, x.t())), {1}, true), 1e-7, std::numeric_limits<double>::infinity()));
    x = mul(x, s);                     // X <- diag(s) X
    if (transform) t = mul(t, s);      // T = diag(s)
  }
  for (const NsTriple& c : schedule.triples) {
    const Tensor a = matmul(x, x.t());                          // A = X X^T
    const Tensor b = add(mul(a, c.b), mul(matmul(a, a), c.c));  // B = b A + c A^2
    x = add(mul(x, c.a), matmul(b, x));                         // X <- a X + B X
    if (transform) t = add(mul(t, c.a), matmul(b, t));          // T <- a T + B T
  }
  if (transform) *transform = t;
  return x;
}

Tensor newton_schulz(const Tensor& matrix, const NsSchedule& schedule, double output_scale) {
  return iterate(matrix, schedule, output_scale, nullptr, Tensor());
}

NsTransformResult newton_schulz_with_transform(const Tensor& matrix, const NsSchedule& schedule,
                                               const Tensor& small_gram) {
  NsTransformResult out;
  out.result = iterate(matrix, schedule, 1.0, &out.transform, small_gram);
  return out;
}

Tensor small_side_gram(const Tensor& matrix) {
  return syrk(small_side(matrix));
}

Tensor inverse_norm_of_gram(const Tensor& small_gram, const NsSchedule& schedule) {
  // A stack's traces as [B, 1, 1], to scale its [B, k, k] Gram matrices and [B, k, l] matrices.
  const Tensor trace = small_gram.dim() == 3 ? sum(diagonal_view(small_gram), {1}, true).unsqueeze(2)
                                             : sum(diagonal_view(small_gram));
  return rdiv(1.0, add(mul(sqrt(trace), schedule.norm_factor), schedule.norm_eps));
}

double newton_schulz_flops(int64_t rows, int64_t cols, int64_t steps, bool with_transform, bool gram_given) {
  const int64_t k = std::min(rows, cols), l = std::max(rows, cols);
  const double kd = static_cast<double>(k), ld = static_cast<double>(l), sd = static_cast<double>(steps);
  const double saved = gram_given ? 2 * kd * kd * ld : 0.0;
  if (uses_gram_form(k, l, steps)) return gram_form_flops(kd, ld, sd) - saved;
  return direct_flops(kd, ld, sd) + (with_transform ? 2 * (sd - 1) * kd * kd * kd : 0.0) - saved;
}

double newton_schulz_performed_flops(int64_t rows, int64_t cols, int64_t steps) {
  const int64_t k = std::min(rows, cols), l = std::max(rows, cols);
  const double kd = static_cast<double>(k), ld = static_cast<double>(l), sd = static_cast<double>(steps);
  // Gram form: S S^T (k^2 l), T X0 (2 k^2 l); per step P (k^3), all but the last the A update (2 k^3),
  // all but the first the T update (k^3). Direct, per step: A (k^2 l), P (k^3), P X (2 k^2 l).
  if (uses_gram_form(k, l, steps)) return 3 * kd * kd * ld + (4 * sd - 3) * kd * kd * kd;
  return sd * (3 * kd * kd * ld + kd * kd * kd);
}

}  // namespace ml
