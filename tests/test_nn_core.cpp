// Core nn ops (nn_core.h): forward values computed by hand, float64 gradient checks, agreement with
// the same functions composed from primitive ops at sizes that take the kernels' parallel paths,
// float32 against float64, dropout statistics and error messages.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "framework/backend.h"
#include "framework/backends/cpu/cpu_attention.h"
#include "framework/ops.h"
#include "framework/parallel.h"
#include "tests/gradcheck.h"

using namespace ml;
using ml::testing::expect_error_mentions;
using ml::testing::expect_gradients_match;
using ml::testing::random_input;
using ml::testing::TensorFn;

namespace {

using V = std::vector<double>;
std::vector<double> values(const Tensor& t) { return t.to_vector<double>(); }
Tensor f64(const V& v, const Shape& shape) { return Tensor::from_vector<double>(v, shape); }
Tensor ids(const std::vector<int64_t>& v, const Shape& shape) { return Tensor::from_vector<int64_t>(v, shape); }

void expect_close(const Tensor& actual, const Tensor& expected, double tol, const std::string& what = "") {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  const V a = values(actual), e = values(expected);
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_NEAR(a[i], e[i], tol * std::max(1.0, std::abs(e[i]))) << what << " element " << i;
}

void expect_values_near(const Tensor& actual, const V& expected, double tol = 1e-12) {
  expect_close(actual, f64(expected, actual.shape()), tol);
}

// ------------------------------------------------------------ references composed from primitive ops

Tensor softmax_reference(const Tensor& x) {
  const Tensor e = exp(x - amax(x, {-1}, true));
  return e / sum(e, {-1}, true);
}

Tensor log_softmax_reference(const Tensor& x) {
  const Tensor shifted = x - amax(x, {-1}, true);
  return shifted - log(sum(exp(shifted), {-1}, true));
}

Tensor layer_norm_reference(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  const Tensor centered = x - mean(x, {-1}, true);
  return centered * rsqrt(var(x, {-1}, true, /*correction=*/0) + eps) * w + b;
}

Tensor rms_norm_reference(const Tensor& x, const Tensor& w, double eps) {
  return x * rsqrt(mean(x * x, {-1}, true) + eps) * w;
}

// Mean cross-entropy of logits [N, C] through log_softmax, gather and a float mask of the kept rows.
Tensor cross_entropy_reference(const Tensor& logits, const std::vector<int64_t>& targets, int64_t ignore_index,
                               double smoothing) {
  std::vector<int64_t> safe;
  V kept;
  for (int64_t t : targets) {
    safe.push_back(t == ignore_index ? 0 : t);
    kept.push_back(t == ignore_index ? 0.0 : 1.0);
  }
  const int64_t n = static_cast<int64_t>(targets.size());
  const Tensor logp = log_softmax_reference(logits);
  const Tensor nll = neg(gather(logp, 1, ids(safe, {n, 1}))).reshape({n});
  const Tensor smooth = neg(mean(logp, {1}));
  const Tensor mask = f64(kept, {n}).to(logits.dtype());
  return sum(((1.0 - smoothing) * nll + smoothing * smooth) * mask) / sum(mask);
}

Tensor attention_reference(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  Tensor scores = matmul(q, k.transpose(-1, -2)) * (1.0 / std::sqrt(double(q.size(-1))));
  if (causal) {
    const int64_t t = q.size(-2);
    V above(t * t);
    for (int64_t i = 0; i < t; ++i)
      for (int64_t j = 0; j < t; ++j) above[i * t + j] = j > i;
    scores = masked_fill(scores, f64(above, {t, t}).to(q.dtype()), -std::numeric_limits<double>::infinity());
  }
  return matmul(softmax_reference(scores), v);
}

// f's output and the gradients of sum(f * w) for a fixed random w.
struct Evaluation {
  Tensor out;
  std::vector<Tensor> grads;
};
Evaluation evaluate(const TensorFn& f, const std::vector<Tensor>& inputs) {
  for (const Tensor& x : inputs) x.impl()->grad.reset();
  Evaluation e{f(inputs), {}};
  Generator gen(99);
  sum(e.out * randn(e.out.shape(), e.out.dtype(), cpu(), gen)).backward();
  for (const Tensor& x : inputs) e.grads.push_back(x.grad());
  return e;
}

// Float32 leaves holding the same values.
std::vector<Tensor> as_float32(const std::vector<Tensor>& inputs) {
  std::vector<Tensor> out;
  for (const Tensor& x : inputs) {
    Tensor y = x.detach().to(DType::Float32);
    y.requires_grad_();
    out.push_back(y);
  }
  return out;
}

// f against its composed reference in float64 (tight), and f in float32 against float64.
void expect_matches_reference(const TensorFn& f, const TensorFn& reference, const std::vector<Tensor>& inputs,
                              double float32_tol = 2e-5) {
  const Evaluation fused = evaluate(f, inputs), composed = evaluate(reference, inputs);
  expect_close(fused.out, composed.out, 1e-11, "output");
  for (size_t i = 0; i < inputs.size(); ++i) expect_close(fused.grads[i], composed.grads[i], 1e-10, "gradient");
  const Evaluation single = evaluate(f, as_float32(inputs));
  EXPECT_EQ(single.out.dtype(), DType::Float32);
  expect_close(single.out, fused.out, float32_tol, "float32 output");
  for (size_t i = 0; i < inputs.size(); ++i) expect_close(single.grads[i], fused.grads[i], float32_tol, "float32 gradient");
}

}  // namespace

// ------------------------------------------------------------------------------ forward values

TEST(NnCore, SoftmaxForwardByHand) {
  const double total = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  const V expected{std::exp(1.0) / total, std::exp(2.0) / total, std::exp(3.0) / total};
  expect_values_near(softmax(f64({1, 2, 3}, {3})), expected);
  expect_values_near(log_softmax(f64({1, 2, 3}, {3})), {1 - std::log(total), 2 - std::log(total), 3 - std::log(total)});
  // Shifting the logits changes nothing, however large they are (max subtraction).
  expect_values_near(softmax(f64({1001, 1002, 1003}, {3})), expected);
  expect_close(softmax(Tensor::from_vector<float>({1000, 1001, 1002}, {3})), f64(expected, {3}), 1e-6);
  // Along dim 0 of [[1, 2], [3, 5]]: each column normalized on its own.
  const double c0 = 1 / (1 + std::exp(2.0)), c1 = 1 / (1 + std::exp(3.0));
  expect_values_near(softmax(f64({1, 2, 3, 5}, {2, 2}), 0), {c0, c1, 1 - c0, 1 - c1});
  expect_values_near(log_softmax(f64({1, 2, 3, 5}, {2, 2}), -2), {std::log(c0), std::log(c1), std::log(1 - c0), std::log(1 - c1)});
}

TEST(NnCore, CausalLogSoftmaxKernelMasksWithMinusInfinity) {
  // The attention op only needs the causal softmax; the kernel contract also covers causal
  // log_softmax, whose masked entries are -inf and pass no gradient.
  const Tensor x = random_input({2, 4, 4}, 3).detach();
  Tensor probs = Tensor::empty(x.shape(), DType::Float64), logp = Tensor::empty(x.shape(), DType::Float64);
  backend_of(x).softmax(x, probs, false, true);
  backend_of(x).softmax(x, logp, true, true);
  const Tensor g = random_input({2, 4, 4}, 4).detach();
  Tensor grad_x = Tensor::empty(x.shape(), DType::Float64);
  backend_of(x).softmax_backward(g, logp, grad_x, true);
  const V p = values(probs), lp = values(logp), gv = values(g), gx = values(grad_x);
  for (int64_t s = 0; s < 2; ++s)
    for (int64_t i = 0; i < 4; ++i) {
      double visible_g = 0, row_total = 0;
      for (int64_t j = 0; j <= i; ++j) visible_g += gv[(s * 4 + i) * 4 + j];
      for (int64_t j = 0; j < 4; ++j) {
        const size_t at = (s * 4 + i) * 4 + j;
        row_total += p[at];
        if (j > i) {
          EXPECT_EQ(p[at], 0.0);
          EXPECT_EQ(lp[at], -std::numeric_limits<double>::infinity());
          EXPECT_EQ(gx[at], 0.0);
        } else {
          EXPECT_NEAR(std::exp(lp[at]), p[at], 1e-14);
          EXPECT_NEAR(gx[at], gv[at] - p[at] * visible_g, 1e-14);
        }
      }
      EXPECT_NEAR(row_total, 1.0, 1e-14);
    }
}

// The float32 kernel computes each causal row over its visible entries rounded up to whole
// vectors, zeroing the masked ones among them: rows of every visible length from 1 to 21 (past
// two vectors), against the float64 softmax of the visible entries alone.
TEST(NnCore, CausalSoftmaxFloat32MatchesFloat64AtEveryVisibleLength) {
  const int64_t t = 21;
  const Tensor x64 = random_input({2, t, t}, 5, 0.0).detach() * 4.0;
  Tensor probs = Tensor::empty(x64.shape(), DType::Float32);
  backend_of(x64).softmax(x64.to(DType::Float32), probs, false, true);
  const V x = values(x64), p = values(probs);
  for (int64_t row = 0; row < 2 * t; ++row) {
    const int64_t visible = row % t + 1;
    const double* xr = x.data() + row * t;
    const double shift = *std::max_element(xr, xr + visible);
    double total = 0;
    for (int64_t j = 0; j < visible; ++j) total += std::exp(xr[j] - shift);
    for (int64_t j = 0; j < t; ++j) {
      const double expected = j < visible ? std::exp(xr[j] - shift) / total : 0.0;
      if (j < visible) EXPECT_NEAR(p[row * t + j], expected, 1e-6) << "row " << row << " column " << j;
      else EXPECT_EQ(p[row * t + j], 0.0) << "row " << row << " column " << j;
    }
  }
}

TEST(NnCore, LayerNormAndRmsNormForwardByHand) {
  const Tensor x = f64({1, 2, 3, 4}, {4});
  const double s = 1 / std::sqrt(1.25 + 1e-5);  // mean 2.5, biased variance 1.25
  expect_values_near(layer_norm(x), {-1.5 * s, -0.5 * s, 0.5 * s, 1.5 * s});
  const Tensor w = f64({1, -1, 0.5, 2}, {4}), b = f64({0, 1, 2, 3}, {4});
  expect_values_near(layer_norm(x, w, b, 0.1), [] {
    const double s1 = 1 / std::sqrt(1.25 + 0.1);
    return V{-1.5 * s1, 1 + 0.5 * s1, 2 + 0.25 * s1, 3 + 3 * s1};
  }());
  // Each row normalized on its own.
  expect_values_near(layer_norm(f64({1, 2, 3, 4, 10, 20, 30, 40}, {2, 4}), Tensor(), Tensor(), 0.0),
                     {-1.5 / std::sqrt(1.25), -0.5 / std::sqrt(1.25), 0.5 / std::sqrt(1.25), 1.5 / std::sqrt(1.25),
                      -1.5 / std::sqrt(1.25), -0.5 / std::sqrt(1.25), 0.5 / std::sqrt(1.25), 1.5 / std::sqrt(1.25)});

  const double r = 1 / std::sqrt(14.0 / 3 + 1e-6);  // mean of squares of [1, 2, 3]
  expect_values_near(rms_norm(f64({1, 2, 3}, {3}), Tensor(), 1e-6), {r, 2 * r, 3 * r});
  expect_values_near(rms_norm(f64({1, 2, 3}, {3}), f64({2, 0, -1}, {3}), 1e-6), {2 * r, 0, -3 * r});
  // The default eps is the dtype's machine epsilon, as in F.rms_norm: visible on tiny inputs.
  const Tensor tiny = Tensor::from_vector<float>({3e-4f, 4e-4f}, {2});
  expect_close(rms_norm(tiny), rms_norm(tiny, Tensor(), std::numeric_limits<float>::epsilon()), 1e-7);
  const double tiny_scale = 1 / std::sqrt(12.5e-8 + std::numeric_limits<float>::epsilon());
  expect_close(rms_norm(tiny), Tensor::from_vector<double>({3e-4 * tiny_scale, 4e-4 * tiny_scale}, {2}), 1e-5);
}

// RMNP's row normalization: by hand (a zero row stays zero, a row shorter than eps is divided by
// eps), then against the same formula composed from norm, clamp and rdiv at a size that takes the
// parallel path, contiguous and transposed, float64 and float32.
TEST(NnCore, NormalizeRowsByHandAndAgainstComposedOps) {
  expect_values_near(normalize_rows(f64({3, 4, 0, 0, 0, -2}, {3, 2}), -0.5), {-0.3, -0.4, 0, 0, 0, 0.5});
  expect_values_near(normalize_rows(f64({1e-13, 0}, {2})), {0.1, 0});

  const auto composed = [](const Tensor& x, double scale) {
    return x * rdiv(scale, clamp(norm(x, {-1}, true), 1e-12, std::numeric_limits<double>::infinity()));
  };
  NoGradGuard no_grad;
  const Tensor x = random_input({300, 130}, 12);
  expect_close(normalize_rows(x, 0.7), composed(x, 0.7), 1e-12, "float64");
  expect_close(normalize_rows(x.t(), -2.0), composed(x.t(), -2.0), 1e-12, "transposed");
  const Tensor single = normalize_rows(x.to(DType::Float32), 0.7);
  EXPECT_EQ(single.dtype(), DType::Float32);
  expect_close(single, composed(x, 0.7), 1e-6, "float32");
}

TEST(NnCore, NormalizeRowsRefusesAnInputThatNeedsAGradient) {
  expect_error_mentions([] { normalize_rows(random_input({3, 4}, 13)); },
                        {"normalize_rows", "[3, 4]", "requires a gradient"});
}

TEST(NnCore, CrossEntropyByHand) {
  const Tensor logits = f64({1, 2, 3, 0.5, -1, 2}, {2, 3});
  const Tensor targets = ids({2, 0}, {2});
  // -log p_c per row, from the definition p_c = exp(x_c) / sum exp(x).
  const double lse0 = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  const double lse1 = std::log(std::exp(0.5) + std::exp(-1.0) + std::exp(2.0));
  const double nll0 = lse0 - 3, nll1 = lse1 - 0.5;
  const double smooth0 = lse0 - 2.0, smooth1 = lse1 - 0.5;  // mean_c(-log p_c) = lse - mean(x)
  EXPECT_NEAR(cross_entropy(logits, targets).item(), (nll0 + nll1) / 2, 1e-14);
  const double eps = 0.1;
  const double smoothed0 = (1 - eps) * nll0 + eps * smooth0, smoothed1 = (1 - eps) * nll1 + eps * smooth1;
  EXPECT_NEAR(cross_entropy(logits, targets, -100, eps).item(), (smoothed0 + smoothed1) / 2, 1e-14);
  EXPECT_NEAR(cross_entropy(logits, targets, -100, eps).item(), 1.124458630550769, 1e-14);  // torch 1.13
  // An ignored row counts in neither the sum nor the mean's denominator.
  const Tensor with_ignored = ids({2, -100}, {2});
  EXPECT_NEAR(cross_entropy(logits, with_ignored, -100, eps).item(), smoothed0, 1e-14);
  EXPECT_NEAR(cross_entropy(logits, with_ignored, -100, eps).item(), 0.5076059644443804, 1e-14);  // torch 1.13
  EXPECT_NEAR(cross_entropy(logits, ids({2, 0}, {2}), /*ignore_index=*/0).item(), nll0, 1e-14);
  expect_values_near(cross_entropy(logits, with_ignored, -100, eps, Reduction::None), {smoothed0, 0.0}, 1e-14);
  EXPECT_NEAR(cross_entropy(logits, targets, -100, eps, Reduction::Sum).item(), smoothed0 + smoothed1, 1e-14);
  EXPECT_TRUE(std::isnan(cross_entropy(logits, ids({-100, -100}, {2})).item()));  // as PyTorch: 0 / 0
  // Logits [..., C] with targets [...]: the same as flattening.
  const Tensor cube = logits.reshape({1, 2, 3});
  EXPECT_NEAR(cross_entropy(cube, targets.reshape({1, 2})).item(), (nll0 + nll1) / 2, 1e-14);
  EXPECT_EQ(cross_entropy(cube, targets.reshape({1, 2}), -100, 0.0, Reduction::None).shape(), (Shape{1, 2}));
}

TEST(NnCore, LinearAndEmbeddingForwardByHand) {
  const Tensor w = f64({1, 0, 0, 1, 1, 1}, {3, 2}), b = f64({10, 20, 30}, {3});
  expect_values_near(linear(f64({1, 2, 3, 4}, {2, 2}), w, b), {11, 22, 33, 13, 24, 37});
  expect_values_near(linear(f64({1, 2, 3, 4}, {2, 2}), w), {1, 2, 3, 3, 4, 7});
  expect_values_near(linear(f64({1, 2}, {2}), w, b), {11, 22, 33});
  EXPECT_EQ(linear(ones({4, 5, 2}, DType::Float64), w, b).shape(), (Shape{4, 5, 3}));
  expect_values_near(linear(f64({1, 2, 3, 4}, {2, 2}).t(), w), {1, 3, 4, 2, 4, 6});
  // The bias rides in the product (BLAS's beta): also where x's rows are not contiguous (a
  // transposed matrix) or its batch dims do not merge (one product per leading index).
  expect_values_near(linear(f64({1, 2, 3, 4}, {2, 2}).t(), w, b), {11, 23, 34, 12, 24, 36});
  const Tensor unmerged = ones({2, 3, 2}, DType::Float64).transpose(0, 1);
  const Tensor unmerged_y = linear(unmerged, w, b);
  EXPECT_EQ(unmerged_y.shape(), (Shape{3, 2, 3}));
  expect_values_near(unmerged_y, {11, 21, 32, 11, 21, 32, 11, 21, 32, 11, 21, 32, 11, 21, 32, 11, 21, 32});

  const Tensor table = arange(0, 6, 1, DType::Float64).reshape({3, 2});
  const Tensor looked_up = embedding(ids({2, 0, 1, 2}, {2, 2}), table);
  EXPECT_EQ(looked_up.shape(), (Shape{2, 2, 2}));
  expect_values_near(looked_up, {4, 5, 0, 1, 2, 3, 4, 5});
  expect_values_near(embedding(ids({1}, {}), table), {2, 3});
}

TEST(NnCore, AttentionForwardByHand) {
  // One head, two positions, D = 1 (scale 1): position 0 sees only key 0, so it returns v[0].
  const Tensor q = f64({1, 2}, {1, 1, 2, 1}), k = f64({0.5, -1}, {1, 1, 2, 1}), v = f64({3, 7}, {1, 1, 2, 1});
  const double p0 = std::exp(2 * 0.5) / (std::exp(2 * 0.5) + std::exp(2 * -1.0));  // query 1's weight on key 0
  const double n0 = std::exp(0.5) / (std::exp(0.5) + std::exp(-1.0));  // query 0's weight on key 0, unmasked
  for (AttentionImpl impl : {AttentionImpl::Composed, AttentionImpl::Fused}) {
    SCOPED_TRACE(impl == AttentionImpl::Fused ? "fused" : "composed");
    expect_values_near(scaled_dot_product_attention(q, k, v, true, impl), {3, p0 * 3 + (1 - p0) * 7});
    expect_values_near(scaled_dot_product_attention(q, k, v, false, impl),
                       {n0 * 3 + (1 - n0) * 7, p0 * 3 + (1 - p0) * 7});
  }
}

TEST(NnCore, DropoutStatisticsAndModes) {
  const Tensor x = ones({200000});
  EXPECT_TRUE(dropout(x, 0.5, false).is_same(x));
  EXPECT_TRUE(dropout(x, 0.0, true).is_same(x));
  Generator gen(5);
  const std::vector<float> y = dropout(x, 0.25, true, gen).to_vector<float>();
  int64_t zeros_seen = 0;
  double total = 0;
  for (float v : y) {
    if (v == 0.0f)
      ++zeros_seen;
    else
      ASSERT_FLOAT_EQ(v, 1.0f / 0.75f);
    total += v;
  }
  // Standard deviation of the dropped fraction: sqrt(0.25 * 0.75 / 200000) ~ 0.001.
  EXPECT_NEAR(double(zeros_seen) / y.size(), 0.25, 0.005);
  EXPECT_NEAR(total / y.size(), 1.0, 0.01);  // inverted dropout keeps the mean
  Generator same(5), other(6);
  EXPECT_EQ(dropout(x, 0.25, true, same).to_vector<float>(), y);
  EXPECT_NE(dropout(x, 0.25, true, other).to_vector<float>(), y);
  // The gradient is the same mask and scale.
  Tensor leaf = ones({1000});
  leaf.requires_grad_();
  Generator g1(8);
  const Tensor out = dropout(leaf, 0.4, true, g1);
  sum(out).backward();
  EXPECT_EQ(leaf.grad().to_vector<float>(), out.to_vector<float>());
}

// ------------------------------------------------------------------------------ errors

TEST(NnCore, ErrorMessagesNameOpAndShapes) {
  expect_error_mentions([] { linear(ones({2, 3}), ones({4, 5})); }, {"linear", "[2, 3]", "[4, 5]"});
  expect_error_mentions([] { linear(ones({2, 3}), ones({4, 3}), ones({5})); }, {"linear", "bias", "[5]", "[4, 3]"});
  expect_error_mentions([] { linear(ones({2, 3}), ones({4, 3}, DType::Float64)); }, {"linear", "dtype"});
  expect_error_mentions([] { layer_norm(ones({2, 4}), ones({3})); }, {"layer_norm", "weight", "[3]", "[2, 4]"});
  expect_error_mentions([] { layer_norm(ones({2, 4}), ones({4}), ones({2})); }, {"layer_norm", "bias", "[2]"});
  expect_error_mentions([] { rms_norm(ones({2, 4}), ones({4, 1})); }, {"rms_norm", "weight", "[4, 1]", "[2, 4]"});
  expect_error_mentions([] { softmax(ones({2, 4}), 2); }, {"softmax", "dimension 2"});
  expect_error_mentions([] { embedding(ids({0, 7}, {2}), ones({3, 4})); }, {"embedding", "7", "[0, 3)", "[3, 4]"});
  expect_error_mentions([] { embedding(ids({-1}, {1}), ones({3, 4})); }, {"embedding", "-1"});
  expect_error_mentions([] { embedding(ones({2}), ones({3, 4})); }, {"embedding", "int64"});
  expect_error_mentions([] { cross_entropy(ones({2, 3}), ids({0, 3}, {2})); }, {"cross_entropy", "target 3", "3 classes"});
  expect_error_mentions([] { cross_entropy(ones({2, 3}), ids({0, 1, 2}, {3})); }, {"cross_entropy", "[2, 3]", "[3]"});
  expect_error_mentions([] { cross_entropy(ones({2, 3}), ones({2})); }, {"cross_entropy", "int64"});
  expect_error_mentions([] { cross_entropy(ones({2, 3}), ids({0, 1}, {2}), -100, 1.5); }, {"cross_entropy", "label_smoothing"});
  expect_error_mentions([] { dropout(ones({2}), 1.0, true); }, {"dropout", "p must be in [0, 1)"});
  expect_error_mentions([] { dropout(ones({2}), -0.1, true); }, {"dropout", "p must"});
  expect_error_mentions([] { scaled_dot_product_attention(ones({1, 2, 4, 8}), ones({1, 2, 4, 6}), ones({1, 2, 4, 8})); },
                        {"scaled_dot_product_attention", "[1, 2, 4, 8]", "[1, 2, 4, 6]"});
  expect_error_mentions([] { scaled_dot_product_attention(ones({1, 2, 4, 8}), ones({1, 2, 5, 8}), ones({1, 2, 5, 8})); },
                        {"scaled_dot_product_attention", "causal", "[1, 2, 5, 8]"});
}

// ------------------------------------------------------------------------------ gradients (float64)

TEST(NnCoreGrad, SoftmaxAndLogSoftmaxAlongEveryDim) {
  for (bool log : {false, true}) {
    auto op = [log](const Tensor& x, int64_t dim) { return log ? log_softmax(x, dim) : softmax(x, dim); };
    SCOPED_TRACE(log ? "log_softmax" : "softmax");
    expect_gradients_match([&](auto& in) { return op(in[0], -1); }, {random_input({5}, 1)});
    for (int64_t dim : {0, 1, 2, -1})
      expect_gradients_match([&](auto& in) { return op(in[0], dim); }, {random_input({2, 3, 4}, 2)});
    // a transposed (non-contiguous) input, and large logits
    expect_gradients_match([&](auto& in) { return op(in[0].t(), 1); }, {random_input({4, 3}, 3)});
    expect_gradients_match([&](auto& in) { return op(in[0] * 30.0, 1); }, {random_input({3, 4}, 4)}, 1e-5);
  }
}

TEST(NnCoreGrad, LayerNormWithAndWithoutAffine) {
  expect_gradients_match([](auto& in) { return layer_norm(in[0], in[1], in[2]); },
                         {random_input({3, 5}, 1), random_input({5}, 2), random_input({5}, 3)});
  expect_gradients_match([](auto& in) { return layer_norm(in[0]); }, {random_input({2, 3, 4}, 4)});
  expect_gradients_match([](auto& in) { return layer_norm(in[0], in[1]); }, {random_input({4, 6}, 5), random_input({6}, 6)});
  expect_gradients_match([](auto& in) { return layer_norm(in[0], Tensor(), in[1], 0.5); },
                         {random_input({4, 6}, 7), random_input({6}, 8)});
  expect_gradients_match([](auto& in) { return layer_norm(in[0].t(), in[1], in[2]); },
                         {random_input({5, 3}, 9), random_input({5}, 10), random_input({5}, 11)});
  expect_gradients_match([](auto& in) { return layer_norm(in[0], in[1], in[2]); },
                         {random_input({7}, 12), random_input({7}, 13), random_input({7}, 14)});
}

TEST(NnCoreGrad, RmsNormWithAndWithoutWeight) {
  expect_gradients_match([](auto& in) { return rms_norm(in[0], in[1], 1e-6); },
                         {random_input({3, 5}, 1), random_input({5}, 2)});
  expect_gradients_match([](auto& in) { return rms_norm(in[0]); }, {random_input({2, 3, 4}, 3)});
  expect_gradients_match([](auto& in) { return rms_norm(in[0].t(), in[1], 0.1); },
                         {random_input({6, 2}, 4), random_input({6}, 5)});
}

// The CPU kernels sum the affine gradients over rows in chunks (framework/backends/cpu/cpu_nn.cpp):
// with more rows than chunks, in float32, the gradients match float64 and do not depend on the
// thread count.
TEST(NnCoreGrad, NormGradientsOverManyRowsMatchFloat64OnAnyThreadCount) {
  const int saved = num_threads();
  const auto float32_grads = [](const Tensor& x64, const Tensor& w64, const Tensor& b64, const Tensor& g, bool rms,
                                 int threads) {
    set_num_threads(threads);
    Tensor x = x64.detach().to(DType::Float32).requires_grad_(), w = w64.detach().to(DType::Float32).requires_grad_(),
           b = b64.detach().to(DType::Float32).requires_grad_();
    (rms ? rms_norm(x, w, 1e-6) : layer_norm(x, w, b)).backward(g);
    return std::vector<Tensor>{x.grad(), w.grad(), rms ? Tensor() : b.grad()};
  };
  for (bool rms : {false, true}) {
    SCOPED_TRACE(rms ? "rms_norm" : "layer_norm");
    const Tensor x = random_input({1001, 40}, 1, 0.5), w = random_input({40}, 2), b = random_input({40}, 3);
    Generator gen(9);
    const Tensor g = randn(x.shape(), DType::Float32, cpu(), gen);  // float32 values, exact in float64 too
    (rms ? rms_norm(x, w, 1e-6) : layer_norm(x, w, b)).backward(g.to(DType::Float64));
    const std::vector<Tensor> expected{x.grad(), w.grad(), rms ? Tensor() : b.grad()};
    const std::vector<Tensor> one = float32_grads(x, w, b, g, rms, 1), two = float32_grads(x, w, b, g, rms, 2);
    for (size_t k = 0; k < expected.size(); ++k) {
      if (!expected[k].defined()) continue;
      SCOPED_TRACE(k);
      EXPECT_EQ(one[k].to_vector<float>(), two[k].to_vector<float>());
      const double scale = amax(abs(expected[k])).item();
      EXPECT_LT(amax(abs(sub(one[k].to(DType::Float64), expected[k]))).item(), 1e-5 * scale);
    }
  }
  set_num_threads(saved);
}

TEST(NnCoreGrad, CrossEntropyWithIgnoreIndexAndLabelSmoothing) {
  const Tensor targets = ids({1, 4, 0, 2}, {4});
  const Tensor ignoring = ids({1, -100, 0, -100}, {4});
  for (double smoothing : {0.0, 0.1, 1.0}) {
    SCOPED_TRACE(smoothing);
    expect_gradients_match([&](auto& in) { return cross_entropy(in[0], targets, -100, smoothing); },
                           {random_input({4, 5}, 1)});
    expect_gradients_match([&](auto& in) { return cross_entropy(in[0], ignoring, -100, smoothing); },
                           {random_input({4, 5}, 2)});
    expect_gradients_match([&](auto& in) { return cross_entropy(in[0], targets, 2, smoothing, Reduction::Sum); },
                           {random_input({4, 5}, 3)});
    expect_gradients_match([&](auto& in) { return cross_entropy(in[0], ignoring, -100, smoothing, Reduction::None); },
                           {random_input({4, 5}, 4)});
  }
  // [..., C] logits, and transposed logits
  expect_gradients_match([](auto& in) { return cross_entropy(in[0], ids({0, 2, 1, 1, 0, 2}, {2, 3}), -100, 0.2); },
                         {random_input({2, 3, 3}, 5)});
  expect_gradients_match([&](auto& in) { return cross_entropy(in[0].t(), targets, -100, 0.1); },
                         {random_input({5, 4}, 6)});
}

TEST(NnCoreGrad, LinearOfEveryRank) {
  auto with_bias = [](auto& in) { return linear(in[0], in[1], in[2]); };
  expect_gradients_match(with_bias, {random_input({4, 3}, 1), random_input({2, 3}, 2), random_input({2}, 3)});
  expect_gradients_match(with_bias, {random_input({3}, 4), random_input({2, 3}, 5), random_input({2}, 6)});
  expect_gradients_match(with_bias, {random_input({2, 4, 3}, 7), random_input({5, 3}, 8), random_input({5}, 9)});
  expect_gradients_match([](auto& in) { return linear(in[0], in[1]); }, {random_input({4, 3}, 10), random_input({2, 3}, 11)});
  expect_gradients_match([](auto& in) { return linear(in[0].t(), in[1].t(), in[2]); },
                         {random_input({3, 4}, 12), random_input({3, 2}, 13), random_input({2}, 14)});
}

TEST(NnCoreGrad, EmbeddingAccumulatesRepeatedIds) {
  expect_gradients_match([](auto& in) { return embedding(ids({0, 2, 2, 3, 0, 1}, {2, 3}), in[0]); },
                         {random_input({4, 3}, 1)});
  Tensor table = zeros({3, 2}, DType::Float64);
  table.requires_grad_();
  sum(embedding(ids({2, 0, 2, 2}, {4}), table)).backward();
  EXPECT_EQ(values(table.grad()), (V{1, 1, 0, 0, 3, 3}));
}

TEST(NnCoreGrad, DropoutWithAFixedGenerator) {
  expect_gradients_match(
      [](auto& in) {
        Generator gen(17);  // the same mask on every call
        return dropout(in[0], 0.3, true, gen);
      },
      {random_input({4, 5}, 1)});
}

TEST(NnCoreGrad, AttentionCausalAndNot) {
  for (AttentionImpl impl : {AttentionImpl::Composed, AttentionImpl::Fused}) {
    SCOPED_TRACE(impl == AttentionImpl::Fused ? "fused" : "composed");
    auto sdpa = [impl](bool causal) {
      return [causal, impl](const std::vector<Tensor>& in) {
        return scaled_dot_product_attention(in[0], in[1], in[2], causal, impl);
      };
    };
    expect_gradients_match(sdpa(true), {random_input({2, 2, 4, 3}, 1), random_input({2, 2, 4, 3}, 2), random_input({2, 2, 4, 3}, 3)});
    expect_gradients_match(sdpa(false), {random_input({2, 2, 4, 3}, 4), random_input({2, 2, 4, 3}, 5), random_input({2, 2, 4, 3}, 6)});
    // more keys than queries, a different value width
    expect_gradients_match(sdpa(false), {random_input({1, 2, 3, 4}, 7), random_input({1, 2, 5, 4}, 8), random_input({1, 2, 5, 2}, 9)});
    // heads split from a [B, T, H, D] layout: transposed, non-contiguous views
    expect_gradients_match(
        [impl](auto& in) {
          return scaled_dot_product_attention(in[0].transpose(1, 2), in[1].transpose(1, 2), in[2].transpose(1, 2),
                                              true, impl);
        },
        {random_input({2, 5, 2, 3}, 10), random_input({2, 5, 2, 3}, 11), random_input({2, 5, 2, 3}, 12)});
  }
  // The fused kernels' key tiles are 32 wide: a causal sequence spanning two of them.
  expect_gradients_match(
      [](auto& in) { return scaled_dot_product_attention(in[0], in[1], in[2], true, AttentionImpl::Fused); },
      {random_input({1, 35, 2}, 13), random_input({1, 35, 2}, 14), random_input({1, 35, 2}, 15)});
}

// ------------------------------------------------------------------------------ fused attention

namespace {

Tensor attention_with(const std::vector<Tensor>& in, bool causal, AttentionImpl impl) {
  return scaled_dot_product_attention(in[0], in[1], in[2], causal, impl);
}

// The fused op's output and gradients against the composed op's, in float64.
void expect_fused_matches_composed(const TensorFn& fused, const TensorFn& composed, const std::vector<Tensor>& inputs) {
  const Evaluation f = evaluate(fused, inputs), c = evaluate(composed, inputs);
  expect_close(f.out, c.out, 1e-10, "output");
  for (size_t i = 0; i < inputs.size(); ++i) expect_close(f.grads[i], c.grads[i], 1e-10, "gradient " + std::to_string(i));
}

}  // namespace

TEST(NnCoreFusedAttention, MatchesComposedOutputAndGradients) {
  struct Case {
    const char* name;
    Shape lead;
    int64_t queries, keys, head_dim, value_dim;
    bool causal;
  };
  const std::vector<Case> cases{
      {"causal, odd sizes", {2, 3}, 7, 7, 5, 5, true},
      {"full, odd sizes", {2, 3}, 7, 7, 5, 5, false},
      {"causal, a partial third key tile", {2, 2}, 75, 75, 8, 8, true},
      {"full, more keys than queries, wider values", {3}, 9, 70, 5, 6, false},
      {"full, fewer keys than queries", {2, 2}, 40, 3, 4, 4, false},
      {"one head, no leading dims", {}, 33, 33, 3, 3, true},
  };
  uint64_t seed = 20;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const auto shape = [&](int64_t rows, int64_t width) {
      Shape s = c.lead;
      s.insert(s.end(), {rows, width});
      return s;
    };
    const std::vector<Tensor> inputs{random_input(shape(c.queries, c.head_dim), seed++),
                                     random_input(shape(c.keys, c.head_dim), seed++),
                                     random_input(shape(c.keys, c.value_dim), seed++)};
    const bool causal = c.causal;
    expect_fused_matches_composed([causal](auto& in) { return attention_with(in, causal, AttentionImpl::Fused); },
                                  [causal](auto& in) { return attention_with(in, causal, AttentionImpl::Composed); },
                                  inputs);
  }
}

TEST(NnCoreFusedAttention, NonContiguousInputsMatchComposed) {
  // Heads split from [B, T, H, D] (transposed views) and a key tensor narrowed from a wider one.
  const auto views = [](const std::vector<Tensor>& in) {
    return std::vector<Tensor>{in[0].transpose(1, 2), in[1].narrow(3, 2, 6).transpose(1, 2), in[2].transpose(1, 2)};
  };
  const std::vector<Tensor> inputs{random_input({2, 11, 3, 6}, 40), random_input({2, 11, 3, 9}, 41),
                                   random_input({2, 11, 3, 4}, 42)};
  for (bool causal : {true, false}) {
    SCOPED_TRACE(causal ? "causal" : "full");
    expect_fused_matches_composed(
        [&](auto& in) { return attention_with(views(in), causal, AttentionImpl::Fused); },
        [&](auto& in) { return attention_with(views(in), causal, AttentionImpl::Composed); }, inputs);
  }
}

TEST(NnCoreFusedAttention, RowsWithoutKeysGiveZeros) {
  // No keys at all: every output row and every query gradient is 0 (the composed op agrees).
  const std::vector<Tensor> inputs{random_input({2, 3, 4}, 50), random_input({2, 0, 4}, 51),
                                   random_input({2, 0, 5}, 52)};
  const TensorFn fused = [](auto& in) { return attention_with(in, false, AttentionImpl::Fused); };
  const Evaluation e = evaluate(fused, inputs);
  ASSERT_EQ(e.out.shape(), (Shape{2, 3, 5}));
  EXPECT_EQ(values(e.out), V(30, 0.0));
  EXPECT_EQ(values(e.grads[0]), V(24, 0.0));
  expect_fused_matches_composed(
      fused, [](auto& in) { return attention_with(in, false, AttentionImpl::Composed); }, inputs);
}

// Auto, the default, runs the fused kernel on the CPU, which takes every dtype and head size.
TEST(NnCoreFusedAttention, AutoRunsTheFusedKernelOnTheCpu) {
  EXPECT_TRUE(backend_for(cpu()).can_fuse_attention(DType::Float32, 300, 7));
  const std::vector<Tensor> inputs{random_input({2, 3, 9, 5}, 60), random_input({2, 3, 9, 5}, 61),
                                   random_input({2, 3, 9, 6}, 62)};
  const Evaluation automatic = evaluate([](auto& in) { return attention_with(in, true, AttentionImpl::Auto); }, inputs);
  const Evaluation fused = evaluate([](auto& in) { return attention_with(in, true, AttentionImpl::Fused); }, inputs);
  EXPECT_EQ(values(automatic.out), values(fused.out));
  for (size_t i = 0; i < inputs.size(); ++i) EXPECT_EQ(values(automatic.grads[i]), values(fused.grads[i])) << i;
}

// On the CPU the fused kernel reads heads split from a packed projection where they lie and leaves
// its output as [B, T, H, D] in memory: merging the heads back is a view (no copy), and the heads'
// gradients reach the projection's gradient as PyTorch's would.
TEST(NnCoreFusedAttention, PackedHeadsAreReadInPlaceAndTheOutputMergesWithoutACopy) {
  const int64_t batch = 2, steps = 5, heads = 3, head_dim = 4, width = heads * head_dim;
  EXPECT_TRUE(backend_for(cpu()).attention_reads_strided_heads());
  const auto split_attend_merge = [&](const std::vector<Tensor>& in, AttentionImpl impl) {
    const auto part = [&](int64_t i) {
      return in[0].narrow(2, i * width, width).reshape({batch, steps, heads, head_dim}).transpose(1, 2);
    };
    const Tensor y = scaled_dot_product_attention(part(0), part(1), part(2), true, impl);
    if (impl == AttentionImpl::Fused) {
      EXPECT_TRUE(y.transpose(1, 2).is_contiguous());
    }
    return y.transpose(1, 2).reshape({batch, steps, width});
  };
  expect_fused_matches_composed([&](auto& in) { return split_attend_merge(in, AttentionImpl::Fused); },
                                [&](auto& in) { return split_attend_merge(in, AttentionImpl::Composed); },
                                {random_input({batch, steps, 3 * width}, 43)});
}

// The blocked CPU path (cpu_attention.h) called directly against the reference loops it stands in
// for: float32 (whose exponentials are exp_approx there, libm's in the reference) and float64, the
// GPT's heads and sizes that leave partial row blocks and partial cache lines, forward and backward.
// Each path also runs on every tensor laid out as [B, T, H, D] in memory (the strided heads of a
// packed projection, and the layout the op gives its output and gradients): the same values to the
// last bit as from contiguous tensors.
TEST(NnCoreFusedAttention, BlockedPathMatchesTheReferenceLoops) {
  struct Case {
    const char* name;
    int64_t batch, heads, queries, keys, head_dim, value_dim;
    bool causal;
  };
  const std::vector<Case> cases{
      {"the GPT's heads", 12, 4, 64, 64, 32, 32, true},
      {"odd sizes, causal", 1, 3, 37, 37, 5, 7, true},
      {"more keys than queries, full", 2, 1, 9, 70, 20, 12, false},
      {"fewer keys than queries, causal", 1, 2, 40, 3, 4, 17, true},
      {"more keys than queries, causal, a short last row block", 3, 1, 10, 23, 8, 8, true},
      {"one query and key", 1, 1, 1, 1, 3, 3, true},
  };
  for (DType dtype : {DType::Float32, DType::Float64})
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(c.name) + (dtype == DType::Float32 ? ", float32" : ", float64"));
      Generator gen(7);
      const auto input = [&](int64_t rows, int64_t width) {
        return randn({c.batch, c.heads, rows, width}, dtype, cpu(), gen);
      };
      const Tensor q = input(c.queries, c.head_dim), k = input(c.keys, c.head_dim), v = input(c.keys, c.value_dim),
                   g = input(c.queries, c.value_dim);
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
      ASSERT_TRUE(cpu_attention::blocked_applies(q, k));
      // An empty [B, H, rows, width] tensor, contiguous or laid out as [B, rows, H, width].
      const auto empty = [&](int64_t rows, int64_t width, bool strided) {
        if (strided) return Tensor::empty({c.batch, rows, c.heads, width}, dtype, cpu()).transpose(1, 2);
        return Tensor::empty({c.batch, c.heads, rows, width}, dtype, cpu());
      };
      const auto laid_out = [&](const Tensor& t, bool strided) {
        Tensor copy = empty(t.size(2), t.size(3), strided);
        copy_(copy, t);
        return copy;
      };
      struct Result {
        Tensor out, lse, grad_q, grad_k, grad_v;
      };
      const auto run = [&](bool blocked, bool strided) {
        const Tensor qs = laid_out(q, strided), ks = laid_out(k, strided), vs = laid_out(v, strided),
                     gs = laid_out(g, strided);
        Result r{empty(c.queries, c.value_dim, strided), Tensor::empty({c.batch, c.heads, c.queries}, dtype, cpu()),
                 empty(c.queries, c.head_dim, strided), empty(c.keys, c.head_dim, strided),
                 empty(c.keys, c.value_dim, strided)};
        if (blocked) {
          cpu_attention::blocked_forward(qs, ks, vs, c.causal, scale, r.out, r.lse);
          cpu_attention::blocked_backward(gs, qs, ks, vs, r.out, r.lse, c.causal, scale, r.grad_q, r.grad_k, r.grad_v);
        } else {
          cpu_attention::reference_forward(qs, ks, vs, c.causal, scale, r.out, r.lse);
          cpu_attention::reference_backward(gs, qs, ks, vs, r.out, r.lse, c.causal, scale, r.grad_q, r.grad_k,
                                            r.grad_v);
        }
        return r;
      };
      const auto expect_same = [](const Result& a, const Result& b) {
        EXPECT_EQ(values(a.out), values(b.out));
        EXPECT_EQ(values(a.lse), values(b.lse));
        EXPECT_EQ(values(a.grad_q), values(b.grad_q));
        EXPECT_EQ(values(a.grad_k), values(b.grad_k));
        EXPECT_EQ(values(a.grad_v), values(b.grad_v));
      };
      const Result blocked = run(true, false), reference = run(false, false);
      const double tol = dtype == DType::Float32 ? 2e-5 : 1e-12;
      expect_close(blocked.out, reference.out, tol, "out");
      expect_close(blocked.lse, reference.lse, tol, "lse");
      expect_close(blocked.grad_q, reference.grad_q, tol, "grad_q");
      expect_close(blocked.grad_k, reference.grad_k, tol, "grad_k");
      expect_close(blocked.grad_v, reference.grad_v, tol, "grad_v");
      SCOPED_TRACE("strided heads");
      expect_same(run(true, true), blocked);
      expect_same(run(false, true), reference);
    }
}

// ------------------------------------------------------------------------------ larger shapes

// Shapes big enough for the kernels' OpenMP loops; the composed references go through other code.
TEST(NnCore, FusedKernelsMatchComposedOpsAndFloat32) {
  expect_matches_reference([](auto& in) { return softmax(in[0]); }, [](auto& in) { return softmax_reference(in[0]); },
                           {random_input({256, 161}, 1)});
  expect_matches_reference([](auto& in) { return log_softmax(in[0], 0); },
                           [](auto& in) { return log_softmax_reference(in[0].t()).t(); }, {random_input({300, 120}, 2)});
  expect_matches_reference([](auto& in) { return layer_norm(in[0], in[1], in[2]); },
                           [](auto& in) { return layer_norm_reference(in[0], in[1], in[2], 1e-5); },
                           {random_input({300, 130}, 3), random_input({130}, 4), random_input({130}, 5)}, 1e-4);
  expect_matches_reference([](auto& in) { return rms_norm(in[0], in[1], 1e-6); },
                           [](auto& in) { return rms_norm_reference(in[0], in[1], 1e-6); },
                           {random_input({300, 130}, 6), random_input({130}, 7)}, 1e-4);
  std::vector<int64_t> targets;
  for (int64_t i = 0; i < 200; ++i) targets.push_back(i % 7 == 3 ? -100 : (i * 37) % 300);
  expect_matches_reference([&](auto& in) { return cross_entropy(in[0], ids(targets, {200}), -100, 0.1); },
                           [&](auto& in) { return cross_entropy_reference(in[0], targets, -100, 0.1); },
                           {random_input({200, 300}, 8)});
  // Rows longer than the parts whose exponentials the forward sums while fetching the next row.
  std::vector<int64_t> long_row_targets;
  for (int64_t i = 0; i < 40; ++i) long_row_targets.push_back((i * 613) % 2500);
  expect_matches_reference([&](auto& in) { return cross_entropy(in[0], ids(long_row_targets, {40}), -100, 0.1); },
                           [&](auto& in) { return cross_entropy_reference(in[0], long_row_targets, -100, 0.1); },
                           {random_input({40, 2500}, 12)});
  for (AttentionImpl impl : {AttentionImpl::Composed, AttentionImpl::Fused})
    for (bool causal : {true, false}) {
      SCOPED_TRACE(std::string(impl == AttentionImpl::Fused ? "fused, " : "composed, ") + (causal ? "causal" : "full"));
      expect_matches_reference(
          [causal, impl](auto& in) { return scaled_dot_product_attention(in[0], in[1], in[2], causal, impl); },
          [causal](auto& in) { return attention_reference(in[0], in[1], in[2], causal); },
          {random_input({4, 3, 64, 16}, 9), random_input({4, 3, 64, 16}, 10), random_input({4, 3, 64, 16}, 11)}, 1e-4);
    }
}
