// How to spread one float32 matrix product over the CPU threads: the measurement behind
// split_rows_pays in framework/backends/cpu/cpu_linalg.cpp. For each shape it times
// cblas_sgemm on one thread, threaded by OpenBLAS itself, and split into one block of C's rows per
// thread (each a single-threaded call, as the backend does), and prints a Markdown table of
// medians. The three are timed in turn within each repetition, so that they share the machine's
// load. A measurement, not a test:
//   cmake --build build --target gemm_threads_probe && OMP_NUM_THREADS=2 build/bin/gemm_threads_probe
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

namespace {

// C [m, n] = op(A) [m, k] @ op(B) [k, n], with A or B stored transposed where the flag says so
// (a linear layer's forward is x @ W^T, its weight gradient g^T @ x).
struct Shape {
  const char* what;
  int m, n, k;
  bool a_transposed, b_transposed;
};

constexpr int kRowBlock = 16;  // the backend's block unit (kBlasTile)

void product(const Shape& s, const float* a, const float* b, float* c, int first_row, int rows) {
  const int lda = s.a_transposed ? s.m : s.k, ldb = s.b_transposed ? s.k : s.n;
  cblas_sgemm(CblasRowMajor, s.a_transposed ? CblasTrans : CblasNoTrans, s.b_transposed ? CblasTrans : CblasNoTrans,
              rows, s.n, s.k, 1.0f, a + static_cast<long>(first_row) * (s.a_transposed ? 1 : lda), lda, b, ldb, 0.0f,
              c + static_cast<long>(first_row) * s.n, s.n);
}

void split_by_rows(const Shape& s, const float* a, const float* b, float* c, int threads) {
  const int parts = std::min(threads, s.m / kRowBlock);
  const auto start = [&](int p) { return p == parts ? s.m : p * s.m / parts / kRowBlock * kRowBlock; };
#pragma omp parallel for num_threads(parts) schedule(static)
  for (int p = 0; p < parts; ++p) product(s, a, b, c, start(p), start(p + 1) - start(p));
}

double microseconds(void (*fn)(const Shape&, const float*, const float*, float*, int), const Shape& s,
                    const float* a, const float* b, float* c, int threads) {
  const auto begin = std::chrono::steady_clock::now();
  fn(s, a, b, c, threads);
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - begin).count();
}

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

}  // namespace

int main() {
  const std::vector<Shape> shapes{
      {"GPT qkv forward x @ W^T", 768, 384, 128, false, true},
      {"GPT MLP up forward", 768, 512, 128, false, true},
      {"GPT MLP down forward", 768, 128, 512, false, true},
      {"GPT attention out forward", 768, 128, 128, false, true},
      {"GPT head forward", 768, 65, 128, false, true},
      {"GPT MLP up input grad g @ W", 768, 128, 512, false, false},
      {"GPT MLP up weight grad g^T @ x", 512, 128, 768, true, false},
      {"GPT qkv weight grad", 384, 128, 768, true, false},
      {"GPT MLP down weight grad", 128, 512, 768, true, false},
      {"128^3", 128, 128, 128, false, false},
      {"256^3", 256, 256, 256, false, false},
      {"256 x 64 x 256", 256, 64, 256, false, false},
      {"Dion2 64 x 256 x 64", 64, 256, 64, false, false},
      {"Dion2 192 x 3072 x 192", 192, 3072, 192, false, false},
      {"NS 256 x 1024 x 256", 256, 1024, 256, false, false},
      {"NS 256 x 256 x 1024", 256, 256, 1024, false, true},
      {"NS 768^3", 768, 768, 768, false, false},
      {"NS 768 x 3072 x 768", 768, 3072, 768, false, false},
  };
  const int threads = omp_get_max_threads();
  std::vector<float> a(768 * 3072, 0.5f), b(768 * 3072, 0.25f), c(768 * 3072);
  std::printf("cblas_sgemm on %d threads; median microseconds, speed-up over one thread in brackets\n\n", threads);
  std::printf("| product | M x N x K | one thread | OpenBLAS's threads | blocks of rows |\n|---|---|---:|---:|---:|\n");
  for (const Shape& s : shapes) {
    const double multiply_adds = static_cast<double>(s.m) * s.n * s.k;
    const int repetitions = std::clamp(static_cast<int>(4e9 / multiply_adds), 20, 400);
    std::vector<double> one, openblas, rows;
    for (int r = 0; r < repetitions; ++r) {
      one.push_back(microseconds([](const Shape& s, const float* a, const float* b, float* c, int) {
        omp_set_num_threads(1);
        product(s, a, b, c, 0, s.m);
      }, s, a.data(), b.data(), c.data(), threads));
      openblas.push_back(microseconds([](const Shape& s, const float* a, const float* b, float* c, int t) {
        omp_set_num_threads(t);
        product(s, a, b, c, 0, s.m);
      }, s, a.data(), b.data(), c.data(), threads));
      rows.push_back(microseconds(split_by_rows, s, a.data(), b.data(), c.data(), threads));
    }
    const double t1 = median(one), tb = median(openblas), tr = median(rows);
    std::printf("| %s | %d x %d x %d | %.1f | %.1f (%.2fx) | %.1f (%.2fx) |\n", s.what, s.m, s.n, s.k, t1, tb, t1 / tb,
                tr, t1 / tr);
  }
  return 0;
}
