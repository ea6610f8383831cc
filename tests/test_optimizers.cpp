// Optimizers against independent float64 references written here with plain loops (the
// production code runs on tensors, in float64 where exact agreement is expected). Newton–Schulz
// itself is the exception: the references run newton_schulz_reference, the textbook iteration,
// which the fast newton_schulz is held to below.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "experiments/exact_polar.h"
#include "experiments/ortho_command.h"
#include "framework/backend.h"
#include "framework/io/npy.h"
#include "framework/ops.h"
#include "framework/parallel.h"
#include "optimizers/adamw.h"
#include "optimizers/cache_muon.h"
#include "optimizers/combined.h"
#include "optimizers/dion2.h"
#include "optimizers/factory.h"
#include "optimizers/lion.h"
#include "optimizers/muon.h"
#include "optimizers/newton_schulz.h"
#include "optimizers/normuon.h"
#include "optimizers/param_groups.h"
#include "optimizers/rmnp.h"
#include "optimizers/selection.h"
#include "optimizers/sgd.h"
#include "optimizers/turbo_muon.h"

#include "tests/gradcheck.h"
#include "tests/temp_dir.h"

namespace ml {
namespace {

// ------------------------------------------------------------------ tiny dense float64 matrices
struct Mat {
  int64_t rows = 0, cols = 0;
  std::vector<double> v;
  Mat() = default;
  Mat(int64_t r, int64_t c, double fill = 0.0) : rows(r), cols(c), v(static_cast<size_t>(r * c), fill) {}
  double& operator()(int64_t i, int64_t j) { return v[static_cast<size_t>(i * cols + j)]; }
  double operator()(int64_t i, int64_t j) const { return v[static_cast<size_t>(i * cols + j)]; }
};

Mat mm(const Mat& a, const Mat& b) {
  Mat c(a.rows, b.cols);
  for (int64_t i = 0; i < a.rows; ++i)
    for (int64_t k = 0; k < a.cols; ++k)
      for (int64_t j = 0; j < b.cols; ++j) c(i, j) += a(i, k) * b(k, j);
  return c;
}
Mat transposed(const Mat& a) {
  Mat t(a.cols, a.rows);
  for (int64_t i = 0; i < a.rows; ++i)
    for (int64_t j = 0; j < a.cols; ++j) t(j, i) = a(i, j);
  return t;
}
Mat eye(int64_t n) {
  Mat e(n, n);
  for (int64_t i = 0; i < n; ++i) e(i, i) = 1.0;
  return e;
}
Mat lincomb(double x, const Mat& a, double y, const Mat& b) {
  Mat c(a.rows, a.cols);
  for (size_t i = 0; i < a.v.size(); ++i) c.v[i] = x * a.v[i] + y * b.v[i];
  return c;
}
Mat scaled(double s, const Mat& a) { return lincomb(s, a, 0.0, a); }
double frobenius(const Mat& a) {
  double s = 0.0;
  for (double x : a.v) s += x * x;
  return std::sqrt(s);
}
double max_abs_diff(const Mat& a, const Mat& b) {
  double d = 0.0;
  for (size_t i = 0; i < a.v.size(); ++i) d = std::max(d, std::abs(a.v[i] - b.v[i]));
  return d;
}
double relative_error(const Mat& x, const Mat& reference) { return frobenius(lincomb(1.0, x, -1.0, reference)) / frobenius(reference); }

Mat random_mat(int64_t r, int64_t c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  Mat m(r, c);
  for (double& x : m.v) x = normal(rng);
  return m;
}

// Tensors are read as (size(0), rest) matrices, the way the optimizers see conv filters.
Mat to_mat(const Tensor& t) {
  Mat m(t.size(0), t.numel() / t.size(0));
  m.v = t.to_vector<double>();
  return m;
}
Tensor to_tensor(const Mat& m, DType dtype = DType::Float64, Shape shape = {}) {
  return Tensor::from_vector(m.v, shape.empty() ? Shape{m.rows, m.cols} : shape).to(dtype);
}

// Eigen-decomposition of a symmetric matrix by cyclic Jacobi rotations: S = V diag(values) V^T.
void jacobi_eigen(Mat s, std::vector<double>& values, Mat& vectors) {
  const int64_t n = s.rows;
  vectors = eye(n);
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0.0;
    for (int64_t p = 0; p < n; ++p)
      for (int64_t q = p + 1; q < n; ++q) off += s(p, q) * s(p, q);
    if (off < 1e-30 * std::max(1.0, frobenius(s) * frobenius(s))) break;
    for (int64_t p = 0; p < n; ++p)
      for (int64_t q = p + 1; q < n; ++q) {
        if (s(p, q) == 0.0) continue;
        const double theta = (s(q, q) - s(p, p)) / (2.0 * s(p, q));
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::abs(theta) + std::sqrt(theta * theta + 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0), sn = t * c;
        for (int64_t k = 0; k < n; ++k) {  // columns p, q
          const double skp = s(k, p), skq = s(k, q);
          s(k, p) = c * skp - sn * skq;
          s(k, q) = sn * skp + c * skq;
        }
        for (int64_t k = 0; k < n; ++k) {  // rows p, q
          const double spk = s(p, k), sqk = s(q, k);
          s(p, k) = c * spk - sn * sqk;
          s(q, k) = sn * spk + c * sqk;
        }
        for (int64_t k = 0; k < n; ++k) {
          const double vkp = vectors(k, p), vkq = vectors(k, q);
          vectors(k, p) = c * vkp - sn * vkq;
          vectors(k, q) = sn * vkp + c * vkq;
        }
      }
  }
  values.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) values[static_cast<size_t>(i)] = s(i, i);
}

Mat small_side_of(const Mat& m) { return m.rows > m.cols ? transposed(m) : m; }

std::vector<double> singular_values(const Mat& x) {
  const Mat s = small_side_of(x);
  std::vector<double> values;
  Mat vectors;
  jacobi_eigen(mm(s, transposed(s)), values, vectors);
  for (double& v : values) v = std::sqrt(std::max(v, 0.0));
  return values;
}

// U V^T = (G G^T)^(-1/2) G on the small side.
Mat exact_polar(const Mat& g) {
  if (g.rows > g.cols) return transposed(exact_polar(transposed(g)));
  std::vector<double> values;
  Mat v;
  jacobi_eigen(mm(g, transposed(g)), values, v);
  Mat scaled_v = v;
  for (int64_t i = 0; i < v.rows; ++i)
    for (int64_t j = 0; j < v.cols; ++j) scaled_v(i, j) /= std::sqrt(values[static_cast<size_t>(j)]);
  return mm(mm(scaled_v, transposed(v)), g);
}

// Orthonormal columns (n x k) by modified Gram-Schmidt of a random matrix.
Mat random_orthonormal(int64_t n, int64_t k, uint64_t seed) {
  Mat q = random_mat(n, k, seed);
  for (int64_t j = 0; j < k; ++j) {
    for (int64_t p = 0; p < j; ++p) {
      double dot = 0.0;
      for (int64_t i = 0; i < n; ++i) dot += q(i, j) * q(i, p);
      for (int64_t i = 0; i < n; ++i) q(i, j) -= dot * q(i, p);
    }
    double norm = 0.0;
    for (int64_t i = 0; i < n; ++i) norm += q(i, j) * q(i, j);
    for (int64_t i = 0; i < n; ++i) q(i, j) /= std::sqrt(norm);
  }
  return q;
}

// U diag(sigma) V^T with random orthonormal U, V.
Mat with_spectrum(int64_t rows, int64_t cols, const std::vector<double>& sigma, uint64_t seed) {
  const int64_t k = static_cast<int64_t>(sigma.size());
  Mat u = random_orthonormal(rows, k, seed), v = random_orthonormal(cols, k, seed + 1);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < k; ++j) u(i, j) *= sigma[static_cast<size_t>(j)];
  return mm(u, transposed(v));
}

// ------------------------------------------------------------------ Newton–Schulz schedules
// The triples as OPTIMIZERS.md lists them: ns_schedule is checked against them, and the references
// below run newton_schulz_reference (the textbook iteration) with them.
using Triples = std::vector<NsTriple>;
const NsTriple kKeller{3.4445, -4.7750, 2.0315};
const Triples kMuonPlus{{4.0848, -6.8946, 2.9270},
                        {3.9505, -6.3029, 2.6377},
                        {3.7418, -5.5913, 2.3037},
                        {2.8769, -3.1427, 1.2046},
                        {2.8366, -3.0525, 1.2012}};
const Triples kPolarExpress{{8.156554524902461, -22.48329292557795, 15.878769915207462},
                            {4.042929935166739, -2.808917465908714, 0.5000178451051316},
                            {3.8916678022926607, -2.772484153217685, 0.5060648178503393},
                            {3.285753657755655, -2.3681294933425376, 0.46449024233003106},
                            {2.3465413258596377, -1.7097828382687081, 0.42323551169305323}};

NsSchedule paper_keller(int64_t steps = 5, bool aol = false) { return {Triples(static_cast<size_t>(steps), kKeller), 1.0, 1e-7, aol}; }
NsSchedule paper_polar_express() { return {kPolarExpress, 1.02, 1e-6, false}; }
// Turbo-Muon: AOL, then the last four Muon+ triples.
NsSchedule paper_turbo() { return {Triples(kMuonPlus.begin() + 1, kMuonPlus.end()), 1.0, 1e-7, true}; }

// newton_schulz_reference in float64 on a Mat; `transform` receives its T (result = T X0).
Mat ref_newton_schulz(const Mat& g, const NsSchedule& ns, Mat* transform = nullptr) {
  Tensor t;
  const Mat out = to_mat(newton_schulz_reference(to_tensor(g), ns, transform ? &t : nullptr).contiguous());
  if (transform) *transform = to_mat(t);
  return out;
}

// ------------------------------------------------------------------ parameter helpers
Tensor make_param(const Mat& m, Shape shape = {}, DType dtype = DType::Float64) {
  Tensor p = to_tensor(m, dtype, shape);
  p.requires_grad_();
  return p;
}
void set_grad(Tensor& p, const Mat& g) { p.set_grad(to_tensor(g, p.dtype(), p.shape())); }

double keller_scale(int64_t m, int64_t n) { return std::sqrt(std::max(1.0, static_cast<double>(m) / n)); }

// The settings of kind S with its defaults, lr 0.05 and weight decay 0.1.
template <typename S>
S settings_of() {
  S settings = with_defaults(S::settings());
  settings.lr = 0.05;
  settings.weight_decay = 0.1;
  return settings;
}

// The same for a kind given by name.
OptimizerSettings spec_of(const std::string& kind) {
  OptimizerSettings settings = default_optimizer_settings(kind);
  std::visit(
      [](auto& s) {
        s.lr = 0.05;
        s.weight_decay = 0.1;
      },
      settings);
  return settings;
}

SgdSettings sgd_settings(double lr, double momentum = 0.0, bool nesterov = false, double weight_decay = 0.0) {
  return {lr, weight_decay, momentum, nesterov};
}

// The non-matrix optimizer named `kind` with its defaults in that role.
NonMatrixSettings non_matrix_spec_of(const std::string& kind) {
  std::optional<NonMatrixSettings> settings;
  for_each_kind<NonMatrixSettings>([&](auto index) {
    using S = std::variant_alternative_t<decltype(index)::value, NonMatrixSettings>;
    if (kind == S::kind) settings = with_defaults(non_matrix_settings<S>());
  });
  if (!settings) throw std::invalid_argument("no non-matrix kind '" + kind + "'");
  return *settings;
}

// ================================================================== SGD, AdamW and Lion
TEST(OptimSGD, MatchesPyTorchFormulas) {
  for (const bool nesterov : {false, true}) {
    const double lr = 0.1, mu = 0.9, wd = 0.01;
    Mat w = random_mat(3, 4, 1), buffer(3, 4);
    Tensor p = make_param(w);
    SGD sgd({{"w", p}}, sgd_settings(lr, mu, nesterov, wd));
    for (int step = 0; step < 3; ++step) {
      const Mat g = random_mat(3, 4, 10 + step);
      set_grad(p, g);
      sgd.step();
      const Mat d = lincomb(1.0, g, wd, w);
      buffer = lincomb(mu, buffer, 1.0, d);
      const Mat direction = nesterov ? lincomb(1.0, d, mu, buffer) : buffer;
      w = lincomb(1.0, w, -lr, direction);
      EXPECT_LT(max_abs_diff(to_mat(p), w), 1e-12) << "nesterov " << nesterov << " step " << step;
    }
  }
}

TEST(OptimSGD, NoMomentumIsPlainGradientDescentAndSkipsParamsWithoutGrad) {
  Mat w = random_mat(2, 2, 2), b = random_mat(1, 3, 3);
  Tensor pw = make_param(w), pb = make_param(b, {3});
  SGD sgd({{"w", pw}, {"b", pb}}, sgd_settings(0.5));
  const Mat g = random_mat(2, 2, 4);
  set_grad(pw, g);
  sgd.step();
  EXPECT_LT(max_abs_diff(to_mat(pw), lincomb(1.0, w, -0.5, g)), 1e-15);
  EXPECT_EQ(to_mat(pb.reshape({1, 3})).v, b.v);
  EXPECT_TRUE(sgd.state_dict().empty());
  EXPECT_THROW(SGD({{"w", pw}}, sgd_settings(0.1, 0.0, true)), std::invalid_argument);
}

TEST(OptimAdamW, MatchesPyTorchFormulasWithPerParameterStepCounts) {
  const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
  Mat w = random_mat(2, 3, 5), v_bias = random_mat(1, 3, 6);
  Tensor pw = make_param(w), pb = make_param(v_bias, {3});
  AdamW adam({{"w", pw}, {"b", pb}}, AdamWSettings{lr, wd, {b1, b2}, eps});
  Mat m_w(2, 3), v_w(2, 3), m_b(1, 3), v_b(1, 3);
  int t_w = 0, t_b = 0;
  auto reference = [&](Mat& param, Mat& m, Mat& v, int& t, const Mat& g) {
    ++t;
    param = scaled(1.0 - lr * wd, param);
    for (size_t i = 0; i < g.v.size(); ++i) {
      m.v[i] = b1 * m.v[i] + (1 - b1) * g.v[i];
      v.v[i] = b2 * v.v[i] + (1 - b2) * g.v[i] * g.v[i];
      const double denom = std::sqrt(v.v[i]) / std::sqrt(1 - std::pow(b2, t)) + eps;
      param.v[i] -= lr / (1 - std::pow(b1, t)) * m.v[i] / denom;
    }
  };
  for (int step = 0; step < 3; ++step) {
    const Mat gw = random_mat(2, 3, 20 + step), gb = random_mat(1, 3, 30 + step);
    set_grad(pw, gw);
    reference(w, m_w, v_w, t_w, gw);
    if (step != 1) {  // the bias has no gradient at step 1: its state must not move
      set_grad(pb, gb);
      reference(v_bias, m_b, v_b, t_b, gb);
    }
    adam.step();
    adam.zero_grad();
    EXPECT_FALSE(pw.grad().defined());
    EXPECT_LT(max_abs_diff(to_mat(pw), w), 1e-12) << "step " << step;
    EXPECT_LT(max_abs_diff(to_mat(pb.reshape({1, 3})), v_bias), 1e-12) << "step " << step;
  }
  const StateDict state = adam.state_dict();
  EXPECT_EQ(state.at("w.step").item(), 3.0);
  EXPECT_EQ(state.at("b.step").item(), 2.0);
  EXPECT_LT(max_abs_diff(to_mat(state.at("w.exp_avg_sq")), v_w), 1e-15);
}

// adamw_update_ (one pass) against the step written one op per term, on copies of the same tensors:
// both dtypes, with and without weight decay, sizes around the CPU kernel's chunks and vectors and
// large enough for several threads; three steps, so the moments carry over.
TEST(OptimAdamW, FusedUpdateMatchesTheStepWrittenAsOps) {
  for (DType dtype : {DType::Float32, DType::Float64}) {
    const double tolerance = dtype == DType::Float32 ? 2e-6 : 1e-14;
    for (double weight_decay : {0.0, 0.1}) {
      for (int64_t n : {int64_t{1}, int64_t{37}, int64_t{4096 + 13}, int64_t{70001}}) {
        Generator gen(static_cast<uint64_t>(n));
        Tensor fused[3] = {randn({n}, dtype, cpu(), gen), zeros({n}, dtype), zeros({n}, dtype)};
        Tensor by_ops[3] = {fused[0].clone(), fused[1].clone(), fused[2].clone()};
        for (int t = 1; t <= 3; ++t) {
          const Tensor grad = randn({n}, dtype, cpu(), gen);
          const AdamWStep step{1e-2, 0.9, 0.95, 1e-8, weight_decay, 1.0 - std::pow(0.9, t), 1.0 - std::pow(0.95, t)};
          adamw_update_(fused[0], grad, fused[1], fused[2], step);
          adamw_update_by_ops(by_ops[0], grad, by_ops[1], by_ops[2], step);
        }
        for (int k = 0; k < 3; ++k) {
          const std::vector<double> a = fused[k].to(DType::Float64).to_vector<double>();
          const std::vector<double> b = by_ops[k].to(DType::Float64).to_vector<double>();
          double worst = 0;
          for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]) / (1.0 + std::abs(b[i])));
          EXPECT_LT(worst, tolerance) << dtype_name(dtype) << " n " << n << " weight decay " << weight_decay
                                      << " tensor " << k << " (param, exp_avg, exp_avg_sq)";
        }
      }
    }
  }
  Tensor param = zeros({2, 3}), moment = zeros({2, 3}), moment_sq = zeros({2, 3});
  const auto update_with = [&](const Tensor& grad) { adamw_update_(param, grad, moment, moment_sq, AdamWStep{}); };
  ml::testing::expect_error_mentions([&] { update_with(zeros({3, 2}).t()); }, {"adamw_update_", "contiguous"});
  ml::testing::expect_error_mentions([&] { update_with(zeros({3, 2})); }, {"adamw_update_", "one shape and dtype"});
  ml::testing::expect_error_mentions([&] { update_with(zeros({2, 3}, DType::Float64)); }, {"adamw_update_", "dtype"});
}

// A gradient adamw_update_ does not take (a transposed view) goes through the step written as ops.
TEST(OptimAdamW, TransposedGradientTakesTheStepWrittenAsOps) {
  Generator gen(3);
  Tensor p = randn({3, 2}, DType::Float64, cpu(), gen), reference = p.clone();
  p.requires_grad_();
  const Tensor grad_t = randn({2, 3}, DType::Float64, cpu(), gen);
  p.set_grad(grad_t.t());
  AdamW adam({{"w", p}}, AdamWSettings{1e-2, 0.1, {0.9, 0.95}, 1e-8});
  adam.step();
  Tensor m = zeros({3, 2}, DType::Float64), v = zeros({3, 2}, DType::Float64);
  adamw_update_by_ops(reference, grad_t.t().contiguous(), m, v, AdamWStep{1e-2, 0.9, 0.95, 1e-8, 0.1, 1.0 - std::pow(0.9, 1.0), 1.0 - std::pow(0.95, 1.0)});
  EXPECT_EQ(p.detach().to_vector<double>(), reference.to_vector<double>());
}

TEST(OptimLion, ThreeStepsMatchThePapersAlgorithm) {
  const double lr = 1e-2, b1 = 0.9, b2 = 0.99, wd = 0.1;
  Mat w = random_mat(2, 3, 7), v_bias = random_mat(1, 3, 8);
  Tensor pw = make_param(w), pb = make_param(v_bias, {3});
  Lion lion({{"w", pw}, {"b", pb}}, LionSettings{lr, wd, {b1, b2}});
  Mat m_w(2, 3), m_b(1, 3);
  auto sign = [](double x) { return static_cast<double>((x > 0) - (x < 0)); };
  // Chen et al. 2023, Algorithm 2, coordinate by coordinate.
  auto reference = [&](Mat& param, Mat& m, const Mat& g) {
    for (size_t i = 0; i < g.v.size(); ++i) {
      const double c = b1 * m.v[i] + (1 - b1) * g.v[i];
      param.v[i] -= lr * (sign(c) + wd * param.v[i]);
      m.v[i] = b2 * m.v[i] + (1 - b2) * g.v[i];
    }
  };
  for (int step = 0; step < 3; ++step) {
    Mat gw = random_mat(2, 3, 40 + step);
    const Mat gb = random_mat(1, 3, 50 + step);
    if (step == 0) gw(0, 1) = 0.0;  // c = 0 there: no step but the decay
    set_grad(pw, gw);
    reference(w, m_w, gw);
    if (step != 1) {  // the bias has no gradient at step 1: its state must not move
      set_grad(pb, gb);
      reference(v_bias, m_b, gb);
    }
    lion.step();
    lion.zero_grad();
    EXPECT_LT(max_abs_diff(to_mat(pw), w), 1e-12) << "step " << step;
    EXPECT_LT(max_abs_diff(to_mat(pb.reshape({1, 3})), v_bias), 1e-12) << "step " << step;
  }
  const StateDict state = lion.state_dict();
  EXPECT_EQ(state.size(), 2u);  // one buffer per parameter
  EXPECT_LT(max_abs_diff(to_mat(state.at("w.exp_avg")), m_w), 1e-15);
  EXPECT_LT(max_abs_diff(to_mat(state.at("b.exp_avg").reshape({1, 3})), m_b), 1e-15);
  EXPECT_THROW(Lion({{"w", pw}}, LionSettings{lr, wd, {0.9, 1.0}}), std::invalid_argument);
}

TEST(OptimOptimizer, StepRecordsNoHistoryAndLrScaleMultiplies) {
  Mat w = random_mat(2, 2, 7);
  Tensor p = make_param(w);
  SGD sgd({{"w", p}}, sgd_settings(1.0));
  sgd.set_lr_scale(0.25);
  const Mat g = random_mat(2, 2, 8);
  set_grad(p, g);
  sgd.step();  // an in-place update of a tensor requiring grad throws unless grad mode is off
  EXPECT_TRUE(p.is_leaf());
  EXPECT_LT(max_abs_diff(to_mat(p), lincomb(1.0, w, -0.25, g)), 1e-15);
  EXPECT_THROW(sgd.set_lr_scale(-1.0), std::invalid_argument);
  EXPECT_THROW(SGD({{"w", p}, {"again", p}}, sgd_settings(0.1)), std::invalid_argument);
}

// ================================================================== Newton–Schulz
TEST(OptimNewtonSchulz, KellerSingularValuesLandInTheDocumentedBand) {
  // Well-conditioned inputs (random rectangular, and a spectrum spread over [0.1, 1]); a singular
  // value far below ||U||_F / 500 would still be on its way up after 5 steps. The band is the
  // stable 2-cycle of Keller's polynomial, (0.6819, 1.1343), which "[0.68, 1.13]" rounds.
  std::vector<Mat> inputs{random_mat(32, 48, 11), random_mat(48, 32, 12), random_mat(40, 120, 13)};
  std::vector<double> sigma;
  for (int i = 0; i < 24; ++i) sigma.push_back(std::pow(10.0, -i / 23.0));
  inputs.push_back(with_spectrum(24, 40, sigma, 14));
  for (const Mat& g : inputs) {
    const Tensor out = newton_schulz(to_tensor(g, DType::Float32), ns_schedule(NsCoefficients::Keller, 5));
    ASSERT_EQ(out.shape(), (Shape{g.rows, g.cols}));
    const std::vector<double> sv = singular_values(to_mat(out));
    EXPECT_GE(*std::min_element(sv.begin(), sv.end()), 0.68) << g.rows << "x" << g.cols;
    EXPECT_LE(*std::max_element(sv.begin(), sv.end()), 1.1345) << g.rows << "x" << g.cols;
  }
}

TEST(OptimNewtonSchulz, SchedulesHoldThePaperTriples) {
  struct Case {
    const char* coefficients;
    int64_t steps;
    bool aol;
    NsSchedule expected;
  };
  NsSchedule polar_express_7 = paper_polar_express();  // beyond the family's length the last triple repeats
  polar_express_7.triples.push_back(kPolarExpress.back());
  polar_express_7.triples.push_back(kPolarExpress.back());
  const std::vector<Case> cases{
      {"keller", 5, false, paper_keller()},
      {"keller", 3, false, paper_keller(3)},
      {"keller", 4, true, paper_keller(4, true)},
      {"muon_plus", 5, false, {kMuonPlus, 1.0, 1e-7, false}},
      {"muon_plus", 4, true, paper_turbo()},
      {"polar_express", 5, false, paper_polar_express()},
      // With AOL a family is taken from its end: Polar Express triples 2-5 (modded-nanogpt's Turbo variant).
      {"polar_express", 4, true, {Triples(kPolarExpress.begin() + 1, kPolarExpress.end()), 1.02, 1e-6, true}},
      {"polar_express", 7, false, polar_express_7}};
  for (const Case& c : cases) {
    const NsSchedule got = ns_schedule(value_named(ns_coefficient_names(), c.coefficients), c.steps, c.aol);
    const std::string label = std::string(c.coefficients) + " steps " + std::to_string(c.steps) + " aol " + std::to_string(c.aol);
    ASSERT_EQ(got.triples.size(), c.expected.triples.size()) << label;
    for (size_t i = 0; i < got.triples.size(); ++i) {
      EXPECT_EQ(got.triples[i].a, c.expected.triples[i].a) << label << " triple " << i;
      EXPECT_EQ(got.triples[i].b, c.expected.triples[i].b) << label << " triple " << i;
      EXPECT_EQ(got.triples[i].c, c.expected.triples[i].c) << label << " triple " << i;
    }
    EXPECT_EQ(got.norm_factor, c.expected.norm_factor) << label;
    EXPECT_EQ(got.norm_eps, c.expected.norm_eps) << label;
    EXPECT_EQ(got.aol, c.expected.aol) << label;
  }
  EXPECT_THROW(ns_schedule(NsCoefficients::Keller, 0), std::invalid_argument);
}

// Shapes for holding the fast Newton–Schulz to the textbook one: wide and tall matrices with
// l > 1.5 k take the Gram-form evaluation order, square and nearly square ones the direct order;
// a single row or column, and a zero matrix (X0 = 0: eps keeps it finite).
struct NsShape {
  int64_t rows, cols;
  bool zero = false;
};
const std::vector<NsShape> kNsShapes{{12, 20}, {20, 12}, {16, 16}, {16, 20}, {20, 16}, {1, 9}, {9, 1}, {6, 10, true}};
Mat ns_input(const NsShape& shape, uint64_t seed) {
  return shape.zero ? Mat(shape.rows, shape.cols) : random_mat(shape.rows, shape.cols, seed);
}
// Every coefficient family, with and without AOL, at 1, 4 and 5 steps.
std::vector<std::pair<std::string, NsSchedule>> every_schedule() {
  std::vector<std::pair<std::string, NsSchedule>> out;
  for (const char* coefficients : {"keller", "muon_plus", "polar_express"})
    for (const bool aol : {false, true})
      for (const int64_t steps : {1, 4, 5})
        out.push_back({std::string(coefficients) + " steps " + std::to_string(steps) + (aol ? " aol" : ""),
                       ns_schedule(value_named(ns_coefficient_names(), coefficients), steps, aol)});
  return out;
}

TEST(OptimNewtonSchulz, FastMatchesTheTextbookIterationForEveryScheduleAndShape) {
  for (const auto& [label, schedule] : every_schedule())
    for (const NsShape& shape : kNsShapes) {
      const Mat g = ns_input(shape, 100 + shape.rows * 31 + shape.cols);
      const std::string where = label + " " + std::to_string(shape.rows) + "x" + std::to_string(shape.cols);
      const Tensor reference = newton_schulz_reference(to_tensor(g), schedule);
      ASSERT_EQ(reference.shape(), (Shape{g.rows, g.cols})) << where;
      const Mat expected = to_mat(reference.contiguous());
      // Float64: the same map up to rounding. The output scale rides on the last iteration.
      const Tensor fast = newton_schulz(to_tensor(g), schedule, -0.5);
      ASSERT_EQ(fast.shape(), (Shape{g.rows, g.cols})) << where;
      EXPECT_LT(max_abs_diff(to_mat(fast.contiguous()), scaled(-0.5, expected)), 1e-10) << where;
      // Float32, the precision training runs in: the evaluation orders round differently, and the
      // aggressive triples amplify the difference (to about 1e-5 at most here).
      const Tensor fast32 = newton_schulz(to_tensor(g, DType::Float32), schedule);
      EXPECT_EQ(fast32.dtype(), DType::Float32) << where;
      EXPECT_LT(max_abs_diff(to_mat(fast32.contiguous()), expected), 1e-4) << where;
    }
  EXPECT_THROW(newton_schulz_reference(zeros({2, 3, 4}), ns_schedule(NsCoefficients::Keller, 5)), std::invalid_argument);
}

// A stack [3, rows, cols] of same-shape matrices (one of them zero) gives each matrix the result
// it gets alone, for every schedule, both evaluation orders (6x40 takes the Gram form) and tall
// inputs: the batched products, traces and AOL sums are per matrix.
TEST(OptimNewtonSchulz, AStackSolvesEachMatrixAsItWouldAlone) {
  for (const auto& [label, schedule] : every_schedule())
    for (const Shape& shape : {Shape{12, 20}, Shape{20, 12}, Shape{16, 16}, Shape{6, 40}, Shape{40, 6}})
      for (const DType dtype : {DType::Float64, DType::Float32}) {
        const std::string where = label + " " + shape_str(shape) + " " + dtype_name(dtype);
        std::vector<Tensor> matrices;
        for (int i = 0; i < 3; ++i)
          matrices.push_back(i == 1 ? zeros(shape, dtype) : to_tensor(random_mat(shape[0], shape[1], 300 + i), dtype));
        const Tensor together = newton_schulz(stack(matrices, 0), schedule, -0.5);
        ASSERT_EQ(together.shape(), (Shape{3, shape[0], shape[1]})) << where;
        for (int64_t i = 0; i < 3; ++i) {
          const Tensor alone = newton_schulz(matrices[static_cast<size_t>(i)], schedule, -0.5);
          EXPECT_LT(max_abs_diff(to_mat(together.narrow(0, i, 1).squeeze(0).contiguous()), to_mat(alone.contiguous())),
                    dtype == DType::Float64 ? 1e-12 : 1e-6)
              << where << ", matrix " << i;
        }
      }
}

TEST(OptimNewtonSchulz, TransformMapsTheNormalizedInputToTheResult) {
  for (const auto& [label, schedule] : every_schedule())
    for (const NsShape& shape : kNsShapes) {
      const Mat g = ns_input(shape, 21 + shape.rows + shape.cols);
      const std::string where = label + " " + std::to_string(shape.rows) + "x" + std::to_string(shape.cols);
      Mat t_ref;
      const Mat expected = ref_newton_schulz(g, schedule, &t_ref);
      // The reference's own T: T X0 is its result.
      const Mat small = small_side_of(g);
      const Mat x0 = scaled(1.0 / (schedule.norm_factor * frobenius(g) + schedule.norm_eps), small);
      EXPECT_LT(max_abs_diff(mm(t_ref, x0), small_side_of(expected)), 1e-10) << where;
      const NsTransformResult r = newton_schulz_with_transform(to_tensor(g), schedule);
      // Relative to T's size: for the zero matrix, AOL's diag(s) is 1/sqrt(1e-7) ~ 3162, and T's
      // entries reach about 1e4.
      const double t_size = std::max(1.0, max_abs_diff(t_ref, Mat(t_ref.rows, t_ref.cols)));
      EXPECT_LT(max_abs_diff(to_mat(r.transform), t_ref), 1e-10 * t_size) << where;
      EXPECT_LT(max_abs_diff(to_mat(r.result.contiguous()), expected), 1e-10) << where;
    }
}

TEST(OptimTurboMuon, FourAolStepsAtLeastAsCloseToThePolarFactorAsNs5) {
  // Random and moderately ill-conditioned inputs (condition number 100, log-spaced, and a 1/k
  // spectrum). At condition numbers near 1e3 the claim no longer holds (see the report).
  std::vector<Mat> inputs{random_mat(64, 64, 31), random_mat(32, 96, 32), random_mat(96, 32, 33)};
  std::vector<double> log_spaced, harmonic;
  for (int i = 0; i < 48; ++i) {
    log_spaced.push_back(std::pow(10.0, -2.0 * i / 47.0));
    harmonic.push_back(1.0 / (i + 1));
  }
  inputs.push_back(with_spectrum(48, 80, log_spaced, 34));
  inputs.push_back(with_spectrum(80, 48, harmonic, 35));
  for (const Mat& g : inputs) {
    const Mat polar = exact_polar(g);
    const Tensor input = to_tensor(g, DType::Float32);
    const double ns5 = relative_error(to_mat(newton_schulz(input, ns_schedule(NsCoefficients::Keller, 5)).contiguous()), polar);
    const double turbo = relative_error(to_mat(newton_schulz(input, ns_schedule(NsCoefficients::MuonPlus, 4, true)).contiguous()), polar);
    EXPECT_LE(turbo, ns5) << g.rows << "x" << g.cols << ": turbo " << turbo << " ns5 " << ns5;
  }
}

// ================================================================== Muon family steps
// Muon's reference: lerp momentum, Nesterov, Newton–Schulz, scaled decoupled update.
struct RefMuon {
  Mat w, m;
  template <typename S>
  void step(const Mat& g, const S& s, const NsSchedule& ns, double scale) {
    m = lincomb(s.momentum, m, 1 - s.momentum, g);
    const Mat u = s.nesterov ? lincomb(1 - s.momentum, g, s.momentum, m) : m;
    w = lincomb(1 - s.lr * s.weight_decay, w, -s.lr * scale, ref_newton_schulz(u, ns));
  }
};

TEST(OptimMuon, ThreeStepsMatchTheReferenceForMatricesAndConvFilters) {
  struct Case {
    UpdateScaling scaling;
    bool nesterov;
    Shape shape;
  };
  const std::vector<Case> cases{{UpdateScaling::Keller, true, {6, 10}},
                                {UpdateScaling::Keller, true, {10, 6}},
                                {UpdateScaling::Moonlight, false, {10, 6}},
                                {UpdateScaling::Spectral, true, {10, 6}},
                                {UpdateScaling::Keller, true, {4, 2, 3, 3}}};
  for (const Case& c : cases) {
    MuonSettings spec = settings_of<MuonSettings>();
    spec.scaling = c.scaling;
    spec.nesterov = c.nesterov;
    const int64_t rows = c.shape[0], cols = numel_of(c.shape) / rows;
    RefMuon ref{random_mat(rows, cols, 40), Mat(rows, cols)};
    Tensor p = make_param(ref.w, c.shape);
    Muon muon({{"layer.weight", p}}, spec);
    const double scale = c.scaling == UpdateScaling::Keller      ? keller_scale(rows, cols)
                         : c.scaling == UpdateScaling::Moonlight ? 0.2 * std::sqrt(static_cast<double>(std::max(rows, cols)))
                                                                 : std::sqrt(static_cast<double>(rows) / cols);
    for (int step = 0; step < 3; ++step) {
      const Mat g = random_mat(rows, cols, 50 + step);
      set_grad(p, g);
      muon.step();
      ref.step(g, spec, paper_keller(), scale);
      ASSERT_EQ(p.shape(), c.shape);
      EXPECT_LT(max_abs_diff(to_mat(p), ref.w), 1e-10)
          << name_of(update_scaling_names(), c.scaling) << " " << shape_str(c.shape) << " step " << step;
    }
  }
  Tensor bias = make_param(random_mat(1, 4, 1), {4});
  EXPECT_THROW(Muon({{"bias", bias}}, settings_of<MuonSettings>()), std::invalid_argument);
}

// The methods that stack same-shape matrices (Muon, Turbo-Muon, NorMuon) update each as an
// optimizer holding it alone does: at two threads, where the CPU backend takes stacks of these
// sizes, three 32x48 matrices and two conv filters go as stacks, the 48x32 and 32x20 matrices
// alone, over three steps; at one thread all go alone.
template <typename Method, typename Settings>
void expect_stacked_steps_match_lone_ones() {
  const Settings spec = settings_of<Settings>();
  const std::vector<Shape> shapes{{32, 48}, {48, 32}, {32, 48}, {32, 4, 3, 3}, {32, 48}, {32, 20}, {32, 4, 3, 3}};
  std::vector<NamedParam> together;
  std::vector<Tensor> alone_params;
  std::vector<std::unique_ptr<Method>> alone;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const int64_t rows = shapes[i][0], cols = numel_of(shapes[i]) / rows;
    const Mat w = random_mat(rows, cols, 400 + i);
    together.push_back({"w" + std::to_string(i), make_param(w, shapes[i])});
    alone_params.push_back(make_param(w, shapes[i]));
    alone.push_back(std::make_unique<Method>(std::vector<NamedParam>{{"w", alone_params.back()}}, spec));
  }
  Method stacked(together, spec);
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < shapes.size(); ++i) {
      const int64_t rows = shapes[i][0], cols = numel_of(shapes[i]) / rows;
      const Mat g = random_mat(rows, cols, 500 + 10 * step + i);
      set_grad(together[i].param, g);
      set_grad(alone_params[i], g);
      alone[i]->step();
    }
    stacked.step();
    for (size_t i = 0; i < shapes.size(); ++i)
      EXPECT_LT(max_abs_diff(to_mat(together[i].param), to_mat(alone_params[i])), 1e-12)
          << Settings::kind << " " << shape_str(shapes[i]) << " #" << i << " step " << step;
  }
}

TEST(OptimMuon, SameShapeMatricesStepAsEachWouldAlone) {
  const int saved = num_threads();
  for (int threads : {2, 1}) {
    set_num_threads(threads);
    ASSERT_EQ(backend_for(cpu()).batched_products_pay(3, 32 * 32 * 32), threads > 1);
    expect_stacked_steps_match_lone_ones<Muon, MuonSettings>();
    expect_stacked_steps_match_lone_ones<TurboMuon, TurboMuonSettings>();
    expect_stacked_steps_match_lone_ones<NorMuon, NorMuonSettings>();
  }
  set_num_threads(saved);
}

TEST(OptimMuon, RenormalizeRescalesEachFilterTensorBeforeTheUpdateAsAirbench94Muon) {
  // airbench94_muon.py's Muon step, literally, in float64: accumulating Nesterov momentum
  // (B <- mu B + G, U = G + mu B), then W <- W sqrt(out) / ||W||_F, then W <- W - lr NS3(U).
  MuonSettings spec = settings_of<MuonSettings>();
  spec.lr = 0.24;
  spec.momentum = 0.6;
  spec.weight_decay = 0.0;
  spec.ns_steps = 3;
  spec.renormalize = true;
  const Shape shape{4, 2, 3, 3};
  Mat w = scaled(3.0, random_mat(4, 18, 70)), buffer(4, 18);
  Tensor p = make_param(w, shape);
  Muon muon({{"conv.weight", p}}, spec);
  const NsSchedule ns = paper_keller(3);
  for (int step = 0; step < 2; ++step) {
    const Mat g = random_mat(4, 18, 80 + step);
    set_grad(p, g);
    muon.step();
    buffer = lincomb(spec.momentum, buffer, 1.0, g);
    const Mat update = lincomb(1.0, g, spec.momentum, buffer);
    w = scaled(std::sqrt(4.0) / frobenius(w), w);
    w = lincomb(1.0, w, -spec.lr, ref_newton_schulz(update, ns));
    // The lerp momentum is 1 - mu times this one; they differ only through Newton–Schulz's eps
    // (X = U / (||U|| + 1e-7)), by about 1e-7 / ||U|| relative.
    EXPECT_LT(max_abs_diff(to_mat(p), w), 1e-8) << "step " << step;
  }
}

TEST(OptimTurboMuon, ThreeStepsMatchTheReference) {
  const TurboMuonSettings spec = settings_of<TurboMuonSettings>();
  RefMuon ref{random_mat(12, 7, 41), Mat(12, 7)};
  Tensor p = make_param(ref.w);
  TurboMuon turbo({{"w", p}}, spec);
  for (int step = 0; step < 3; ++step) {
    const Mat g = random_mat(12, 7, 60 + step);
    set_grad(p, g);
    turbo.step();
    ref.step(g, spec, paper_turbo(), keller_scale(12, 7));
    EXPECT_LT(max_abs_diff(to_mat(p), ref.w), 1e-10) << "step " << step;
  }
}

TEST(OptimRMNP, ThreeStepsMatchTheReference) {
  const RmnpSettings spec = settings_of<RmnpSettings>();
  for (const Shape& shape : {Shape{5, 9}, Shape{9, 5}, Shape{3, 2, 2, 2}}) {
    const int64_t rows = shape[0], cols = numel_of(shape) / rows;
    Mat w = random_mat(rows, cols, 42), m(rows, cols);
    Tensor p = make_param(w, shape);
    RMNP rmnp({{"w", p}}, spec);
    for (int step = 0; step < 3; ++step) {
      const Mat g = random_mat(rows, cols, 70 + step);
      set_grad(p, g);
      rmnp.step();
      m = lincomb(spec.momentum, m, 1.0, g);
      Mat u = lincomb(1.0, g, spec.momentum, m);
      for (int64_t i = 0; i < rows; ++i) {
        double n = 0.0;
        for (int64_t j = 0; j < cols; ++j) n += u(i, j) * u(i, j);
        for (int64_t j = 0; j < cols; ++j) u(i, j) /= std::max(std::sqrt(n), 1e-12);
      }
      w = lincomb(1 - spec.lr * spec.weight_decay, w, -spec.lr * keller_scale(rows, cols), u);
      EXPECT_LT(max_abs_diff(to_mat(p), w), 1e-12) << shape_str(shape) << " step " << step;
    }
  }
}

TEST(OptimRMNP, RowsOfTheUpdateHaveTheScaledUnitNorm) {
  RmnpSettings spec = settings_of<RmnpSettings>();
  spec.weight_decay = 0.0;
  const Mat w = random_mat(12, 4, 43);
  Tensor p = make_param(w, {}, DType::Float32);
  RMNP rmnp({{"w", p}}, spec);
  Mat g = random_mat(12, 4, 44);
  for (int64_t j = 0; j < 4; ++j) g(3, j) *= 1e-3;  // tiny and large rows alike
  set_grad(p, g);
  rmnp.step();
  const Mat delta = lincomb(1.0, to_mat(p), -1.0, w);
  for (int64_t i = 0; i < 12; ++i) {
    double n = 0.0;
    for (int64_t j = 0; j < 4; ++j) n += delta(i, j) * delta(i, j);
    EXPECT_NEAR(std::sqrt(n), spec.lr * keller_scale(12, 4), 1e-6) << "row " << i;
  }
}

TEST(OptimNorMuon, ThreeStepsMatchTheReference) {
  const NorMuonSettings spec = settings_of<NorMuonSettings>();
  for (const Shape& shape : {Shape{6, 11}, Shape{11, 6}}) {
    const int64_t rows = shape[0], cols = shape[1];
    Mat w = random_mat(rows, cols, 45), m(rows, cols);
    std::vector<double> v(static_cast<size_t>(rows), 0.0);
    Tensor p = make_param(w);
    NorMuon normuon({{"w", p}}, spec);
    for (int step = 0; step < 3; ++step) {
      const Mat g = random_mat(rows, cols, 80 + step);
      set_grad(p, g);
      normuon.step();
      m = lincomb(spec.momentum, m, 1 - spec.momentum, g);
      const Mat o = ref_newton_schulz(lincomb(1 - spec.momentum, g, spec.momentum, m), paper_keller());
      Mat normalized = o;
      for (int64_t i = 0; i < rows; ++i) {
        double mean_sq = 0.0;
        for (int64_t j = 0; j < cols; ++j) mean_sq += o(i, j) * o(i, j) / cols;
        double& vi = v[static_cast<size_t>(i)];
        vi = spec.beta2 * vi + (1 - spec.beta2) * mean_sq;
        for (int64_t j = 0; j < cols; ++j) normalized(i, j) = o(i, j) / (std::sqrt(vi) + 1e-10);
      }
      normalized = scaled(frobenius(o) / frobenius(normalized), normalized);
      w = lincomb(1 - spec.lr * spec.weight_decay, w, -spec.lr * keller_scale(rows, cols), normalized);
      EXPECT_LT(max_abs_diff(to_mat(p), w), 1e-10) << shape_str(shape) << " step " << step;
    }
  }
}

TEST(OptimNorMuon, ZeroGradientLeavesTheWeightFinite) {
  NorMuonSettings spec = settings_of<NorMuonSettings>();
  spec.weight_decay = 0.0;
  const Mat w = random_mat(4, 6, 46);
  Tensor p = make_param(w, {}, DType::Float32);
  NorMuon normuon({{"w", p}}, spec);
  set_grad(p, Mat(4, 6));
  normuon.step();
  EXPECT_LT(max_abs_diff(to_mat(p), w), 1e-7);
}

// Dion2's reference: error feedback, L1 top-k along the shorter side, sparse update.
TEST(OptimDion2, ThreeStepsMatchTheReference) {
  const Dion2Settings spec = settings_of<Dion2Settings>();
  for (const Shape& shape : {Shape{8, 14}, Shape{14, 8}}) {
    const int64_t rows = shape[0], cols = shape[1];
    const bool by_rows = rows <= cols;
    const int64_t slices = std::min(rows, cols), k = 2;  // ceil(0.25 * 8)
    Mat w = random_mat(rows, cols, 47), m(rows, cols);
    Tensor p = make_param(w);
    Dion2 dion({{"w", p}}, spec);
    for (int step = 0; step < 3; ++step) {
      const Mat g = random_mat(rows, cols, 90 + step);
      set_grad(p, g);
      dion.step();
      m = lincomb(1.0, m, 1.0, g);
      const Mat oriented = by_rows ? m : transposed(m);  // slices as rows
      std::vector<std::pair<double, int64_t>> scores;
      for (int64_t s = 0; s < slices; ++s) {
        double l1 = 0.0;
        for (int64_t j = 0; j < oriented.cols; ++j) l1 += std::abs(oriented(s, j));
        scores.push_back({-l1, s});
      }
      std::sort(scores.begin(), scores.end());
      std::vector<int64_t> chosen{scores[0].second, scores[1].second};
      std::sort(chosen.begin(), chosen.end());
      Mat selected(k, oriented.cols);
      for (int64_t r = 0; r < k; ++r)
        for (int64_t j = 0; j < oriented.cols; ++j) selected(r, j) = oriented(chosen[r], j);
      const Mat o = ref_newton_schulz(selected, paper_polar_express());
      const double scale = std::sqrt(static_cast<double>(rows) / cols);
      w = scaled(1 - spec.lr * spec.weight_decay, w);
      for (int64_t r = 0; r < k; ++r)
        for (int64_t j = 0; j < oriented.cols; ++j) {
          const int64_t s = chosen[r];
          (by_rows ? w(s, j) : w(j, s)) -= spec.lr * scale * o(r, j);
          (by_rows ? m(s, j) : m(j, s)) *= spec.ef_decay;
        }
      EXPECT_LT(max_abs_diff(to_mat(p), w), 1e-10) << shape_str(shape) << " step " << step;
    }
  }
}

TEST(OptimDion2, ChangesExactlyKSlicesAlongTheShorterSide) {
  for (const std::string selection : {"l1", "random"}) {
    Dion2Settings spec = settings_of<Dion2Settings>();
    spec.weight_decay = 0.0;
    spec.selection = value_named(slice_selection_names(), selection);
    for (const auto& [rows, cols, fraction, k] :
         std::vector<std::tuple<int64_t, int64_t, double, int64_t>>{{16, 40, 0.25, 4}, {40, 16, 0.25, 4}, {10, 30, 0.3, 3},
                                                                   {10, 30, 0.01, 1}}) {
      spec.fraction = fraction;
      const Mat w = random_mat(rows, cols, 48);
      Tensor p = make_param(w, {}, DType::Float32);
      Dion2 dion({{"w", p}}, spec, 7);
      set_grad(p, random_mat(rows, cols, 49));
      dion.step();
      const Mat now = to_mat(p);
      std::set<int64_t> changed_rows, changed_cols;
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j)
          if (now(i, j) != static_cast<double>(static_cast<float>(w(i, j)))) changed_rows.insert(i), changed_cols.insert(j);
      const bool by_rows = rows <= cols;
      EXPECT_EQ(static_cast<int64_t>((by_rows ? changed_rows : changed_cols).size()), k)
          << selection << " " << rows << "x" << cols << " fraction " << fraction;
      EXPECT_EQ(static_cast<int64_t>((by_rows ? changed_cols : changed_rows).size()), by_rows ? cols : rows);
    }
  }
  Dion2Settings spec = settings_of<Dion2Settings>();
  Tensor w = make_param(random_mat(2, 2, 1));
  spec.fraction = 0.0;
  EXPECT_THROW(Dion2({{"w", w}}, spec), std::invalid_argument);
}

TEST(OptimDion2, TopKIndicesAscendWithTiesToTheLowerIndex) {
  const Tensor scores = Tensor::from_vector<float>({0.5f, 2.0f, 2.0f, 1.0f, 2.0f, 3.0f}, {6});
  const auto indices = [&](int64_t k) { return top_k_indices(scores, k).to_vector<int64_t>(); };
  EXPECT_EQ(indices(1), (std::vector<int64_t>{5}));
  EXPECT_EQ(indices(3), (std::vector<int64_t>{1, 2, 5}));  // of the three 2.0s, the first two
  EXPECT_EQ(indices(5), (std::vector<int64_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(indices(6), (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_THROW(top_k_indices(scores, 0), std::invalid_argument);
  EXPECT_THROW(top_k_indices(scores, 7), std::invalid_argument);
  EXPECT_THROW(top_k_indices(scores.reshape({2, 3}), 1), std::invalid_argument);
}

// CacheMuon against a reference that keeps its own transform and residuals.
TEST(OptimCacheMuon, HitsAndMissesFollowTheThresholdAndForcedRefresh) {
  CacheMuonSettings spec = settings_of<CacheMuonSettings>();
  spec.gamma = 0.1;
  spec.k_max = 3;
  const int64_t rows = 10, cols = 16;
  Mat w = random_mat(rows, cols, 51), m(rows, cols);
  Tensor p = make_param(w);
  CacheMuon cache({{"w", p}}, spec);
  const Mat base = random_mat(rows, cols, 52);
  // Gradient changes per step: 0 repeats the momentum direction (a hit unless k_max forces a
  // refresh); a large change moves the polar factor far beyond gamma (a miss), and the momentum
  // then drifts back (step 6 misses, step 7 is within gamma of the step-6 solve).
  const std::vector<double> changes{0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 5.0};
  Mat transform;
  double reference_residual = 0.0;
  int cached_hits_in_a_row = -1;  // -1: no cache yet
  int hits = 0, misses = 0, forced = 0;
  auto residual = [](const Mat& d) {
    return frobenius(lincomb(1.0, mm(d, transposed(d)), -1.0, eye(d.rows))) / std::sqrt(static_cast<double>(d.rows));
  };
  for (size_t step = 0; step < changes.size(); ++step) {
    const Mat g = lincomb(1.0, base, changes[step], random_mat(rows, cols, 200 + step));
    set_grad(p, g);
    cache.step();
    m = lincomb(spec.momentum, m, 1 - spec.momentum, g);
    const Mat u = lincomb(1 - spec.momentum, g, spec.momentum, m);
    Mat o;
    bool fresh = true;
    if (cached_hits_in_a_row >= 0 && cached_hits_in_a_row < spec.k_max) {
      const Mat d = mm(transform, scaled(1.0 / (frobenius(u) + 1e-7), u));
      const double r = residual(d);
      ASSERT_GT(std::abs(r - reference_residual - spec.gamma), 1e-3) << "step " << step << " is too close to call";
      if (r <= reference_residual + spec.gamma) {
        o = d;
        fresh = false;
        ++cached_hits_in_a_row;
        ++hits;
      } else {
        ++misses;
      }
    } else if (cached_hits_in_a_row >= 0) {
      ++forced;
    }
    if (fresh) {
      o = ref_newton_schulz(u, paper_keller(), &transform);
      reference_residual = residual(o);
      cached_hits_in_a_row = 0;
    }
    w = lincomb(1 - spec.lr * spec.weight_decay, w, -spec.lr * keller_scale(rows, cols), o);
    EXPECT_LT(max_abs_diff(to_mat(p), w), 1e-9) << "step " << step;
  }
  const auto metrics = cache.metrics();
  EXPECT_EQ(metrics.at("cache_hits"), hits);
  EXPECT_EQ(metrics.at("cache_misses"), misses);
  EXPECT_EQ(metrics.at("cache_forced_refreshes"), forced);
  EXPECT_EQ(metrics.at("cache_cold_solves"), 1);
  EXPECT_GE(hits, 1);  // the sequence exercises every branch
  EXPECT_GE(misses, 1);
  EXPECT_GE(forced, 1);
  const double total = static_cast<double>(changes.size());
  EXPECT_DOUBLE_EQ(metrics.at("cache_hit_rate"), hits / total);
  // Fresh Muon solves every step. CacheMuon pays the Gram matrix S S^T every step, the residual
  // T A T^T (4 k^3) whenever a cache is consulted and after each fresh solve, D = T X (2 k^2 l) on
  // a hit, and for each fresh solve Newton–Schulz with its transform minus the Gram matrix it was
  // handed. At 10 x 16 the Gram form is the cheaper evaluation order: 4 k^2 l + (8 K - 6) k^3 with
  // the transform included, against K (4 k^2 l + 2 k^3) directly.
  const double k = rows, l = cols;
  const double direct = 5 * (4 * k * k * l + 2 * k * k * k), gram_form = 4 * k * k * l + 34 * k * k * k;
  ASSERT_LT(gram_form, direct);
  const int fresh = 1 + misses + forced, checks = hits + misses;
  EXPECT_NEAR(metrics.at("muon_gflops"), total * gram_form * 1e-9, 1e-12);
  const double gram = 2 * k * k * l, residual_check = 4 * k * k * k;
  EXPECT_NEAR(metrics.at("ortho_gflops"),
              (total * gram + checks * residual_check + hits * 2 * k * k * l + fresh * (gram_form - gram + residual_check)) * 1e-9,
              1e-12);
}

// ================================================================== grouping and factory
TEST(OptimParamGroups, GptAndCnnNamesSplitAsDocumented) {
  auto param = [](Shape shape) { return zeros(shape).requires_grad_(); };
  const std::vector<NamedParam> gpt{{"wte.weight", param({65, 16})},
                                    {"wpe.weight", param({8, 16})},
                                    {"blocks.0.ln1.weight", param({16})},
                                    {"blocks.0.attn.qkv.weight", param({48, 16})},
                                    {"blocks.0.attn.qkv.bias", param({48})},
                                    {"blocks.0.mlp.fc.weight", param({64, 16})},
                                    {"lnf.weight", param({16})}};
  ParameterSplit split = split_parameters(gpt);
  auto names = [](const std::vector<NamedParam>& ps) {
    std::vector<std::string> out;
    for (const NamedParam& p : ps) out.push_back(p.name);
    return out;
  };
  EXPECT_EQ(names(split.matrix), (std::vector<std::string>{"blocks.0.attn.qkv.weight", "blocks.0.mlp.fc.weight"}));
  EXPECT_EQ(names(split.other), (std::vector<std::string>{"wte.weight", "wpe.weight", "blocks.0.ln1.weight",
                                                          "blocks.0.attn.qkv.bias", "lnf.weight"}));
  const std::vector<NamedParam> cnn{{"stem.weight", param({24, 3, 2, 2})},
                                    {"stem.bias", param({24})},
                                    {"groups.0.conv1.weight", param({32, 24, 3, 3})},
                                    {"groups.0.bn1.weight", param({32})},
                                    {"head.weight", param({10, 128})}};
  split = split_parameters(cnn);
  EXPECT_EQ(names(split.matrix), (std::vector<std::string>{"groups.0.conv1.weight"}));
  EXPECT_EQ(names(split.other), (std::vector<std::string>{"stem.weight", "stem.bias", "groups.0.bn1.weight", "head.weight"}));
  split = split_parameters(cnn, {"conv1"});
  EXPECT_EQ(names(split.matrix), (std::vector<std::string>{"stem.weight", "head.weight"}));
}

TEST(OptimFactory, BuildsEveryKindAndSplitsTheMuonFamily) {
  auto params = [] {
    return std::vector<NamedParam>{{"wte.weight", zeros({10, 4}).requires_grad_()},
                                   {"fc.weight", zeros({6, 4}).requires_grad_()},
                                   {"fc.bias", zeros({6}).requires_grad_()}};
  };
  for (const std::string kind : {"sgd", "adamw", "lion"}) {
    const auto opt = make_optimizer(spec_of(kind), params());
    EXPECT_EQ(opt->kind(), kind);
    EXPECT_EQ(opt->params().size(), 3u);
  }
  for (const std::string kind : {"muon", "turbo_muon", "cache_muon", "dion2", "rmnp", "normuon"})
    for (const std::string& non_matrix_kind : kind_names<NonMatrixSettings>()) {
      SCOPED_TRACE(kind + " with " + non_matrix_kind);
      OptimizerSettings spec = spec_of(kind);
      std::visit(
          [&](auto& s) {
            if constexpr (std::is_base_of_v<MatrixOptimizerSettings, std::decay_t<decltype(s)>>)
              s.non_matrix = non_matrix_spec_of(non_matrix_kind);
          },
          spec);
      const auto opt = make_optimizer(spec, params());
      auto* combined = dynamic_cast<CombinedOptimizer*>(opt.get());
      ASSERT_NE(combined, nullptr);
      EXPECT_EQ(combined->matrix_optimizer().kind(), kind);
      EXPECT_EQ(combined->other_optimizer().kind(), non_matrix_kind);
      ASSERT_EQ(combined->matrix_optimizer().params().size(), 1u);
      EXPECT_EQ(combined->matrix_optimizer().params()[0].name, "fc.weight");
      EXPECT_EQ(combined->other_optimizer().params().size(), 2u);
    }
  try {
    default_optimizer_settings("adam");
    FAIL() << "unknown kind accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'adam'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("adamw, lion, muon"), std::string::npos) << e.what();
  }
}

TEST(OptimFactory, CombinedStepUpdatesBothGroupsWithTheScheduledLr) {
  MuonSettings spec = settings_of<MuonSettings>();
  spec.weight_decay = 0.0;
  spec.non_matrix = sgd_settings(0.5);
  const Mat w = random_mat(6, 4, 53), b = random_mat(1, 6, 54);
  Tensor pw = make_param(w), pb = make_param(b, {6});
  const auto opt = make_optimizer(spec, {{"fc.weight", pw}, {"fc.bias", pb}});
  opt->set_lr_scale(0.5);
  const Mat gw = random_mat(6, 4, 55), gb = random_mat(1, 6, 56);
  set_grad(pw, gw);
  set_grad(pb, gb);
  opt->step();
  RefMuon ref{w, Mat(6, 4)};
  MuonSettings scaled_spec = spec;
  scaled_spec.lr *= 0.5;
  ref.step(gw, scaled_spec, paper_keller(), keller_scale(6, 4));
  EXPECT_LT(max_abs_diff(to_mat(pw), ref.w), 1e-10);
  EXPECT_LT(max_abs_diff(to_mat(pb.reshape({1, 6})), lincomb(1.0, b, -0.25, gb)), 1e-12);
  opt->zero_grad();
  EXPECT_FALSE(pw.grad().defined());
  EXPECT_FALSE(pb.grad().defined());
}

// ================================================================== checkpoints
// A small model with every parameter kind, for the state round trips.
std::vector<NamedParam> toy_model(uint64_t seed) {
  return {{"wte.weight", make_param(random_mat(7, 4, seed), {}, DType::Float32)},
          {"blocks.0.fc.weight", make_param(random_mat(6, 4, seed + 1), {}, DType::Float32)},
          {"blocks.0.proj.weight", make_param(random_mat(4, 6, seed + 2), {}, DType::Float32)},
          {"groups.0.conv.weight", make_param(random_mat(3, 8, seed + 3), {3, 2, 2, 2}, DType::Float32)},
          {"blocks.0.fc.bias", make_param(random_mat(1, 6, seed + 4), {6}, DType::Float32)}};
}
void set_toy_grads(std::vector<NamedParam>& params, uint64_t seed) {
  for (size_t i = 0; i < params.size(); ++i) {
    Tensor& p = params[i].param;
    set_grad(p, random_mat(p.size(0), p.numel() / p.size(0), seed + i));
  }
}

TEST(OptimState, ResumedOptimizerContinuesIdentically) {
  // (kind, non-matrix kind): every kind, and Lion also as the non-matrix optimizer.
  const std::vector<std::pair<std::string, std::string>> cases{
      {"sgd", ""},       {"adamw", ""},           {"lion", ""},            {"muon", "adamw"},
      {"muon", "lion"},  {"turbo_muon", "adamw"}, {"cache_muon", "adamw"}, {"dion2", "adamw"},
      {"rmnp", "adamw"}, {"normuon", "adamw"}};
  for (const auto& [kind, non_matrix_kind] : cases) {
    SCOPED_TRACE(kind + " " + non_matrix_kind);
    OptimizerSettings spec = spec_of(kind);
    std::visit(
        [&non_matrix_kind = non_matrix_kind](auto& s) {
          using S = std::decay_t<decltype(s)>;
          if constexpr (std::is_base_of_v<MomentumSettings, S> || std::is_same_v<S, SgdSettings>) {
            s.momentum = 0.9;
            s.nesterov = true;
          }
          if constexpr (std::is_base_of_v<MatrixOptimizerSettings, S>) s.non_matrix = non_matrix_spec_of(non_matrix_kind);
        },
        spec);
    if (auto* cache = std::get_if<CacheMuonSettings>(&spec)) {
      cache->gamma = 0.5;
      cache->k_max = 2;
    }
    if (auto* dion2 = std::get_if<Dion2Settings>(&spec)) dion2->selection = SliceSelection::Random;
    std::vector<NamedParam> model = toy_model(60);
    auto original = make_optimizer(spec, model);
    for (int step = 0; step < 2; ++step) {
      set_toy_grads(model, 300 + 10 * step);
      original->step();
    }
    const StateDict saved = original->state_dict();
    std::vector<NamedParam> resumed_model = toy_model(60);
    for (size_t i = 0; i < model.size(); ++i) {
      NoGradGuard no_grad;
      copy_(resumed_model[i].param, model[i].param);
    }
    auto resumed = make_optimizer(spec, resumed_model);
    resumed->load_state_dict(saved);
    EXPECT_EQ(resumed->metrics(), original->metrics()) << kind;
    for (int step = 2; step < 5; ++step) {
      set_toy_grads(model, 300 + 10 * step);
      set_toy_grads(resumed_model, 300 + 10 * step);
      original->step();
      resumed->step();
    }
    for (size_t i = 0; i < model.size(); ++i)
      EXPECT_EQ(model[i].param.to_vector<float>(), resumed_model[i].param.to_vector<float>()) << kind << " " << model[i].name;
    EXPECT_EQ(resumed->metrics(), original->metrics()) << kind;
  }
}

TEST(OptimState, StateDictNamesBuffersAndCounters) {
  const CacheMuonSettings spec = settings_of<CacheMuonSettings>();
  std::vector<NamedParam> model = toy_model(61);
  const auto opt = make_optimizer(spec, model);
  const StateDict state = opt->state_dict();
  for (const std::string key : {"matrix.blocks.0.fc.weight.momentum", "matrix.blocks.0.fc.weight.cache_transform",
                                "matrix.groups.0.conv.weight.has_cache", "matrix.cache.hits",
                                "non_matrix.wte.weight.exp_avg", "non_matrix.blocks.0.fc.bias.step"})
    EXPECT_TRUE(state.count(key)) << key;
  EXPECT_EQ(state.at("matrix.blocks.0.fc.weight.cache_transform").shape(), (Shape{4, 4}));
  EXPECT_EQ(state.at("matrix.groups.0.conv.weight.momentum").shape(), (Shape{3, 8}));
  EXPECT_EQ(state.at("matrix.cache.hits").dtype(), DType::Int64);
}

TEST(OptimState, LoadRejectsMissingUnexpectedAndMismatchedEntriesWithoutChangingAnything) {
  const MuonSettings spec = settings_of<MuonSettings>();
  std::vector<NamedParam> model = toy_model(62);
  const auto opt = make_optimizer(spec, model);
  set_toy_grads(model, 400);
  opt->step();
  const StateDict good = opt->state_dict();
  auto expect_rejected = [&](const StateDict& bad, const std::vector<std::string>& fragments) {
    try {
      opt->load_state_dict(bad);
      ADD_FAILURE() << "accepted";
    } catch (const std::runtime_error& e) {
      for (const std::string& f : fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
    }
    const StateDict after = opt->state_dict();
    for (const auto& [key, tensor] : good) EXPECT_EQ(after.at(key).to_vector<double>(), tensor.to_vector<double>()) << key;
  };
  StateDict missing = good;
  missing.erase("matrix.blocks.0.fc.weight.momentum");
  expect_rejected(missing, {"missing", "blocks.0.fc.weight.momentum"});
  StateDict extra = good;
  extra["matrix.blocks.9.fc.weight.momentum"] = zeros({6, 4});
  expect_rejected(extra, {"unexpected", "blocks.9.fc.weight.momentum"});
  StateDict wrong_shape = good;
  wrong_shape["matrix.blocks.0.proj.weight.momentum"] = zeros({6, 4});
  expect_rejected(wrong_shape, {"blocks.0.proj.weight.momentum", "[4, 6]"});
  StateDict wrong_counter = good;
  wrong_counter["non_matrix.wte.weight.step"] = zeros({});
  expect_rejected(wrong_counter, {"wte.weight.step", "int64"});
  StateDict unprefixed = good;
  unprefixed["blocks.0.fc.weight.momentum"] = zeros({6, 4});
  expect_rejected(unprefixed, {"unexpected", "'blocks.0.fc.weight.momentum'"});
}

// ================================================================== ortho command
TEST(OptimOrtho, SymmetricEigenDecomposesIncludingRepeatedEigenvalues) {
  const int64_t n = 9;
  const Mat q = random_orthonormal(n, n, 70);
  for (const std::vector<double>& lambda : {std::vector<double>{-3, -1, 0.5, 2, 2, 2, 7, 7.5, 11},
                                            std::vector<double>(9, 1.0)}) {
    Mat qd = q;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) qd(i, j) *= lambda[static_cast<size_t>(j)];
    const Mat a = mm(qd, transposed(q));
    const SymmetricEigen eig = symmetric_eigen(a.v, n);
    for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(eig.values[static_cast<size_t>(i)], lambda[static_cast<size_t>(i)], 1e-12);
    Mat v(n, n);
    v.v = eig.vectors;  // rows are eigenvectors
    EXPECT_LT(max_abs_diff(mm(v, transposed(v)), eye(n)), 1e-13);
    Mat lambda_v = v;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) lambda_v(i, j) *= eig.values[static_cast<size_t>(i)];
    EXPECT_LT(max_abs_diff(mm(v, a), lambda_v), 1e-12);  // v_i^T A = lambda_i v_i^T
  }
}

TEST(OptimOrtho, ExactPolarMatchesTheJacobiReference) {
  for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{20, 33}, {33, 20}, {16, 16}}) {
    const Mat g = random_mat(rows, cols, 71 + rows);
    const Tensor polar = exact_polar(to_tensor(g, DType::Float32));
    EXPECT_EQ(polar.dtype(), DType::Float64);
    const Mat float_input = to_mat(to_tensor(g, DType::Float32));
    EXPECT_LT(max_abs_diff(to_mat(polar), exact_polar(float_input)), 1e-11) << rows << "x" << cols;
  }
  Mat rank_one(4, 6);
  for (int64_t j = 0; j < 6; ++j) rank_one(0, j) = rank_one(1, j) = rank_one(2, j) = rank_one(3, j) = j + 1.0;
  EXPECT_THROW(exact_polar(to_tensor(rank_one)), std::runtime_error);
}

TEST(OptimOrtho, EveryMethodGivesItsDocumentedOutput) {
  const Mat g = random_mat(24, 40, 72);
  const Tensor input = to_tensor(g, DType::Float32);
  const Mat polar = exact_polar(to_mat(input));
  for (const std::string& method : ortho_methods()) {
    const Tensor out = orthogonalize(method, input);
    ASSERT_EQ(out.shape(), (Shape{24, 40})) << method;
    if (method != "rmnp" && method != "dion2") {  // the Newton–Schulz methods approximate the polar factor
      EXPECT_LT(relative_error(to_mat(out.contiguous()), polar), 0.25) << method;
    }
  }
  // turbo is Turbo-Muon's schedule; rmnp gives unit rows; dion2 keeps 6 of the 24 rows.
  EXPECT_EQ(orthogonalize("turbo", input).contiguous().to_vector<float>(),
            newton_schulz(input, ns_schedule(NsCoefficients::MuonPlus, 4, true)).contiguous().to_vector<float>());
  const Mat rows_normalized = to_mat(orthogonalize("rmnp", input));
  for (int64_t i = 0; i < 24; ++i) {
    double n = 0.0;
    for (int64_t j = 0; j < 40; ++j) n += rows_normalized(i, j) * rows_normalized(i, j);
    EXPECT_NEAR(n, 1.0, 1e-5);
  }
  const Mat sparse = to_mat(orthogonalize("dion2", input));
  int nonzero_rows = 0;
  for (int64_t i = 0; i < 24; ++i) {
    double n = 0.0;
    for (int64_t j = 0; j < 40; ++j) n += sparse(i, j) * sparse(i, j);
    nonzero_rows += n > 0.0;
  }
  EXPECT_EQ(nonzero_rows, 6);
  // 24 x 40 runs the Gram form (4 k^2 l + (8K - 6) k^3); a square matrix the direct order.
  EXPECT_EQ(ortho_flops("ns5", 24, 40), 4.0 * 24 * 24 * 40 + 34.0 * 24 * 24 * 24);
  EXPECT_EQ(ortho_flops("turbo", 40, 24), 4.0 * 24 * 24 * 40 + 26.0 * 24 * 24 * 24);
  EXPECT_EQ(ortho_flops("ns5", 30, 30), 5 * (4.0 * 30 * 30 * 30 + 2.0 * 30 * 30 * 30));
  EXPECT_EQ(ortho_flops("dion2", 24, 40), 2.0 * 24 * 40 + 4.0 * 6 * 6 * 40 + 34.0 * 6 * 6 * 6);
  // Performed: the symmetric products (X X^T, every k x k one) at half: 3 k^2 l + (4K - 3) k^3 in the
  // Gram form, K (3 k^2 l + k^3) direct.
  EXPECT_EQ(ortho_flops("ns5", 24, 40, 0, FlopCount::Performed), 3.0 * 24 * 24 * 40 + 17.0 * 24 * 24 * 24);
  EXPECT_EQ(ortho_flops("turbo", 40, 24, 0, FlopCount::Performed), 3.0 * 24 * 24 * 40 + 13.0 * 24 * 24 * 24);
  EXPECT_EQ(ortho_flops("ns5", 30, 30, 0, FlopCount::Performed), 5 * (3.0 * 30 * 30 * 30 + 30.0 * 30 * 30));
  EXPECT_EQ(ortho_flops("dion2", 24, 40, 0, FlopCount::Performed), 2.0 * 24 * 40 + 3.0 * 6 * 6 * 40 + 17.0 * 6 * 6 * 6);
  EXPECT_THROW(orthogonalize("svd", input), std::invalid_argument);
  EXPECT_THROW(orthogonalize("rmnp", input, 3), std::invalid_argument);
}

TEST(OptimOrtho, RunOrthoOnHugeFiniteInputDoesNotOverflow) {
  // Entries of 2^60 (a Frobenius norm beyond 1e19) overflowed the float32 Gram matrix: all NaN.
  TempDir dir;
  const std::string in = dir.file("g.npy"), out_path = dir.file("o.npy");
  const Tensor input = to_tensor(random_mat(24, 40, 74), DType::Float32);
  const auto ortho = [&](const std::string& method, const Tensor& matrix) {
    save_npy(in, matrix);
    std::ostringstream log;
    run_ortho(method, in, out_path, 0, log);
    return load_npy(out_path).to_vector<float>();
  };
  for (const double scale : {std::ldexp(1.0, 60), 1e37}) {
    const Tensor huge = mul(input, scale);
    for (const std::string& method : ortho_methods()) {
      const std::vector<float> expected = ortho(method, input);
      const std::vector<float> got = ortho(method, huge);
      ASSERT_EQ(got.size(), expected.size());
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_NEAR(got[i], expected[i], 1e-4) << method << " scale " << scale << " entry " << i;
    }
  }
}

TEST(OptimOrtho, EveryMethodTakesAnEmptyMatrix) {
  for (const Shape& shape : {Shape{0, 5}, Shape{5, 0}})
    for (const std::string& method : ortho_methods()) EXPECT_EQ(orthogonalize(method, zeros(shape)).shape(), shape) << method;
}

TEST(OptimOrtho, RunOrthoRefusesValuesFloat32CannotHoldNamingTheEntry) {
  TempDir dir;
  const std::string in = dir.file("g.npy"), out_path = dir.file("o.npy");
  const auto error_of = [&](double value, DType dtype) {
    Mat g = random_mat(3, 4, 75);
    g(1, 2) = value;
    save_npy(in, to_tensor(g, dtype));
    std::ostringstream log;
    try {
      run_ortho("ns5", in, out_path, 0, log);
    } catch (const std::runtime_error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  const std::string nan = error_of(std::nan(""), DType::Float32);
  EXPECT_NE(nan.find(in + ": the value at [1, 2] is nan; expected finite values"), std::string::npos) << nan;
  const std::string inf = error_of(-INFINITY, DType::Float64);
  EXPECT_NE(inf.find("the value at [1, 2] is -inf"), std::string::npos) << inf;
  const std::string big = error_of(1e300, DType::Float64);
  EXPECT_NE(big.find("the value at [1, 2] is 1e+300, beyond float32's range"), std::string::npos) << big;
  EXPECT_FALSE(std::filesystem::exists(out_path));
}

TEST(OptimOrtho, RunOrthoReadsAndWritesNpy) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("muonlab_test_ortho_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const Mat g = random_mat(12, 7, 73);
  const std::string in = (dir / "g.npy").string(), out_path = (dir / "o.npy").string();
  save_npy(in, to_tensor(g, DType::Float64));
  std::ostringstream log;
  EXPECT_EQ(run_ortho("polar_express", in, out_path, 7, log), 0);
  EXPECT_NE(log.str().find("12x7"), std::string::npos) << log.str();
  const Tensor written = load_npy(out_path);
  EXPECT_EQ(written.dtype(), DType::Float32);
  const Tensor expected = newton_schulz(to_tensor(g, DType::Float32), ns_schedule(NsCoefficients::PolarExpress, 7));
  EXPECT_EQ(written.to_vector<float>(), expected.contiguous().to_vector<float>());
  save_npy(in, zeros({2, 3, 4}));
  try {
    run_ortho("ns5", in, out_path, 0, log);
    ADD_FAILURE() << "a 3-D array was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(in), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace ml
