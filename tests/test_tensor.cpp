// Tensor storage, views, the autograd engine and the random generator.
#include <gtest/gtest.h>

#include <omp.h>

#include "framework/ops.h"
#include "framework/parallel.h"
#include "tests/gradcheck.h"

using namespace ml;
using ml::testing::expect_error_mentions;

TEST(Tensor, FromVectorRoundTripAndMetadata) {
  Tensor t = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  EXPECT_EQ(t.shape(), (Shape{2, 3}));
  EXPECT_EQ(t.strides(), (Shape{3, 1}));
  EXPECT_EQ(t.numel(), 6);
  EXPECT_EQ(t.dtype(), DType::Float32);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(t.size(-1), 3);
}

TEST(Tensor, ViewsShareStorageWithoutCopy) {
  Tensor t = arange(0, 12).reshape({3, 4});
  Tensor tt = t.t();
  EXPECT_EQ(tt.storage(), t.storage());
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.contiguous().to_vector<float>(), (std::vector<float>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
  Tensor row = t.narrow(0, 1, 1);
  EXPECT_EQ(row.storage(), t.storage());
  EXPECT_EQ(row.to_vector<float>(), (std::vector<float>{4, 5, 6, 7}));
  Tensor col = t.narrow(1, 2, 1);
  EXPECT_EQ(col.to_vector<float>(), (std::vector<float>{2, 6, 10}));
  EXPECT_EQ(t.unsqueeze(0).shape(), (Shape{1, 3, 4}));
  EXPECT_EQ(t.unsqueeze(0).squeeze(0).shape(), (Shape{3, 4}));
  EXPECT_EQ(t.reshape({-1}).shape(), (Shape{12}));
  EXPECT_EQ(t.flatten().shape(), (Shape{12}));
  Tensor e = arange(0, 3).reshape({3, 1}).expand({3, 2});
  EXPECT_EQ(e.to_vector<float>(), (std::vector<float>{0, 0, 1, 1, 2, 2}));
}

TEST(Tensor, ViewOfNonContiguousThrowsButReshapeCopies) {
  Tensor t = arange(0, 6).reshape({2, 3}).t();
  expect_error_mentions([&] { t.view({6}); }, {"view", "not contiguous"});
  EXPECT_EQ(t.reshape({6}).to_vector<float>(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
}

// As in PyTorch, reshape returns a view when the new shape only regroups dims that are contiguous
// with each other (attention splits a narrowed [B, T, C] activation into heads this way), and a
// copy when it would merge across a gap.
TEST(Tensor, ReshapeRegroupsContiguousChunksInPlace) {
  const Tensor packed = arange(0, 24).reshape({2, 12});
  const Tensor part = packed.narrow(1, 4, 6);  // two rows of 6, 12 apart
  const std::vector<float> expected{4, 5, 6, 7, 8, 9, 16, 17, 18, 19, 20, 21};
  const Tensor split = part.reshape({2, 2, 3});
  EXPECT_EQ(split.storage(), packed.storage());
  EXPECT_EQ(split.strides(), (Shape{12, 3, 1}));
  EXPECT_EQ(split.to_vector<float>(), expected);
  EXPECT_EQ(part.reshape({1, 2, 1, 6, 1}).storage(), packed.storage());
  const Tensor merged = part.reshape({12});
  EXPECT_NE(merged.storage(), packed.storage());
  EXPECT_EQ(merged.to_vector<float>(), expected);

  Tensor x = arange(0, 24).reshape({2, 12});
  x.requires_grad_();
  sum(mul(x.narrow(1, 4, 6).reshape({2, 2, 3}), 2.0)).backward();
  std::vector<float> grad(24, 0.0f);
  for (int row = 0; row < 2; ++row)
    for (int col = 4; col < 10; ++col) grad[row * 12 + col] = 2.0f;
  EXPECT_EQ(x.grad().to_vector<float>(), grad);
}

// A copy within one dtype takes the vectorized, threaded loops; a copy between dtypes walks the
// elements one by one. The float32 -> float64 copy is the reference the float32 copies must match
// bit for bit, from every kind of view (transposed, heads swapped as attention does, a broadcast
// row, a narrowed block) and into a strided destination, on one thread and two, at sizes below and
// above the threading grain.
TEST(Tensor, SameTypeCopiesMatchTheConvertingElementLoop) {
  const int saved = num_threads();
  Generator gen(5);
  const Tensor matrix = randn({300, 170}, DType::Float32, cpu(), gen);
  const Tensor heads = randn({12, 4, 64, 32}, DType::Float32, cpu(), gen);
  const Tensor row = randn({384}, DType::Float32, cpu(), gen);
  const std::vector<std::pair<std::string, Tensor>> views{
      {"transpose", matrix.t()},
      {"heads swapped", heads.transpose(1, 2)},
      {"broadcast row", row.unsqueeze(0).expand({768, 384})},
      {"broadcast column", row.narrow(0, 0, 7).unsqueeze(1).expand({7, 5})},
      {"narrowed block", matrix.narrow(0, 3, 100).narrow(1, 9, 33)},
      {"contiguous", matrix},
      {"scalar", matrix.narrow(0, 2, 1).narrow(1, 5, 1).squeeze(0).squeeze(0)}};
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    for (const auto& [name, view] : views) {
      const std::vector<double> reference = view.to(DType::Float64).to_vector<double>();
      const std::vector<float> copied = view.contiguous().to_vector<float>();
      ASSERT_EQ(copied.size(), reference.size()) << name;
      for (size_t i = 0; i < copied.size(); ++i)
        ASSERT_EQ(static_cast<double>(copied[i]), reference[i]) << name << ", element " << i << ", threads " << threads;
    }
    // Into a transposed destination: every element lands where the converting loop puts it.
    Tensor into = Tensor::empty({170, 300}, DType::Float32, cpu()).t();
    Tensor into_reference = Tensor::empty({170, 300}, DType::Float64, cpu()).t();
    copy_(into, matrix);
    copy_(into_reference, matrix);
    const std::vector<float> got = into.t().contiguous().to_vector<float>();
    const std::vector<double> want = into_reference.t().contiguous().to_vector<double>();
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(static_cast<double>(got[i]), want[i]) << "strided destination, element " << i << ", threads " << threads;
  }
  set_num_threads(saved);
}

// Every element of a permuted view lands where its indices say, counted here by hand: the rows are
// walked by carrying indices from one row to the next, and a thread's first row (at two threads,
// in the middle of a dimension) starts from its own division. Both loops: rows that step by one
// (vectorized) and rows that do not (element by element), and a broadcast outer dimension.
TEST(Tensor, StridedCopiesPutEveryElementWhereItsIndicesSay) {
  const int saved = num_threads();
  const Shape shape{3, 5, 41, 64};  // 39,360 elements: above the threading grain
  const Tensor x = arange(0, 3 * 5 * 41 * 64);
  const auto source = [&](int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    return static_cast<float>(((i0 * shape[1] + i1) * shape[2] + i2) * shape[3] + i3);
  };
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    // [5, 41, 3, 64]: rows of 64 that step by one, three outer dimensions that do not merge.
    std::vector<float> got = x.reshape(shape).permute({1, 2, 0, 3}).contiguous().to_vector<float>();
    size_t at = 0;
    for (int64_t i1 = 0; i1 < 5; ++i1)
      for (int64_t i2 = 0; i2 < 41; ++i2)
        for (int64_t i0 = 0; i0 < 3; ++i0)
          for (int64_t i3 = 0; i3 < 64; ++i3)
            ASSERT_EQ(got[at++], source(i0, i1, i2, i3)) << "rows that step by one, threads " << threads;
    // [64, 5, 3, 41]: rows of 41 with a stride of 64.
    got = x.reshape(shape).permute({3, 1, 0, 2}).contiguous().to_vector<float>();
    at = 0;
    for (int64_t i3 = 0; i3 < 64; ++i3)
      for (int64_t i1 = 0; i1 < 5; ++i1)
        for (int64_t i0 = 0; i0 < 3; ++i0)
          for (int64_t i2 = 0; i2 < 41; ++i2)
            ASSERT_EQ(got[at++], source(i0, i1, i2, i3)) << "strided rows, threads " << threads;
    // [4, 5, 41, 64] from a broadcast first dimension: rows of 64 between carries into a stride of 0.
    got = x.reshape(shape).narrow(0, 1, 1).expand({4, 5, 41, 64}).permute({0, 2, 1, 3}).contiguous().to_vector<float>();
    at = 0;
    for (int64_t b = 0; b < 4; ++b)
      for (int64_t i2 = 0; i2 < 41; ++i2)
        for (int64_t i1 = 0; i1 < 5; ++i1)
          for (int64_t i3 = 0; i3 < 64; ++i3)
            ASSERT_EQ(got[at++], source(1, i1, i2, i3)) << "broadcast, threads " << threads;
  }
  set_num_threads(saved);
}

TEST(Tensor, DtypeAndShapeErrorsNameTheOp) {
  Tensor a = ones({2, 3});
  Tensor b = ones({4});
  expect_error_mentions([&] { add(a, b); }, {"add", "[2, 3]", "[4]"});
  expect_error_mentions([&] { mul(a, ones({2, 3}, DType::Float64)); }, {"mul", "float32", "float64"});
  expect_error_mentions([&] { matmul(a, a); }, {"matmul", "[2, 3]"});
  expect_error_mentions([&] { a.reshape({4, 2}); }, {"shape [4, 2] is invalid", "[2, 3]"});
  expect_error_mentions([&] { a.data<double>(); }, {"float32"});
  expect_error_mentions([&] { Tensor::from_vector<int64_t>({1}, {1}).requires_grad_(); }, {"int64"});
}

TEST(Autograd, BackwardOnNonScalarNeedsGradOutput) {
  Tensor x = ones({3});
  x.requires_grad_();
  Tensor y = mul(x, 2.0);
  expect_error_mentions([&] { y.backward(); }, {"backward", "scalar", "[3]"});
  y.backward(ones({3}));
  EXPECT_EQ(x.grad().to_vector<float>(), (std::vector<float>{2, 2, 2}));
}

TEST(Autograd, AccumulatesAcrossUsesAndCalls) {
  Tensor x = Tensor::from_vector<float>({1, 2}, {2});
  x.requires_grad_();
  sum(add(mul(x, x), x)).backward();  // d/dx = 2x + 1
  EXPECT_EQ(x.grad().to_vector<float>(), (std::vector<float>{3, 5}));
  sum(x).backward();
  EXPECT_EQ(x.grad().to_vector<float>(), (std::vector<float>{4, 6}));
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
}

TEST(Autograd, SharedGradientsAreNotAliased) {
  Tensor a = ones({2}), b = ones({2});
  a.requires_grad_();
  b.requires_grad_();
  add(a, b).backward(ones({2}));
  Tensor ga = a.grad();
  {
    NoGradGuard no_grad;
    mul_(ga, 5.0);
  }
  EXPECT_EQ(b.grad().to_vector<float>(), (std::vector<float>{1, 1}));
}

TEST(Autograd, NoGradRecordsNothing) {
  Tensor x = ones({2});
  x.requires_grad_();
  NoGradGuard guard;
  Tensor y = mul(x, 3.0);
  EXPECT_FALSE(y.requires_grad());
  EXPECT_EQ(y.grad_fn(), nullptr);
}

TEST(Autograd, GraphIsFreedAfterBackward) {
  Tensor x = ones({2});
  x.requires_grad_();
  Tensor h = exp(x);
  Tensor loss = sum(mul(h, h));
  std::weak_ptr<Node> node = h.grad_fn();
  loss.backward();
  EXPECT_TRUE(node.expired());
  expect_error_mentions([&] { sum(h).backward(); }, {"second time"});
}

TEST(Autograd, DeepChainDoesNotOverflowTheStack) {
  Tensor x = ones({1});
  x.requires_grad_();
  Tensor y = x;
  for (int i = 0; i < 20000; ++i) y = add(y, 0.0);
  sum(y).backward();
  EXPECT_EQ(x.grad().item(), 1.0);
}

TEST(Autograd, InPlaceOnTensorRequiringGradIsRefused) {
  Tensor x = ones({2});
  x.requires_grad_();
  expect_error_mentions([&] { mul_(x, 2.0); }, {"mul_", "NoGradGuard"});
}

// Several uses of one tensor: the engine sums their gradients in place while it holds the only
// handle on the sum, and a narrowed part adds into its own range of it (attention's q, k and v
// narrowed out of one projection). Overlapping and disjoint ranges, the whole tensor used too,
// in both orders.
TEST(Autograd, NarrowedPartsAddIntoTheirRangesOfOneGradient) {
  for (bool whole_first : {true, false}) {
    Tensor p = zeros({2, 6});
    p.requires_grad_();
    const Tensor x = mul(p, 1.0);  // not a leaf: the engine collects its gradient
    const Tensor whole = sum(mul(x, 10.0));
    const Tensor parts =
        add(add(sum(mul(x.narrow(1, 0, 2), 1.0)), sum(mul(x.narrow(1, 2, 2), 2.0))), sum(mul(x.narrow(1, 1, 3), 4.0)));
    (whole_first ? add(whole, parts) : add(parts, whole)).backward();
    EXPECT_EQ(p.grad().to_vector<float>(), (std::vector<float>{11, 15, 16, 16, 10, 10, 11, 15, 16, 16, 10, 10}))
        << "whole tensor used first: " << whole_first;
  }
}

// add hands one gradient tensor to both its inputs: a later use of one input must not add into it
// in place, or the other input's gradient would change too.
TEST(Autograd, AGradientSharedByTwoTensorsIsNotAddedIntoInPlace) {
  for (bool part_first : {true, false}) {
    Tensor p = zeros({2, 3}), q = zeros({2, 3});
    p.requires_grad_();
    q.requires_grad_();
    const Tensor x = mul(p, 1.0), y = mul(q, 1.0);
    const Tensor both = sum(mul(add(x, y), full({2, 3}, 2.0)));  // add's gradient: one fresh tensor of 2s
    // y used here too, so that (part first) the engine reaches x and y only after add's node.
    const Tensor part = sum(mul(x.narrow(0, 0, 1), 5.0)) + sum(mul(x, 3.0)) + sum(mul(y, 7.0));
    (part_first ? add(part, both) : add(both, part)).backward();
    EXPECT_EQ(p.grad().to_vector<float>(), (std::vector<float>{10, 10, 10, 5, 5, 5})) << "part first: " << part_first;
    EXPECT_EQ(q.grad().to_vector<float>(), (std::vector<float>{9, 9, 9, 9, 9, 9})) << "part first: " << part_first;
  }
}

TEST(Random, SameSeedSameNumbersAnyThreadCount) {
  const int saved = num_threads();
  Generator g1(7), g2(7);
  set_num_threads(1);
  const auto a = randn({100000}, DType::Float32, cpu(), g1).to_vector<float>();
  set_num_threads(2);
  const auto b = randn({100000}, DType::Float32, cpu(), g2).to_vector<float>();
  set_num_threads(saved);
  EXPECT_EQ(a, b);
  Generator g3(8);
  EXPECT_NE(a, randn({100000}, DType::Float32, cpu(), g3).to_vector<float>());
}

TEST(Random, MomentsAreRight) {
  Generator gen(3);
  const Tensor n = randn({200000}, DType::Float64, cpu(), gen);
  EXPECT_NEAR(mean(n).item(), 0.0, 0.01);
  EXPECT_NEAR(var(n).item(), 1.0, 0.01);
  const Tensor u = rand({200000}, 2.0, 4.0, DType::Float64, cpu(), gen);
  EXPECT_NEAR(mean(u).item(), 3.0, 0.01);
  EXPECT_GE(amin(u).item(), 2.0);
  EXPECT_LT(amax(u).item(), 4.0);
  EXPECT_NEAR(mean(bernoulli({200000}, 0.3, DType::Float64, cpu(), gen)).item(), 0.3, 0.01);
}

TEST(Random, SuccessiveDrawsDiffer) {
  Generator gen(1);
  EXPECT_NE(randn({16}, DType::Float32, cpu(), gen).to_vector<float>(),
            randn({16}, DType::Float32, cpu(), gen).to_vector<float>());
}
