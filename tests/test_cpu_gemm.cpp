// muonlab's own AVX-512 single-precision product (framework/backends/cpu/cpu_gemm.h) against a
// float64 product of plain loops and against OpenBLAS, the path it replaces: every edge of its
// tiles and blocks, both transposes, padded leading dimensions, alpha and beta (beta == 0 must not
// read C), the symmetric part (an upper triangle and its mirror), and the same bits on one thread or two.
#include <cblas.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "framework/backends/cpu/cpu_capability.h"
#include "framework/backends/cpu/cpu_gemm.h"
#include "framework/parallel.h"

namespace ml {
namespace {

struct Problem {
  int64_t m, n, k;
  bool trans_a, trans_b;
  int64_t pad;  // extra elements at the end of every row of A, B and C
  float alpha, beta;
  std::vector<float> a, b, c;  // c: the C given to the product
  int64_t lda() const { return (trans_a ? m : k) + pad; }
  int64_t ldb() const { return (trans_b ? k : n) + pad; }
  int64_t ldc() const { return n + pad; }
  float at_a(int64_t i, int64_t p) const { return trans_a ? a[p * lda() + i] : a[i * lda() + p]; }
  float at_b(int64_t p, int64_t j) const { return trans_b ? b[j * ldb() + p] : b[p * ldb() + j]; }
};

Problem make_problem(int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b, int64_t pad, float alpha,
                     float beta, unsigned seed) {
  Problem p{m, n, k, trans_a, trans_b, pad, alpha, beta, {}, {}, {}};
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal;
  p.a.resize((trans_a ? k : m) * p.lda());
  p.b.resize((trans_b ? n : k) * p.ldb());
  p.c.resize(m * p.ldc());
  for (float& x : p.a) x = normal(gen);
  for (float& x : p.b) x = normal(gen);
  // beta == 0 must not read C: NaNs there would show in the result.
  for (float& x : p.c) x = beta == 0.0f ? std::numeric_limits<float>::quiet_NaN() : normal(gen);
  return p;
}

std::vector<float> own_product(const Problem& p, bool parallel, cpu_gemm::Part part = cpu_gemm::Part::All) {
  std::vector<float> c = p.c;
  cpu_gemm::sgemm(p.trans_a, p.trans_b, p.m, p.n, p.k, p.alpha, p.a.data(), p.lda(), p.b.data(), p.ldb(), p.beta,
                  c.data(), p.ldc(), parallel, part);
  return c;
}

std::vector<float> openblas_product(const Problem& p) {
  std::vector<float> c = p.c;
  cblas_sgemm(CblasRowMajor, p.trans_a ? CblasTrans : CblasNoTrans, p.trans_b ? CblasTrans : CblasNoTrans, p.m, p.n,
              p.k, p.alpha, p.a.data(), p.lda(), p.b.data(), p.ldb(), p.beta, c.data(), p.ldc());
  return c;
}

// Each element of C (and the padding past n, which must keep C's value) against the float64 sum,
// within float32 rounding of the sum of the terms' magnitudes.
void expect_matches_float64(const Problem& p, const std::vector<float>& c, const std::string& who) {
  int64_t wrong = 0;
  for (int64_t i = 0; i < p.m; ++i)
    for (int64_t j = 0; j < p.ldc(); ++j) {
      const float got = c[i * p.ldc() + j];
      if (j >= p.n) {
        wrong += !(got == p.c[i * p.ldc() + j] || (std::isnan(got) && std::isnan(p.c[i * p.ldc() + j])));
        continue;
      }
      double sum = 0.0, magnitude = 0.0;
      for (int64_t q = 0; q < p.k; ++q) {
        const double term = static_cast<double>(p.at_a(i, q)) * p.at_b(q, j);
        sum += term;
        magnitude += std::abs(term);
      }
      const double old_c = p.beta == 0.0f ? 0.0 : p.c[i * p.ldc() + j];
      const double expected = p.alpha * sum + p.beta * old_c;
      const double tolerance = 2e-6 * (std::abs(p.alpha) * magnitude + std::abs(p.beta * old_c)) + 1e-30;
      if (!(std::abs(got - expected) <= tolerance) && ++wrong <= 3)
        ADD_FAILURE() << who << ": C[" << i << ", " << j << "] = " << got << ", float64 gives " << expected;
    }
  EXPECT_EQ(wrong, 0) << who;
}

class OwnSgemm : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cpu_gemm::own_sgemm_runs()) GTEST_SKIP() << "this processor has no AVX-512: OpenBLAS serves every product";
  }
};

TEST_F(OwnSgemm, MatchesFloat64AndOpenBlasAtEveryEdgeOfItsTilesAndBlocks) {
  // Rows: under, at and past a 12-row tile and a 240-row block; columns: around the 16-lane
  // vectors, the 32-column tile and the 2048-column block; depth: around the 256-step block.
  struct Size {
    int64_t m, n, k;
  };
  const std::vector<Size> sizes{{1, 1, 1},    {5, 7, 3},     {12, 16, 256}, {13, 17, 257}, {11, 31, 255},
                                {24, 32, 1},  {25, 33, 600}, {241, 65, 40}, {37, 2050, 9}, {100, 48, 513}};
  unsigned seed = 1;
  for (const Size& s : sizes)
    for (int layout = 0; layout < 4; ++layout) {
      const bool trans_a = layout & 1, trans_b = layout & 2;
      const float beta = seed % 3 == 0 ? 0.0f : seed % 3 == 1 ? 1.0f : -0.75f;
      const Problem p = make_problem(s.m, s.n, s.k, trans_a, trans_b, seed % 3, -0.5f, beta, seed);
      ++seed;
      const std::string what = std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k) +
                               " trans " + std::to_string(trans_a) + std::to_string(trans_b) + " beta " +
                               std::to_string(beta);
      SCOPED_TRACE(what);
      expect_matches_float64(p, own_product(p, true), "own");
      expect_matches_float64(p, openblas_product(p), "OpenBLAS");
    }
}

// The tiles are shared out between the threads, but each element is summed in the same order:
// one thread, two threads and a call from inside a parallel region give the same bits. Two threads
// share C's tiles by columns on the first two sizes (ranges that meet inside a panel; a range wider
// than a block of columns) and its rows on the third (too few columns, and A over 4 MiB).
TEST_F(OwnSgemm, GivesTheSameBitsOnAnyNumberOfThreads) {
  struct Size {
    int64_t m, n, k;
  };
  const int saved = num_threads();
  for (const Size& s : std::vector<Size>{{300, 200, 300}, {20, 4200, 60}, {4100, 90, 300}})
    for (int layout = 0; layout < 4; ++layout) {
      SCOPED_TRACE(std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k));
      ASSERT_GE(s.m * s.n * s.k, cpu_gemm::kThreadedProductWork) << "a product the threads share";
      const Problem p = make_problem(s.m, s.n, s.k, layout & 1, layout & 2, 1, 1.25f, 0.5f, 40 + layout);
      set_num_threads(1);
      const std::vector<float> one = own_product(p, true);
      set_num_threads(2);
      const std::vector<float> two = own_product(p, true);
      std::vector<float> in_region;
#pragma omp parallel num_threads(2)
      {
#pragma omp single
        in_region = own_product(p, true);
      }
      EXPECT_EQ(one, two) << "layout " << layout;
      EXPECT_EQ(one, in_region) << "layout " << layout;
      expect_matches_float64(p, two, "own at two threads");
    }
  set_num_threads(saved);
}

// For symmetric products (syrk): Part::Symmetric computes the upper triangle exactly as the whole
// product does, onto C in place or from another matrix D, and writes the lower one as its mirror,
// on one thread or several. Two threads share its rows otherwise than the whole product's at n = 90
// (three panels of columns: four blocks of rows, dealt out in turn), and mirror bands of rows that
// cut 16-row blocks; from n = 130 they share its tiles by columns, their ranges meeting inside a
// panel, and each mirrors its own tiles by 16-row blocks that the ranges cut.
TEST_F(OwnSgemm, TheSymmetricPartIsTheWholeProductsUpperTriangleAndItsMirror) {
  const int saved = num_threads();
  for (const int threads : {1, 2, 3, 4})
    for (const int64_t n : {1, 13, 50, 90, 130, 300}) {
      SCOPED_TRACE("n " + std::to_string(n) + ", threads " + std::to_string(threads));
      set_num_threads(threads);
      Problem p = make_problem(n, n, 600, false, true, 0, 2.0f, 0.0f, 60 + n);
      if (n >= 90) {
        ASSERT_GE(n * n * p.k, cpu_gemm::kThreadedProductWork) << "a product the threads share";
      }
      p.b = p.a;  // C = 2 A A^T
      const std::vector<float> whole = own_product(p, true);
      p.c.assign(p.c.size(), -7.0f);
      const std::vector<float> symmetric = own_product(p, true, cpu_gemm::Part::Symmetric);
      // C = 2 A A^T - 0.75 D from another matrix D: the upper triangle of the whole product onto a copy of D.
      std::vector<float> d(n * n), onto_d(n * n, -7.0f);
      for (int64_t i = 0; i < n * n; ++i) d[i] = static_cast<float>(i % 7) - 3.0f;
      p.c = d;
      p.beta = -0.75f;
      const std::vector<float> whole_onto_d = own_product(p, true);
      cpu_gemm::sgemm(false, true, n, n, p.k, p.alpha, p.a.data(), p.lda(), p.b.data(), p.ldb(), p.beta, onto_d.data(),
                      n, true, cpu_gemm::Part::Symmetric, d.data(), n);
      std::vector<float> in_place = d;  // the same with D in C: the lower triangle's D is never read
      cpu_gemm::sgemm(false, true, n, n, p.k, p.alpha, p.a.data(), p.lda(), p.b.data(), p.ldb(), p.beta,
                      in_place.data(), n, true, cpu_gemm::Part::Symmetric);
      int64_t wrong = 0;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) {
          const int64_t upper = std::min(i, j) * n + std::max(i, j);
          wrong += symmetric[i * n + j] != whole[upper];
          wrong += onto_d[i * n + j] != whole_onto_d[upper];
          wrong += in_place[i * n + j] != whole_onto_d[upper];
        }
      EXPECT_EQ(wrong, 0);
    }
  set_num_threads(saved);
}

// The same with no depth: C = beta D, its upper triangle mirrored.
TEST_F(OwnSgemm, TheSymmetricPartOfAnEmptySumIsBetaDMirrored) {
  const int64_t n = 40;
  std::vector<float> d(n * n), c(n * n, std::numeric_limits<float>::quiet_NaN());
  for (int64_t i = 0; i < n * n; ++i) d[i] = static_cast<float>(i);
  cpu_gemm::sgemm(false, true, n, n, 0, 1.0f, nullptr, 1, nullptr, 1, 0.5f, c.data(), n, true,
                  cpu_gemm::Part::Symmetric, d.data(), n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) EXPECT_EQ(c[i * n + j], 0.5f * d[std::min(i, j) * n + std::max(i, j)]);
}

// Starting from another matrix D (sgemm's d) gives the bits of the product onto a C that holds D,
// without reading C (NaN there): D one row added to every row (ldd = 0, beta = 1: a linear layer's
// bias) or a whole matrix with its own padded rows (beta = -0.75), at the edges of the tiles and of
// the depth's blocks, both transposes, padded rows of C (whose padding it leaves alone), an empty
// depth, and on one thread or two (sharing C's columns at 64 x 300, its rows at 2000 x 65).
TEST_F(OwnSgemm, StartingFromAnotherMatrixMatchesTheProductOntoACopyOfIt) {
  struct Size {
    int64_t m, n, k;
  };
  const int saved = num_threads();
  unsigned seed = 80;
  for (const Size& s : std::vector<Size>{
           {1, 1, 1}, {13, 17, 257}, {25, 33, 600}, {241, 65, 40}, {64, 300, 260}, {2000, 65, 40}, {300, 200, 0}})
    for (int layout = 0; layout < 4; ++layout)
      for (const bool one_row : {true, false})
        for (const int threads : {1, 2}) {
          set_num_threads(threads);
          Problem p = make_problem(s.m, s.n, s.k, layout & 1, layout & 2, 1, -0.5f, one_row ? 1.0f : -0.75f, seed++);
          SCOPED_TRACE(std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k) + " layout " +
                       std::to_string(layout) + (one_row ? ", one row, " : ", a matrix, ") + std::to_string(threads) +
                       " threads");
          const int64_t ldd = one_row ? 0 : s.n + 3;
          std::vector<float> d(one_row ? s.n : s.m * ldd);
          std::mt19937 gen(seed);
          std::normal_distribution<float> normal;
          for (float& x : d) x = normal(gen);
          for (int64_t i = 0; i < s.m; ++i) std::copy_n(d.begin() + i * ldd, s.n, p.c.begin() + i * p.ldc());
          const std::vector<float> onto_copy = own_product(p, true);
          std::vector<float> c(p.c.size(), std::numeric_limits<float>::quiet_NaN());
          for (int64_t i = 0; i < s.m; ++i)
            for (int64_t j = s.n; j < p.ldc(); ++j) c[i * p.ldc() + j] = p.c[i * p.ldc() + j];
          cpu_gemm::sgemm(p.trans_a, p.trans_b, s.m, s.n, s.k, p.alpha, p.a.data(), p.lda(), p.b.data(), p.ldb(),
                          p.beta, c.data(), p.ldc(), true, cpu_gemm::Part::All, d.data(), ldd);
          EXPECT_EQ(c, onto_copy);
          expect_matches_float64(p, c, "own, starting from D");
        }
  set_num_threads(saved);
}

// A parallel region may get fewer threads than omp_get_max_threads() promised: under an
// OMP_THREAD_LIMIT below it (CTest runs these tests so too: unit.thread_limit) or with OMP_DYNAMIC.
// The product then still computes every tile, to the bits of one thread: whole products shared by
// columns (one across two blocks of columns) and by rows, and a symmetric one whose threads' columns
// meet inside a panel. (Sharing columns, the missing thread's range was left as it was.)
TEST_F(OwnSgemm, ATeamSmallerThanPlannedStillComputesEveryTile) {
  const int saved = num_threads();
  struct Case {
    int64_t m, n, k;
    cpu_gemm::Part part;
  };
  for (const Case& c : std::vector<Case>{{300, 200, 300, cpu_gemm::Part::All},
                                         {20, 4200, 60, cpu_gemm::Part::All},
                                         {4100, 90, 300, cpu_gemm::Part::All},
                                         {300, 300, 300, cpu_gemm::Part::Symmetric}}) {
    SCOPED_TRACE(std::to_string(c.m) + "x" + std::to_string(c.n) + "x" + std::to_string(c.k));
    Problem p = make_problem(c.m, c.n, c.k, false, true, 0, 1.0f, 0.0f, 90 + c.n);
    if (c.part == cpu_gemm::Part::Symmetric) p.b = p.a;
    set_num_threads(1);
    const std::vector<float> one = own_product(p, true, c.part);
    omp_set_num_threads(2);  // not set_num_threads, which keeps to the thread limit
    const std::vector<float> planned_for_two = own_product(p, true, c.part);
    EXPECT_EQ(planned_for_two, one);
    if (c.part == cpu_gemm::Part::All) expect_matches_float64(p, planned_for_two, "planned for two threads");
  }
  set_num_threads(saved);
}

// The thread count never exceeds OMP_THREAD_LIMIT, which a region could not give, and regions get
// that many threads even where OMP_DYNAMIC asked for teams sized by the load (CTest's
// unit.thread_limit sets both).
TEST(Threads, TheThreadCountKeepsToTheThreadLimitAndTeamsToTheThreadCount) {
  const int saved = num_threads();
  set_num_threads(3);
  EXPECT_EQ(num_threads(), std::min(3, omp_get_thread_limit()));
  EXPECT_FALSE(omp_get_dynamic());
  int team = 0;
#pragma omp parallel
  {
#pragma omp single
    team = omp_get_num_threads();
  }
  EXPECT_EQ(team, num_threads());
  set_num_threads(saved);
}

// Flushed, a product too small for a normal float is zero and a denormal input reads as zero, on
// every thread of a region; turned off, both are IEEE's again.
TEST(Threads, FlushingDenormalsReachesEveryThreadOfARegion) {
#if !defined(__x86_64__)
  GTEST_SKIP() << "flushing denormals is x86-64's MXCSR";
#endif
  const int saved = num_threads();
  set_num_threads(2);
  const auto on_every_thread = [](float (*compute)()) {
    std::vector<float> results(num_threads(), -1.0f);
#pragma omp parallel
    results[omp_get_thread_num()] = compute();
    results.push_back(compute());  // the calling thread
    return results;
  };
  // volatile: computed at run time, under the thread's MXCSR, not folded by the compiler.
  const auto underflow = [] {
    volatile float tiny = 1e-20f;
    return tiny * tiny;
  };
  const auto denormal_input = [] {
    volatile float denormal = 1e-40f;
    return denormal * 1e30f;
  };
  set_flush_denormals(true);
  for (float r : on_every_thread(underflow)) EXPECT_EQ(r, 0.0f);
  for (float r : on_every_thread(denormal_input)) EXPECT_EQ(r, 0.0f);
  set_flush_denormals(false);
  // 1e-40 is held to about five digits as a denormal.
  for (float r : on_every_thread(underflow)) EXPECT_NEAR(r * 1e30f, 1e-10f, 1e-14f);
  for (float r : on_every_thread(denormal_input)) EXPECT_NEAR(r, 1e-10f, 1e-14f);
  set_num_threads(saved);
}

// MUONLAB_CPU_CAPABILITY=default (set_cpu_capability) hands every product back to OpenBLAS.
TEST_F(OwnSgemm, TheDefaultCapabilityTurnsItOff) {
  set_cpu_capability(CpuCapability::Default);
  EXPECT_FALSE(cpu_gemm::own_sgemm_runs());
  set_cpu_capability(CpuCapability::Avx512);
  EXPECT_TRUE(cpu_gemm::own_sgemm_runs());
}

}  // namespace
}  // namespace ml
