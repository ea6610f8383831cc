// Convolution, pooling and batch normalization: values by hand, a direct reference convolution,
// float64 gradient checks and error messages.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <numeric>

#include "framework/backends/cpu/cpu_capability.h"
#include "framework/backends/cpu/cpu_conv.h"
#include "framework/ops.h"
#include "framework/parallel.h"
#include "tests/gradcheck.h"

using namespace ml;
using ml::testing::expect_error_mentions;
using ml::testing::expect_gradients_match;
using ml::testing::random_input;

namespace {
using V = std::vector<double>;
std::vector<double> values(const Tensor& t) { return t.to_vector<double>(); }

void expect_all_near(const std::vector<double>& actual, const std::vector<double>& expected, double tol) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i)
    EXPECT_NEAR(actual[i], expected[i], tol * std::max(1.0, std::abs(expected[i]))) << "element " << i;
}

// The convolution straight from its definition, one output at a time.
std::vector<double> direct_conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, Conv2dParams p) {
  const int64_t N = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Cout = w.size(0), kh = w.size(2), kw = w.size(3);
  const int64_t Ho = (H + 2 * p.pad_h - kh) / p.stride_h + 1, Wo = (W + 2 * p.pad_w - kw) / p.stride_w + 1;
  const std::vector<double> xv = values(x), wv = values(w), bv = bias.defined() ? values(bias) : V(Cout, 0.0);
  std::vector<double> y;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t co = 0; co < Cout; ++co)
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow) {
          double acc = bv[co];
          for (int64_t ci = 0; ci < Cin; ++ci)
            for (int64_t i = 0; i < kh; ++i)
              for (int64_t j = 0; j < kw; ++j) {
                const int64_t ih = oh * p.stride_h - p.pad_h + i, iw = ow * p.stride_w - p.pad_w + j;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                acc += xv[((n * Cin + ci) * H + ih) * W + iw] * wv[((co * Cin + ci) * kh + i) * kw + j];
              }
          y.push_back(acc);
        }
  return y;
}

struct ConvCase {
  Shape x, w;
  Conv2dParams p;
  bool bias;
};

// Stride 1 and 2, padding 0 and 1, square and non-square kernels, odd sizes, 1x1, and batches that
// put several images into one GEMM.
const std::vector<ConvCase> kConvCases = {
    {{2, 3, 5, 5}, {4, 3, 3, 3}, {1, 1, 1, 1}, true},   {{3, 2, 5, 7}, {3, 2, 3, 3}, {1, 1, 0, 0}, false},
    {{2, 2, 7, 6}, {3, 2, 3, 3}, {2, 2, 1, 1}, true},   {{1, 3, 6, 5}, {2, 3, 2, 3}, {1, 2, 0, 1}, true},
    {{3, 2, 4, 5}, {2, 2, 1, 1}, {1, 1, 0, 0}, true},   {{1, 4, 3, 3}, {3, 4, 1, 1}, {1, 1, 0, 0}, false},
    {{2, 3, 4, 4}, {2, 3, 2, 2}, {2, 2, 0, 0}, false},  {{5, 2, 3, 3}, {3, 2, 3, 3}, {1, 1, 1, 1}, true},
    {{2, 1, 3, 4}, {2, 1, 3, 4}, {1, 1, 0, 0}, true},   {{1, 2, 2, 2}, {2, 2, 3, 3}, {1, 1, 1, 1}, false},
};

std::string describe(const ConvCase& c) {
  return "x " + shape_str(c.x) + " w " + shape_str(c.w) + " stride " + std::to_string(c.p.stride_h) + "x" +
         std::to_string(c.p.stride_w) + " pad " + std::to_string(c.p.pad_h) + "x" + std::to_string(c.p.pad_w) +
         (c.bias ? " bias" : "");
}
}  // namespace

// ===================================================================== convolution

TEST(NnConv, Conv2dForwardByHand) {
  // x = 1..9 on a 3x3 plane, w = [[1, 2], [3, 4]].
  const Tensor x = arange(1, 10, 1, DType::Float64).reshape({1, 1, 3, 3});
  const Tensor w = Tensor::from_vector<double>({1, 2, 3, 4}, {1, 1, 2, 2});
  const Tensor b = Tensor::from_vector<double>({1}, {1});
  // y[0,0] = 1*1 + 2*2 + 4*3 + 5*4 = 37, then each step right adds 10 and each step down 30.
  EXPECT_EQ(values(conv2d(x, w, b)), (V{38, 48, 68, 78}));
  // Padding 1, stride 2: the top-left window sees only x[0,0] (under w[1,1]); the bottom-right
  // window is the full window over rows and columns 1..2.
  EXPECT_EQ(values(conv2d(x, w, Tensor(), 2, 1)), (V{1 * 4, 2 * 3 + 3 * 4, 4 * 2 + 7 * 4, 5 * 1 + 6 * 2 + 8 * 3 + 9 * 4}));
  // A second input channel of ones under a weight of ones adds the number of inputs each window covers.
  const Tensor x2 = cat({x, ones({1, 1, 3, 3}, DType::Float64)}, 1);
  const Tensor w2 = cat({w, ones({1, 1, 2, 2}, DType::Float64)}, 1);
  EXPECT_EQ(values(conv2d(x2, w2, Tensor(), 2, 1)), (V{4 + 1, 18 + 2, 36 + 2, 77 + 4}));
}

TEST(NnConv, Conv2dMatchesDirectDefinition) {
  for (const ConvCase& c : kConvCases) {
    SCOPED_TRACE(describe(c));
    const Tensor x = random_input(c.x, 1), w = random_input(c.w, 2);
    const Tensor b = c.bias ? random_input({c.w[0]}, 3) : Tensor();
    expect_all_near(values(conv2d(x, w, b, c.p)), direct_conv2d(x, w, b, c.p), 1e-12);
  }
  // A CIFAR-sized batch: small planes put many images into one product, spread over threads.
  const Tensor x = random_input({37, 5, 3, 3}, 4), w = random_input({6, 5, 3, 3}, 5), b = random_input({6}, 6);
  expect_all_near(values(conv2d(x, w, b, 1, 1)), direct_conv2d(x, w, b, {1, 1, 1, 1}), 1e-12);
}

TEST(NnConv, Conv2dFloat32MatchesFloat64) {
  const Tensor x64 = random_input({19, 6, 9, 9}, 7), w64 = random_input({8, 6, 3, 3}, 8), b64 = random_input({8}, 9);
  const Tensor x32 = x64.detach().to(DType::Float32).requires_grad_();
  const Tensor w32 = w64.detach().to(DType::Float32).requires_grad_();
  const Tensor b32 = b64.detach().to(DType::Float32).requires_grad_();
  const Tensor g = random_input({19, 8, 9, 9}, 10).detach();
  const Tensor y64 = conv2d(x64, w64, b64, 1, 1), y32 = conv2d(x32, w32, b32, 1, 1);
  expect_all_near(values(y32), values(y64), 1e-4);
  y64.backward(g);
  y32.backward(g.to(DType::Float32));
  expect_all_near(values(x32.grad()), values(x64.grad()), 1e-4);
  expect_all_near(values(w32.grad()), values(w64.grad()), 1e-4);
  expect_all_near(values(b32.grad()), values(b64.grad()), 1e-4);
}

// im2col and col2im copy and add rows of out_w values in whole vectors (8 floats, 4 doubles) with
// an overlapping last one, or in pieces of 4, 2 and 1: every width from 1 to 20, and 31 (the CNN's
// largest plane), in both types and with and without padding.
TEST(NnConv, Conv2dRowsOfEveryWidthMatchDirectDefinitionAndFloat64) {
  std::vector<int64_t> widths(20);
  std::iota(widths.begin(), widths.end(), 1);
  widths.push_back(31);
  for (const int64_t width : widths)
    for (const int64_t pad : {0, 1}) {
      SCOPED_TRACE("width " + std::to_string(width) + " pad " + std::to_string(pad));
      const Conv2dParams p{1, 1, pad, pad};
      const Tensor x64 = random_input({2, 2, 3, width + 2 - 2 * pad}, 40), w64 = random_input({3, 2, 3, 3}, 41);
      const Tensor y64 = conv2d(x64, w64, Tensor(), p);
      expect_all_near(values(y64), direct_conv2d(x64, w64, Tensor(), p), 1e-12);
      const Tensor x32 = x64.detach().to(DType::Float32).requires_grad_();
      const Tensor w32 = w64.detach().to(DType::Float32).requires_grad_();
      const Tensor y32 = conv2d(x32, w32, Tensor(), p);
      // float32 within 3e-5: the padded 3-row outputs of widths 4k take Winograd's F(4x4, 3x3), whose
      // rounding reaches 1.5e-5 here (im2col's stays under 1e-5).
      const double tol32 = 3e-5;
      expect_all_near(values(y32), values(y64), tol32);
      const Tensor g = random_input(y64.shape(), 42).detach();
      y64.backward(g);
      y32.backward(g.to(DType::Float32));
      expect_all_near(values(x32.grad()), values(x64.grad()), tol32);
      expect_all_near(values(w32.grad()), values(w64.grad()), tol32);
    }
  // The float64 gradients themselves, at widths that take the vector path with a partial tail.
  for (const int64_t width : {6, 9}) {
    SCOPED_TRACE("gradcheck width " + std::to_string(width));
    expect_gradients_match([](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], Tensor(), 1, 1); },
                           {random_input({2, 2, 3, width}, 43), random_input({2, 2, 3, 3}, 44)});
  }
}

TEST(NnConv, EmptyBatch) {
  Tensor x = zeros({0, 2, 5, 5}), w = ones({3, 2, 3, 3}), b = ones({3});
  x.requires_grad_();
  w.requires_grad_();
  b.requires_grad_();
  const Tensor y = conv2d(x, w, b, 1, 1);
  EXPECT_EQ(y.shape(), (Shape{0, 3, 5, 5}));
  sum(y).backward();
  EXPECT_EQ(x.grad().shape(), (Shape{0, 2, 5, 5}));
  EXPECT_EQ(values(w.grad()), V(54, 0.0));
  EXPECT_EQ(values(b.grad()), V(3, 0.0));
  EXPECT_EQ(max_pool2d(x, 2).shape(), (Shape{0, 2, 2, 2}));
}

TEST(NnConvGrad, Conv2d) {
  for (const ConvCase& c : kConvCases) {
    SCOPED_TRACE(describe(c));
    std::vector<Tensor> inputs = {random_input(c.x, 11), random_input(c.w, 12)};
    if (c.bias) inputs.push_back(random_input({c.w[0]}, 13));
    expect_gradients_match(
        [&](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], c.bias ? in[2] : Tensor(), c.p); }, inputs);
  }
}

// The float64 gradients through the ops on a shape the CPU backend convolves with Winograd's path.
TEST(NnConvGrad, Conv2dOnWinogradsPath) {
  const Tensor x = random_input({2, 2, 8, 7}, 18), w = random_input({3, 2, 3, 3}, 19), b = random_input({3}, 20);
  ASSERT_TRUE(cpu_conv::winograd_pays_off(x, w, {1, 1, 1, 1}));
  expect_gradients_match([](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], 1, 1); }, {x, w, b});
}

TEST(NnConvGrad, Conv2dOnlyWeightOrOnlyInput) {
  const Tensor x = random_input({2, 2, 4, 4}, 14), w = random_input({3, 2, 3, 3}, 15);
  expect_gradients_match([&](const std::vector<Tensor>& in) { return conv2d(x.detach(), in[0], Tensor(), 1, 1); },
                         {w});
  expect_gradients_match([&](const std::vector<Tensor>& in) { return conv2d(in[0], w.detach(), Tensor(), 2, 1); },
                         {x});
}

TEST(NnConvGrad, Conv2dNonContiguousInput) {
  expect_gradients_match(
      [](const std::vector<Tensor>& in) { return conv2d(in[0].permute({0, 1, 3, 2}), in[1], Tensor(), 1, 1); },
      {random_input({2, 2, 5, 4}, 16), random_input({2, 2, 3, 3}, 17)});
}

// ---- The CPU backend's convolution paths, each held to the im2col path it stands in for

using ConvForward = void (*)(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, Conv2dParams p);
using ConvBackward = void (*)(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                              const Tensor& grad_w, const Tensor& grad_bias, Conv2dParams p);

// Runs a path's forward and backward on x, w, bias (may be undefined) and the output gradient g, and
// expects what they compute within tol * (the largest reference value, at least 1) of im2col's.
void expect_path_matches_im2col(ConvForward forward, ConvBackward backward, const Tensor& x, const Tensor& w,
                                const Tensor& bias, const Tensor& g, Conv2dParams p, double tol) {
  struct Result {
    Tensor y, grad_x, grad_w, grad_b;
  };
  const auto run = [&](ConvForward f, ConvBackward b) {
    const auto empty = [&](const Shape& shape) { return Tensor::empty(shape, x.dtype(), cpu()); };
    Result r{empty(g.shape()), empty(x.shape()), empty(w.shape()), bias.defined() ? empty(bias.shape()) : Tensor()};
    f(x, w, bias, r.y, p);
    b(g, x, w, r.grad_x, r.grad_w, r.grad_b, p);
    return r;
  };
  const Result actual = run(forward, backward), reference = run(cpu_conv::im2col_forward, cpu_conv::im2col_backward);
  const auto expect_close = [&](const Tensor& a_tensor, const Tensor& e_tensor, const char* what) {
    if (!e_tensor.defined()) return;
    const std::vector<double> a = values(a_tensor), e = values(e_tensor);
    double scale = 1.0;
    for (double v : e) scale = std::max(scale, std::abs(v));
    ASSERT_EQ(a.size(), e.size());
    for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], e[i], tol * scale) << what << " element " << i;
  };
  expect_close(actual.y, reference.y, "y");
  expect_close(actual.grad_x, reference.grad_x, "grad_x");
  expect_close(actual.grad_w, reference.grad_w, "grad_w");
  expect_close(actual.grad_b, reference.grad_b, "grad_bias");
}

// Winograd's F(4x4, 3x3) path (cpu_conv.h) called directly against the im2col path it stands in for,
// forward and every gradient, in both types: the CNN's layers (at a smaller batch), odd and even
// planes (the last tiles hanging over the output or not), rows of 1 to 8 tiles (gathered by vector
// transposes of 4 and 2 tiles in float32; 4 tiles 13, 15 and 16 outputs wide), paddings 0, 1 and 2 on each side (the
// backward pads grad_y by 2 - pad), one input channel, a one-pixel output, batches of small
// planes that put several images into a group, and an empty batch, on one thread and on several.
TEST(NnConvWinograd, MatchesTheIm2colPath) {
  struct Case {
    Shape x;
    int64_t outs;
    Conv2dParams p;
  };
  const std::vector<Case> cases{
      {{2, 24, 31, 31}, 32, {1, 1, 1, 1}}, {{3, 32, 15, 15}, 64, {1, 1, 1, 1}}, {{5, 64, 7, 7}, 128, {1, 1, 1, 1}},
      {{4, 128, 3, 3}, 16, {1, 1, 1, 1}},  {{2, 3, 8, 10}, 5, {1, 1, 0, 0}},    {{2, 3, 9, 6}, 4, {1, 1, 2, 2}},
      {{1, 1, 5, 4}, 2, {1, 1, 0, 2}},     {{2, 2, 4, 7}, 3, {1, 1, 2, 1}},     {{1, 3, 1, 1}, 2, {1, 1, 1, 1}},
      {{37, 5, 3, 3}, 6, {1, 1, 1, 1}},    {{9, 4, 2, 5}, 3, {1, 1, 1, 0}},     {{0, 2, 8, 8}, 3, {1, 1, 1, 1}},
      {{2, 3, 6, 13}, 4, {1, 1, 1, 1}},    {{3, 2, 5, 18}, 3, {1, 1, 0, 0}},    {{2, 3, 6, 11}, 4, {1, 1, 1, 1}},
      {{1, 2, 6, 23}, 3, {1, 1, 1, 1}},    {{2, 2, 5, 21}, 3, {1, 1, 0, 0}},
  };
  const int threads = num_threads();
  for (const int run_threads : {1, 2})
    for (DType dtype : {DType::Float32, DType::Float64})
      for (const Case& c : cases) {
        set_num_threads(run_threads);
        const Shape w_shape{c.outs, c.x[1], 3, 3};
        SCOPED_TRACE("x " + shape_str(c.x) + " w " + shape_str(w_shape) + " pad " + std::to_string(c.p.pad_h) + "x" +
                     std::to_string(c.p.pad_w) + (dtype == DType::Float32 ? ", float32" : ", float64") + ", " +
                     std::to_string(run_threads) + " threads");
        const Tensor x = random_input(c.x, 50).detach().to(dtype), w = random_input(w_shape, 51).detach().to(dtype);
        const Tensor b = random_input({c.outs}, 52).detach().to(dtype);
        const int64_t out_h = c.x[2] + 2 * c.p.pad_h - 2, out_w = c.x[3] + 2 * c.p.pad_w - 2;
        const Tensor g = random_input({c.x[0], c.outs, out_h, out_w}, 53).detach().to(dtype);
        ASSERT_TRUE(cpu_conv::winograd_applies(x, w, c.p));
        // Rounding scales with the largest values: sums of 9 * Cin products (and of the batch's tiles),
        // here through F(4x4, 3x3)'s matrices (up to 2.5e-6 and 6e-14 of the scale measured).
        expect_path_matches_im2col(cpu_conv::winograd_forward, cpu_conv::winograd_backward, x, w, b, g, c.p,
                                   dtype == DType::Float32 ? 1e-5 : 2e-13);
      }
  set_num_threads(threads);
}

// The direct path for few input channels (cpu_conv.h) called directly against the im2col path, forward
// and every gradient (grad_x goes through im2col's own code), in the build's loops and in the
// AVX-512 copy CpuBackend runs it in: the CNN's stem (at a smaller batch), rows of 16 and 32 outputs
// (the row's two vectors the same or side by side) and of 20, taps fewer than a block and several
// blocks (5, 18), output channels that do not fill a pass (1, 5, 13), one output row, no bias, an
// empty batch, on one thread and on several.
TEST(NnConvDirect, MatchesTheIm2colPath) {
  struct Case {
    Shape x, w;
    bool bias;
  };
  const std::vector<Case> cases{
      {{3, 3, 32, 32}, {24, 3, 2, 2}, true}, {{2, 1, 4, 17}, {5, 1, 2, 2}, true}, {{2, 2, 6, 34}, {13, 2, 3, 3}, true},
      {{2, 1, 7, 24}, {1, 1, 1, 5}, false},  {{3, 3, 2, 21}, {7, 3, 2, 2}, true}, {{0, 3, 32, 32}, {24, 3, 2, 2}, true},
      {{41, 2, 3, 18}, {6, 2, 2, 2}, true},  // the backward's chunks of 16 images, the last one short
  };
  std::vector<CpuCapability> capabilities{CpuCapability::Default};
  if (avx512_loops_available()) capabilities.push_back(CpuCapability::Avx512);
  const CpuCapability saved_capability = cpu_capability();
  const int threads = num_threads();
  for (const CpuCapability capability : capabilities)
    for (const int run_threads : {1, 2})
      for (const Case& c : cases) {
        set_cpu_capability(capability);
        set_num_threads(run_threads);
        SCOPED_TRACE("x " + shape_str(c.x) + " w " + shape_str(c.w) + (c.bias ? " +bias, " : ", ") +
                     std::to_string(run_threads) + " threads, " + cpu_capability_name() + " loops");
        const Tensor x = random_input(c.x, 60).detach().to(DType::Float32);
        const Tensor w = random_input(c.w, 61).detach().to(DType::Float32);
        const Tensor b = c.bias ? random_input({c.w[0]}, 62).detach().to(DType::Float32) : Tensor();
        const Shape y_shape{c.x[0], c.w[0], c.x[2] - c.w[2] + 1, c.x[3] - c.w[3] + 1};
        const Tensor g = random_input(y_shape, 63).detach().to(DType::Float32);
        ASSERT_TRUE(cpu_conv::direct_applies(x, w, {}));
        // float32 sums of up to 18 products (forward) and of the batch's products (gradients), in
        // other orders: measured within 3.2e-7 of the largest value.
        expect_path_matches_im2col(cpu_conv::direct_forward, cpu_conv::direct_backward, x, w, b, g, {}, 2e-6);
      }
  set_num_threads(threads);
  set_cpu_capability(saved_capability);
}

// gradients() run on one thread and on two: the same values to the last bit.
void expect_same_on_one_and_two_threads(const std::function<std::vector<double>()>& gradients) {
  const int threads = num_threads();
  std::vector<std::vector<double>> runs;
  for (const int run_threads : {1, 2}) {
    set_num_threads(run_threads);
    runs.push_back(gradients());
  }
  set_num_threads(threads);
  EXPECT_EQ(runs[0], runs[1]);
}

// The backward's threads take chunks of images and add the chunks' sums in a fixed order: the
// gradients come out bit for bit the same at one and at two threads.
TEST(NnConvDirect, GradientsDoNotDependOnTheThreadCount) {
  const Tensor x = random_input({100, 3, 20, 20}, 64).detach().to(DType::Float32);
  const Tensor w = random_input({8, 3, 2, 2}, 65).detach().to(DType::Float32);
  const Tensor g = random_input({100, 8, 19, 19}, 66).detach().to(DType::Float32);
  expect_same_on_one_and_two_threads([&] {
    const Tensor grad_w = Tensor::empty(w.shape(), DType::Float32, cpu()),
                 grad_b = Tensor::empty({8}, DType::Float32, cpu());
    cpu_conv::direct_backward(g, x, w, Tensor(), grad_w, grad_b, {});
    std::vector<double> both = values(grad_w);
    for (double v : values(grad_b)) both.push_back(v);
    return both;
  });
}

// Winograd's weight gradient sums the batch in chunks fixed by the shape (here 3 chunks of 14 images
// at most), not one partial sum per thread: one and two threads give the same bits.
TEST(NnConvWinograd, WeightGradientDoesNotDependOnTheThreadCount) {
  const Tensor x = random_input({40, 8, 15, 15}, 67).detach().to(DType::Float32);
  const Tensor w = random_input({8, 8, 3, 3}, 68).detach().to(DType::Float32);
  const Tensor g = random_input({40, 8, 15, 15}, 69).detach().to(DType::Float32);
  expect_same_on_one_and_two_threads([&] {
    const Tensor grad_w = Tensor::empty(w.shape(), DType::Float32, cpu());
    cpu_conv::winograd_backward(g, x, w, Tensor(), grad_w, Tensor(), {1, 1, 1, 1});
    return values(grad_w);
  });
}

// Where the direct path applies, and that CpuBackend takes it for the stem only in the AVX-512 loops.
TEST(NnConvDirect, AppliesToStrideOneUnpaddedRowsOf16To32Float32Outputs) {
  const auto x = [](const Shape& shape, DType dtype = DType::Float32) { return Tensor::empty(shape, dtype, cpu()); };
  const Tensor stem_w = x({24, 3, 2, 2});
  EXPECT_TRUE(cpu_conv::direct_applies(x({1, 3, 32, 32}), stem_w, {}));
  EXPECT_TRUE(cpu_conv::direct_applies(x({1, 3, 17, 17}), stem_w, {}));  // 16 outputs a row
  EXPECT_TRUE(cpu_conv::direct_applies(x({1, 3, 33, 33}), stem_w, {}));  // 32
  EXPECT_FALSE(cpu_conv::direct_applies(x({1, 3, 16, 16}), stem_w, {}));
  EXPECT_FALSE(cpu_conv::direct_applies(x({1, 3, 34, 34}), stem_w, {}));
  EXPECT_FALSE(cpu_conv::direct_applies(x({1, 3, 32, 32}), stem_w, {1, 1, 1, 1}));
  EXPECT_FALSE(cpu_conv::direct_applies(x({1, 3, 32, 32}), stem_w, {2, 2, 0, 0}));
  EXPECT_FALSE(cpu_conv::direct_applies(x({1, 3, 32, 32}, DType::Float64), x({24, 3, 2, 2}, DType::Float64), {}));
  const CpuCapability saved = cpu_capability();
  set_cpu_capability(CpuCapability::Default);
  EXPECT_FALSE(cpu_conv::direct_pays_off(x({1, 3, 32, 32}), stem_w, {}));
  if (avx512_loops_available()) {
    set_cpu_capability(CpuCapability::Avx512);
    EXPECT_TRUE(cpu_conv::direct_pays_off(x({1, 3, 32, 32}), stem_w, {}));
    EXPECT_FALSE(cpu_conv::direct_pays_off(x({1, 32, 32, 32}), x({24, 32, 2, 2}), {}));  // 128 taps: im2col
  }
  set_cpu_capability(saved);
}

// The dense path for planes of a few positions (cpu_conv.h) called directly against the im2col path,
// forward and every gradient, in both types: the CNN's 3x3 maps (at a smaller batch), paddings 0 to
// 2, stride 2, a 1x1 and a 2x3 plane, a 2x2 kernel, no bias, an empty batch, one thread and several.
TEST(NnConvDense, MatchesTheIm2colPath) {
  struct Case {
    Shape x, w;
    Conv2dParams p;
    bool bias;
  };
  const std::vector<Case> cases{
      {{5, 128, 3, 3}, {16, 128, 3, 3}, {1, 1, 1, 1}, false}, {{3, 4, 3, 3}, {5, 4, 3, 3}, {1, 1, 0, 0}, true},
      {{2, 3, 3, 3}, {4, 3, 3, 3}, {1, 1, 2, 2}, true},       {{2, 3, 3, 3}, {2, 3, 3, 3}, {2, 2, 1, 1}, true},
      {{4, 6, 1, 1}, {3, 6, 3, 3}, {1, 1, 1, 1}, true},       {{3, 2, 2, 3}, {4, 2, 3, 3}, {1, 1, 1, 0}, false},
      {{2, 3, 2, 2}, {5, 3, 2, 2}, {1, 1, 1, 1}, true},       {{0, 4, 3, 3}, {5, 4, 3, 3}, {1, 1, 1, 1}, true},
  };
  const int threads = num_threads();
  for (const int run_threads : {1, 2})
    for (DType dtype : {DType::Float32, DType::Float64})
      for (const Case& c : cases) {
        set_num_threads(run_threads);
        SCOPED_TRACE("x " + shape_str(c.x) + " w " + shape_str(c.w) + " stride " + std::to_string(c.p.stride_h) +
                     " pad " + std::to_string(c.p.pad_h) + "x" + std::to_string(c.p.pad_w) +
                     (dtype == DType::Float32 ? ", float32, " : ", float64, ") + std::to_string(run_threads) +
                     " threads");
        const Tensor x = random_input(c.x, 70).detach().to(dtype), w = random_input(c.w, 71).detach().to(dtype);
        const Tensor b = c.bias ? random_input({c.w[0]}, 72).detach().to(dtype) : Tensor();
        const Shape y_shape{c.x[0], c.w[0], (c.x[2] + 2 * c.p.pad_h - c.w[2]) / c.p.stride_h + 1,
                            (c.x[3] + 2 * c.p.pad_w - c.w[3]) / c.p.stride_w + 1};
        const Tensor g = random_input(y_shape, 73).detach().to(dtype);
        ASSERT_TRUE(cpu_conv::dense_pays_off(x, w, c.p));
        // Sums of up to 128 * 9 products (forward, grad_x) and of the batch's (grad_w), in other orders:
        // measured within 5.3e-7 (float32) and 7e-16 (float64) of the largest value.
        expect_path_matches_im2col(cpu_conv::dense_forward, cpu_conv::dense_backward, x, w, b, g, c.p,
                                   dtype == DType::Float32 ? 2e-6 : 1e-13);
      }
  set_num_threads(threads);
  const auto empty = [](const Shape& shape) { return Tensor::empty(shape, DType::Float32, cpu()); };
  EXPECT_FALSE(cpu_conv::dense_pays_off(empty({1, 8, 4, 3}), empty({8, 8, 3, 3}), {1, 1, 1, 1}));  // 12 > 9
}

// The float64 gradients through the ops on a shape the CPU backend convolves with the dense path.
TEST(NnConvGrad, Conv2dOnTheDensePath) {
  const Tensor x = random_input({2, 3, 3, 3}, 74), w = random_input({4, 3, 3, 3}, 75), b = random_input({4}, 76);
  ASSERT_TRUE(cpu_conv::dense_pays_off(x, w, {1, 1, 1, 1}));
  expect_gradients_match([](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], 1, 1); }, {x, w, b});
}

// ===================================================================== pooling

namespace {
// A 4x4 plane whose 2x2 blocks have distinct maxima.
Tensor pool_example() {
  return Tensor::from_vector<double>({1, 2, 5, 3,  //
                                      4, 0, 1, 2,  //
                                      7, 8, 2, 1,  //
                                      3, 6, 9, 0},
                                     {1, 1, 4, 4});
}
}  // namespace

TEST(NnConv, MaxPoolByHand) {
  Tensor x = pool_example();
  x.requires_grad_();
  const Tensor y = max_pool2d(x, 2);
  EXPECT_EQ(y.shape(), (Shape{1, 1, 2, 2}));
  EXPECT_EQ(values(y), (V{4, 5, 8, 9}));
  y.backward(Tensor::from_vector<double>({10, 20, 30, 40}, {1, 1, 2, 2}));
  EXPECT_EQ(values(x.grad()), (V{0, 0, 20, 0, 10, 0, 0, 0, 0, 30, 0, 0, 0, 0, 40, 0}));
  // Overlapping 3x3 windows with padding 1, stride 2: padding never wins, even over all-negative values.
  const Tensor negative = mul(add(pool_example(), 1.0), -1.0);
  EXPECT_EQ(values(max_pool2d(negative, 3, 2, 1)), (V{-1, -1, -1, -1}));
  EXPECT_EQ(values(max_pool2d(pool_example(), 3, 2, 1)), (V{4, 5, 8, 9}));
  // A NaN wins its window (as in PyTorch); among tied maxima the first one gets the gradient.
  Tensor special = Tensor::from_vector<double>({1, NAN, 2, 2, 0, 3, 2, 1}, {1, 1, 2, 4});
  special.requires_grad_();
  const Tensor pooled = max_pool2d(special, 2);
  EXPECT_TRUE(std::isnan(values(pooled)[0]));
  EXPECT_EQ(values(pooled)[1], 2.0);
  pooled.backward(ones({1, 1, 1, 2}, DType::Float64));
  EXPECT_EQ(values(special.grad()), (V{0, 1, 1, 0, 0, 0, 0, 0}));
  // Odd sizes drop the last row and column (floor mode).
  EXPECT_EQ(max_pool2d(zeros({2, 3, 5, 7}), 2).shape(), (Shape{2, 3, 2, 3}));
}

// The 2x2 stride-2 pool has its own loops (a scalar one, and an AVX-512 one for float32 that
// reads 32 input columns at a time, past the row where the tensor goes on, masked at its end); each
// must pick the same value and the same position as a window-by-window reading: the first of tied
// maxima, the last NaN, odd sizes cut off. Rows of 1 to 32 outputs (one or two runs of 16), planes
// whose last rows end the tensor, in both loops' copies.
TEST(NnConv, TwoByTwoMaxPoolMatchesAWindowByWindowReference) {
  std::vector<CpuCapability> capabilities{CpuCapability::Default};
  if (avx512_loops_available()) capabilities.push_back(CpuCapability::Avx512);
  const CpuCapability saved_capability = cpu_capability();
  for (const CpuCapability capability : capabilities)
    for (const Shape& shape : std::vector<Shape>{
             {2, 3, 9, 11}, {1, 2, 7, 7}, {2, 2, 15, 15}, {1, 2, 31, 31}, {1, 2, 5, 40}, {1, 1, 4, 65}, {2, 1, 3, 2}}) {
      set_cpu_capability(capability);
      SCOPED_TRACE(shape_str(shape) + ", " + cpu_capability_name() + " loops");
      const int64_t planes = shape[0] * shape[1], height = shape[2], width = shape[3];
      const int64_t out_h = height / 2, out_w = width / 2;
      std::vector<float> data(planes * height * width);
      for (size_t i = 0; i < data.size(); ++i) data[i] = i % 37 == 5 ? NAN : static_cast<float>((i * 7919) % 3);
      Tensor x = Tensor::from_vector(data, shape);
      x.requires_grad_();
      const Tensor y = max_pool2d(x, 2);
      const Tensor grad_y =
          arange(1.0, 1.0 + static_cast<double>(planes * out_h * out_w)).reshape({shape[0], shape[1], out_h, out_w});
      y.backward(grad_y);
      const std::vector<float> pooled = y.to_vector<float>(), grad_x = x.grad().to_vector<float>();
      std::vector<float> want_grad(data.size(), 0.0f);
      for (int64_t p = 0; p < planes; ++p)
        for (int64_t oh = 0; oh < out_h; ++oh)
          for (int64_t ow = 0; ow < out_w; ++ow) {
            int64_t best_at = -1;
            for (int64_t dy = 0; dy < 2; ++dy)
              for (int64_t dx = 0; dx < 2; ++dx) {
                const int64_t at = (p * height + 2 * oh + dy) * width + 2 * ow + dx;
                if (best_at < 0 || std::isnan(data[at]) || (!std::isnan(data[best_at]) && data[at] > data[best_at]))
                  best_at = at;
              }
            const int64_t o = (p * out_h + oh) * out_w + ow;
            if (std::isnan(data[best_at]))
              EXPECT_TRUE(std::isnan(pooled[o])) << o;
            else
              EXPECT_EQ(pooled[o], data[best_at]) << o;
            want_grad[best_at] += static_cast<float>(o + 1);
          }
      EXPECT_EQ(grad_x, want_grad);
    }
  set_cpu_capability(saved_capability);
}

TEST(NnConv, AvgPoolByHand) {
  const Tensor x = pool_example();
  EXPECT_EQ(values(avg_pool2d(x, 2)), (V{7 / 4.0, 11 / 4.0, 24 / 4.0, 12 / 4.0}));
  // Padding counts as zeros: every 3x3 window divides by 9.
  expect_all_near(values(avg_pool2d(x, 3, 2, 1)), (V{7 / 9.0, 13 / 9.0, 28 / 9.0, 29 / 9.0}), 1e-15);
  // Stride 1 without padding: the four 3x3 windows.
  expect_all_near(values(avg_pool2d(x, 3, 1)), (V{30 / 9.0, 24 / 9.0, 40 / 9.0, 29 / 9.0}), 1e-15);
}

TEST(NnConv, GlobalPoolsByHand) {
  Tensor x = cat({pool_example(), mul(pool_example(), -1.0)}, 1);  // [1, 2, 4, 4]
  x.requires_grad_();
  const Tensor m = global_max_pool2d(x);
  EXPECT_EQ(m.shape(), (Shape{1, 2}));
  EXPECT_EQ(values(m), (V{9, 0}));
  m.backward(ones({1, 2}, DType::Float64));
  const V grad = values(x.grad());
  EXPECT_EQ(grad[14], 1.0);  // the 9
  EXPECT_EQ(grad[16 + 5], 1.0);  // the first of the two zeros (negated), at row 1, column 1
  EXPECT_EQ(std::accumulate(grad.begin(), grad.end(), 0.0), 2.0);
  expect_all_near(values(global_avg_pool2d(x)), (V{54 / 16.0, -54 / 16.0}), 1e-15);
}

TEST(NnConvGrad, MaxPool) {
  const std::vector<std::pair<Shape, Pool2dParams>> cases = {
      {{2, 3, 4, 4}, {2, 2, 2, 2, 0, 0}}, {{1, 2, 5, 7}, {2, 2, 2, 2, 0, 0}}, {{2, 2, 5, 5}, {3, 3, 1, 1, 1, 1}},
      {{1, 2, 6, 5}, {3, 3, 2, 2, 1, 1}}, {{2, 1, 5, 6}, {2, 3, 1, 2, 1, 0}},
  };
  for (const auto& [shape, p] : cases) {
    SCOPED_TRACE(shape_str(shape));
    // Random normal values are distinct, so the argmax is stable under the finite-difference steps.
    expect_gradients_match([p = p](const std::vector<Tensor>& in) { return max_pool2d(in[0], p); },
                           {random_input(shape, 21)});
  }
  expect_gradients_match([](const std::vector<Tensor>& in) { return global_max_pool2d(in[0]); },
                         {random_input({2, 3, 3, 3}, 22)});
}

TEST(NnConvGrad, AvgPool) {
  const std::vector<std::pair<Shape, Pool2dParams>> cases = {
      {{2, 3, 4, 4}, {2, 2, 2, 2, 0, 0}}, {{1, 2, 5, 7}, {2, 2, 2, 2, 0, 0}}, {{2, 2, 5, 5}, {3, 3, 1, 1, 1, 1}},
      {{1, 2, 6, 5}, {3, 3, 2, 2, 1, 1}}, {{2, 1, 5, 6}, {2, 3, 1, 2, 1, 0}},
  };
  for (const auto& [shape, p] : cases) {
    SCOPED_TRACE(shape_str(shape));
    expect_gradients_match([p = p](const std::vector<Tensor>& in) { return avg_pool2d(in[0], p); },
                           {random_input(shape, 23)});
  }
  expect_gradients_match([](const std::vector<Tensor>& in) { return global_avg_pool2d(in[0]); },
                         {random_input({2, 3, 3, 3}, 24)});
}

// ===================================================================== batch normalization

TEST(NnConv, BatchNormTrainingByHand) {
  // Channel 0 holds {1, 2, 3, 6}: mean 3, biased variance 3.5, unbiased 14/3.
  // Channel 1 holds {0, 0, 4, 4}: mean 2, biased variance 4, unbiased 16/3.
  const Tensor x = Tensor::from_vector<double>({1, 2, 0, 0, 3, 6, 4, 4}, {2, 2, 1, 2});
  const Tensor weight = Tensor::from_vector<double>({2, 1}, {2});
  const Tensor bias = Tensor::from_vector<double>({0, -1}, {2});
  Tensor running_mean = zeros({2}, DType::Float64), running_var = ones({2}, DType::Float64);
  const double eps = 1e-5, momentum = 0.25;
  const Tensor y = batch_norm2d(x, running_mean, running_var, weight, bias, true, momentum, eps);
  const double s0 = 2 / std::sqrt(3.5 + eps), s1 = 1 / std::sqrt(4 + eps);
  expect_all_near(values(y), (V{-2 * s0, -1 * s0, -2 * s1 - 1, -2 * s1 - 1, 0, 3 * s0, 2 * s1 - 1, 2 * s1 - 1}), 1e-14);
  // running = (1 - momentum) * running + momentum * batch, with the unbiased variance.
  expect_all_near(values(running_mean), (V{0.25 * 3, 0.25 * 2}), 1e-15);
  expect_all_near(values(running_var), (V{0.75 + 0.25 * 14 / 3.0, 0.75 + 0.25 * 16 / 3.0}), 1e-15);
  // A second step compounds the update.
  batch_norm2d(x, running_mean, running_var, Tensor(), Tensor(), true, momentum, eps);
  expect_all_near(values(running_mean), (V{0.75 * 0.75 + 0.25 * 3, 0.75 * 0.5 + 0.25 * 2}), 1e-15);
}

// Degenerate shapes: no channels gives empty results; no values per channel cannot give batch
// statistics in training (a clear error, not a division by zero), and evaluates to nothing.
TEST(NnConv, BatchNormWithNoChannelsOrNoValues) {
  const Tensor x = zeros({2, 0, 3, 3}, DType::Float64).requires_grad_();
  const Tensor w = ones({0}, DType::Float64).requires_grad_(), b = zeros({0}, DType::Float64).requires_grad_();
  Tensor running_mean = zeros({0}, DType::Float64), running_var = ones({0}, DType::Float64);
  const Tensor y = batch_norm2d(x, running_mean, running_var, w, b, true, 0.1);
  EXPECT_EQ(y.shape(), x.shape());
  sum(y).backward();
  EXPECT_EQ(x.grad().shape(), x.shape());
  EXPECT_EQ(w.grad().shape(), (Shape{0}));
  for (const Shape& shape : {Shape{0, 2, 3, 3}, Shape{4, 2, 0, 3}}) {
    const Tensor empty = zeros(shape, DType::Float64);
    Tensor mean = zeros({2}, DType::Float64), var = ones({2}, DType::Float64);
    expect_error_mentions([&] { batch_norm2d(empty, mean, var, Tensor(), Tensor(), true, 0.1); },
                          {"batch_norm2d", "more than one value per channel"});
    EXPECT_EQ(batch_norm2d(empty, mean, var, Tensor(), Tensor(), false, 0.1).shape(), shape);
  }
}

TEST(NnConv, BatchNormEvaluationUsesRunningStats) {
  const Tensor x = Tensor::from_vector<double>({1, 2, 0, 0, 3, 6, 4, 4}, {2, 2, 1, 2});
  const Tensor running_mean = Tensor::from_vector<double>({1, -1}, {2});
  const Tensor running_var = Tensor::from_vector<double>({4, 0.25}, {2});
  const Tensor y = batch_norm2d(x, running_mean, running_var, Tensor(), Tensor(), false, 0.1, 1e-12);
  expect_all_near(values(y), (V{0, 0.5, 2, 2, 1, 2.5, 10, 10}), 1e-9);
  // Evaluation leaves the running statistics alone.
  EXPECT_EQ(values(running_mean), (V{1, -1}));
  EXPECT_EQ(values(running_var), (V{4, 0.25}));
}

TEST(NnConv, BatchNormFloat32MatchesFloat64) {
  // An offset mean checks that float32 stays accurate when the mean dominates the spread.
  const Tensor x64 = add(random_input({16, 5, 7, 7}, 30), 50.0).detach().requires_grad_();
  const Tensor w64 = random_input({5}, 31), b64 = random_input({5}, 32);
  const Tensor x32 = x64.detach().to(DType::Float32).requires_grad_();
  const Tensor w32 = w64.detach().to(DType::Float32).requires_grad_();
  const Tensor b32 = b64.detach().to(DType::Float32).requires_grad_();
  const Tensor g = random_input({16, 5, 7, 7}, 33).detach();
  const Tensor y64 = batch_norm2d(x64, Tensor(), Tensor(), w64, b64, true);
  const Tensor y32 = batch_norm2d(x32, Tensor(), Tensor(), w32, b32, true);
  expect_all_near(values(y32), values(y64), 1e-4);
  y64.backward(g);
  y32.backward(g.to(DType::Float32));
  expect_all_near(values(x32.grad()), values(x64.grad()), 1e-4);
  expect_all_near(values(w32.grad()), values(w64.grad()), 1e-4);
  expect_all_near(values(b32.grad()), values(b64.grad()), 1e-4);
}

// Training-mode batch norm written with generic ops: the readable reference for the kernels.
Tensor batch_norm_in_generic_ops(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  const Tensor centered = sub(x, mean(x, {0, 2, 3}, true));
  const Tensor normalized = mul(centered, rsqrt(add(mean(mul(centered, centered), {0, 2, 3}, true), eps)));
  if (!weight.defined()) return normalized;
  const Shape per_channel{1, x.size(1), 1, 1};
  return add(mul(normalized, weight.reshape(per_channel)), bias.reshape(per_channel));
}

// Shapes around the kernels' channel blocks (a block holds at least 256 values per image: several
// short-plane channels per block, or one channel of a large plane) and their images taken four at
// a time (batches of 5, 6 and 11 leave 1-3 over); the larger two split between two threads.
const std::vector<Shape> kBatchNormShapes = {{6, 70, 3, 3}, {5, 3, 17, 17}, {11, 70, 7, 7}, {5, 8, 30, 30}};

TEST(NnConv, BatchNormKernelsMatchTheFormulaInGenericOps) {
  const int saved = num_threads();
  for (int threads : {1, 2})
    for (const Shape& shape : kBatchNormShapes) {
      SCOPED_TRACE(shape_str(shape) + " on " + std::to_string(threads) + " threads");
      set_num_threads(threads);
      const Tensor x = random_input(shape, 60, 3.0), w = random_input({shape[1]}, 61), b = random_input({shape[1]}, 62);
      const Tensor g = random_input(shape, 63).detach();
      Tensor running_mean = zeros({shape[1]}, DType::Float64), running_var = ones({shape[1]}, DType::Float64);
      const Tensor y = batch_norm2d(x, running_mean, running_var, w, b, true, 1.0);
      y.backward(g);
      const V grads[] = {values(x.grad()), values(w.grad()), values(b.grad())};
      for (Tensor t : {x, w, b}) t.zero_grad();
      const Tensor expected = batch_norm_in_generic_ops(x, w, b, 1e-5);
      expected.backward(g);
      expect_all_near(values(y), values(expected), 1e-12);
      expect_all_near(grads[0], values(x.grad()), 1e-11);
      expect_all_near(grads[1], values(w.grad()), 1e-10);
      expect_all_near(grads[2], values(b.grad()), 1e-10);
      // With momentum 1 the running statistics are this batch's: its mean and unbiased variance.
      const Tensor batch_mean = mean(x.detach(), {0, 2, 3});
      const double count = static_cast<double>(x.numel() / shape[1]);
      const Tensor centered = sub(x.detach(), batch_mean.reshape({1, shape[1], 1, 1}));
      expect_all_near(values(running_mean), values(batch_mean), 1e-12);
      expect_all_near(values(running_var), values(mul(sum(mul(centered, centered), {0, 2, 3}), 1.0 / (count - 1))),
                      1e-11);
    }
  set_num_threads(saved);
}

// An activation fused into batch norm gives what the activation op gives after it, forward and
// backward, in both float types, with and without the affine parameters, and with grad_x not
// wanted (only the parameters require grad).
TEST(NnConv, BatchNormWithAnActivationIsThatActivationOfBatchNorm) {
  const int saved = num_threads();
  for (int threads : {1, 2})
    for (DType dtype : {DType::Float64, DType::Float32})
      for (UnaryOp op : {UnaryOp::Relu, UnaryOp::GeluErf, UnaryOp::GeluTanh, UnaryOp::Silu, UnaryOp::Tanh})
        for (const Shape& shape : kBatchNormShapes)
          for (int variant = 0; variant < 3; ++variant) {
            const bool affine = variant != 1, x_needs_grad = variant != 2;
            SCOPED_TRACE(std::string(activation_name(op)) + " " + shape_str(shape) + " " + dtype_name(dtype) +
                         " threads " + std::to_string(threads) + " variant " + std::to_string(variant));
            set_num_threads(threads);
            const auto leaf = [&](const Tensor& t, bool grad) { return t.detach().to(dtype).requires_grad_(grad); };
            const Tensor x = leaf(random_input(shape, 70), x_needs_grad);
            const Tensor w = affine ? leaf(random_input({shape[1]}, 71, 1.0), true) : Tensor();
            const Tensor b = affine ? leaf(random_input({shape[1]}, 72), true) : Tensor();
            const Tensor g = random_input(shape, 73).detach().to(dtype);
            const std::vector<Tensor> leaves = affine ? std::vector<Tensor>{x, w, b} : std::vector<Tensor>{x};
            const auto run = [&](bool fused) {
              for (Tensor t : leaves) t.zero_grad();
              const Tensor y = fused ? batch_norm2d(x, Tensor(), Tensor(), w, b, true, 0.1, 1e-5, op)
                                     : activation(op, batch_norm2d(x, Tensor(), Tensor(), w, b, true, 0.1, 1e-5));
              if (y.requires_grad()) y.backward(g);
              std::vector<V> out{values(y)};
              for (const Tensor& t : leaves)
                if (t.requires_grad()) out.push_back(values(t.grad()));
              return out;
            };
            const std::vector<V> fused = run(true), composed = run(false);
            ASSERT_EQ(fused.size(), composed.size());
            const double tol = dtype == DType::Float64 ? 1e-12 : 2e-5;
            for (size_t k = 0; k < fused.size(); ++k) expect_all_near(fused[k], composed[k], tol * (k > 1 ? 10 : 1));
          }
  set_num_threads(saved);
}

TEST(NnConv, BatchNormWithAnActivationInEvaluation) {
  const Tensor x = random_input({3, 4, 5, 5}, 80);
  const Tensor running_mean = random_input({4}, 81).detach(), running_var = add(random_input({4}, 82), 3.0).detach();
  const Tensor fused = batch_norm2d(x, running_mean, running_var, Tensor(), Tensor(), false, 0.1, 1e-5, UnaryOp::Silu);
  const Tensor composed = silu(batch_norm2d(x, running_mean, running_var, Tensor(), Tensor(), false, 0.1, 1e-5));
  expect_all_near(values(fused), values(composed), 1e-15);
}

TEST(NnConvGrad, BatchNormWithAnActivation) {
  for (UnaryOp op : {UnaryOp::GeluErf, UnaryOp::Sigmoid, UnaryOp::Relu2}) {
    SCOPED_TRACE(activation_name(op));
    expect_gradients_match(
        [&](const std::vector<Tensor>& in) {
          return batch_norm2d(in[0], Tensor(), Tensor(), in[1], in[2], true, 0.1, 1e-5, op);
        },
        {random_input({5, 3, 3, 4}, 90), random_input({3}, 91, 1.0), random_input({3}, 92)});
  }
}

TEST(NnConvGrad, BatchNormTraining) {
  for (bool affine : {true, false}) {
    SCOPED_TRACE(affine ? "affine" : "no affine");
    Tensor running_mean = zeros({3}, DType::Float64), running_var = ones({3}, DType::Float64);
    std::vector<Tensor> inputs = {random_input({4, 3, 3, 5}, 40)};
    if (affine) inputs.insert(inputs.end(), {random_input({3}, 41), random_input({3}, 42)});
    expect_gradients_match(
        [&](const std::vector<Tensor>& in) {
          return batch_norm2d(in[0], running_mean, running_var, affine ? in[1] : Tensor(), affine ? in[2] : Tensor(),
                              true);
        },
        inputs);
  }
  // Only the affine parameters require grad.
  const Tensor x = random_input({3, 2, 2, 3}, 43).detach();
  expect_gradients_match(
      [&](const std::vector<Tensor>& in) { return batch_norm2d(x, Tensor(), Tensor(), in[0], in[1], true); },
      {random_input({2}, 44), random_input({2}, 45)});
}

TEST(NnConvGrad, BatchNormEvaluation) {
  const Tensor running_mean = random_input({3}, 50).detach();
  const Tensor running_var = add(random_input({3}, 51), 3.0).detach();
  for (bool affine : {true, false}) {
    SCOPED_TRACE(affine ? "affine" : "no affine");
    std::vector<Tensor> inputs = {random_input({2, 3, 4, 3}, 52)};
    if (affine) inputs.insert(inputs.end(), {random_input({3}, 53), random_input({3}, 54)});
    expect_gradients_match(
        [&](const std::vector<Tensor>& in) {
          return batch_norm2d(in[0], running_mean, running_var, affine ? in[1] : Tensor(), affine ? in[2] : Tensor(),
                              false);
        },
        inputs);
  }
}

// ===================================================================== errors

TEST(NnConv, ErrorsNameOpAndShapes) {
  const Tensor x = zeros({2, 3, 5, 5});
  expect_error_mentions([&] { conv2d(x, zeros({4, 2, 3, 3})); }, {"conv2d", "[2, 3, 5, 5]", "[4, 2, 3, 3]", "channels"});
  expect_error_mentions([&] { conv2d(x, zeros({4, 3, 6, 3})); }, {"conv2d", "kernel height 6", "larger", "5"});
  expect_error_mentions([&] { conv2d(x, zeros({4, 3, 3, 8}), Tensor(), 1, 1); }, {"conv2d", "kernel width 8", "7"});
  expect_error_mentions([&] { conv2d(zeros({3, 5, 5}), zeros({4, 3, 3, 3})); }, {"conv2d", "[3, 5, 5]", "[N, C, H, W]"});
  expect_error_mentions([&] { conv2d(x, zeros({4, 3, 3})); }, {"conv2d", "[4, 3, 3]"});
  expect_error_mentions([&] { conv2d(zeros({2, 0, 5, 5}), zeros({4, 0, 3, 3})); }, {"conv2d", "no channels"});
  expect_error_mentions([&] { conv2d(x, zeros({4, 3, 3, 3}), zeros({3})); }, {"conv2d", "bias", "[3]"});
  expect_error_mentions([&] { conv2d(x, zeros({4, 3, 3, 3}), Tensor(), 0); }, {"conv2d", "stride 0"});
  expect_error_mentions([&] { conv2d(x, zeros({4, 3, 3, 3}, DType::Float64)); }, {"conv2d", "dtype"});
  expect_error_mentions([&] { max_pool2d(zeros({5, 5}), 2); }, {"max_pool2d", "[5, 5]"});
  expect_error_mentions([&] { max_pool2d(x, 6); }, {"max_pool2d", "kernel height 6", "[2, 3, 5, 5]"});
  expect_error_mentions([&] { avg_pool2d(x, 2, 2, 2); }, {"avg_pool2d", "padding 2x2", "kernel 2x2"});
  expect_error_mentions([&] { batch_norm2d(x, zeros({4}), ones({4}), Tensor(), Tensor(), true); },
                        {"batch_norm2d", "running_mean", "[4]", "[2, 3, 5, 5]"});
  expect_error_mentions([&] { batch_norm2d(zeros({2, 3}), Tensor(), Tensor(), Tensor(), Tensor(), true); },
                        {"batch_norm2d", "[2, 3]"});
  expect_error_mentions([&] { batch_norm2d(x, Tensor(), Tensor(), Tensor(), Tensor(), false); },
                        {"batch_norm2d", "running"});
  expect_error_mentions([&] { batch_norm2d(zeros({1, 3, 1, 1}), Tensor(), Tensor(), Tensor(), Tensor(), true); },
                        {"batch_norm2d", "more than one value", "[1, 3, 1, 1]"});
  expect_error_mentions([&] { batch_norm2d(x, Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5, UnaryOp::Exp); },
                        {"batch_norm2d", "not an activation"});
  expect_error_mentions([&] { activation(UnaryOp::Clamp, x); }, {"activation", "not an activation"});
}
