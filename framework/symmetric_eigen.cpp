#include "framework/symmetric_eigen.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace ml {

namespace {

// Householder reduction of the symmetric `a` (destroyed) to tridiagonal T = Q^T A Q with diagonal
// d and off-diagonal e (e[i] couples i and i+1, e[n-1] = 0). Returns Q^T row-major.
std::vector<double> tridiagonalize(std::vector<double>& a, int64_t n, std::vector<double>& d, std::vector<double>& e) {
  auto at = [&](int64_t i, int64_t j) -> double& { return a[static_cast<size_t>(i * n + j)]; };
  std::vector<std::vector<double>> reflectors(static_cast<size_t>(std::max<int64_t>(n - 2, 0)));
  for (int64_t j = 0; j + 2 < n; ++j) {
    const int64_t len = n - j - 1;
    std::vector<double> v(static_cast<size_t>(len));
    for (int64_t i = 0; i < len; ++i) v[i] = at(j + 1 + i, j);
    const double norm_x = std::sqrt(std::inner_product(v.begin(), v.end(), v.begin(), 0.0));
    if (norm_x == 0.0) continue;
    // H = I - 2 v v^T maps the column below the diagonal to alpha e1; the sign avoids cancellation.
    const double alpha = v[0] > 0 ? -norm_x : norm_x;
    v[0] -= alpha;
    const double norm_v = std::sqrt(std::inner_product(v.begin(), v.end(), v.begin(), 0.0));
    for (double& x : v) x /= norm_v;
    // B <- H B H = B - 2 (v q^T + q v^T) with p = B v, q = p - (v^T p) v.
    std::vector<double> q(static_cast<size_t>(len), 0.0);
    for (int64_t r = 0; r < len; ++r) {
      const double* row = &at(j + 1 + r, j + 1);
      q[r] = std::inner_product(row, row + len, v.begin(), 0.0);
    }
    const double vp = std::inner_product(v.begin(), v.end(), q.begin(), 0.0);
    for (int64_t i = 0; i < len; ++i) q[i] -= vp * v[i];
    for (int64_t r = 0; r < len; ++r) {
      double* row = &at(j + 1 + r, j + 1);
      const double vr = 2.0 * v[r], qr = 2.0 * q[r];
      for (int64_t c = 0; c < len; ++c) row[c] -= vr * q[c] + qr * v[c];
    }
    for (int64_t i = 0; i < len; ++i) at(j + 1 + i, j) = at(j, j + 1 + i) = i == 0 ? alpha : 0.0;
    reflectors[static_cast<size_t>(j)] = std::move(v);
  }
  d.assign(static_cast<size_t>(n), 0.0);
  e.assign(static_cast<size_t>(n), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    d[i] = at(i, i);
    if (i + 1 < n) e[i] = at(i + 1, i);
  }
  // Q = H_0 H_1 ... H_{n-3}, accumulated from the right end: H_j only touches rows and columns > j.
  std::vector<double> q_mat(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) q_mat[i * n + i] = 1.0;
  std::vector<double> w(static_cast<size_t>(n));
  for (int64_t j = n - 3; j >= 0; --j) {
    const std::vector<double>& v = reflectors[static_cast<size_t>(j)];
    if (v.empty()) continue;
    const int64_t first = j + 1;
    std::fill(w.begin(), w.end(), 0.0);
    for (int64_t r = first; r < n; ++r)
      for (int64_t c = first; c < n; ++c) w[c] += v[r - first] * q_mat[r * n + c];
    for (int64_t r = first; r < n; ++r)
      for (int64_t c = first; c < n; ++c) q_mat[r * n + c] -= 2.0 * v[r - first] * w[c];
  }
  std::vector<double> q_t(static_cast<size_t>(n * n));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < n; ++c) q_t[c * n + r] = q_mat[r * n + c];
  return q_t;
}

// Implicit QL with Wilkinson shifts on the tridiagonal (d, e); each Givens rotation of columns
// (i, i+1) of the eigenvector matrix is a rotation of rows (i, i+1) of its transpose `z_t`.
void tridiagonal_ql(std::vector<double>& d, std::vector<double>& e, std::vector<double>& z_t, int64_t n) {
  auto rotate_rows = [&](int64_t i, double c, double s) {
    double* lo = &z_t[static_cast<size_t>(i * n)];
    double* hi = lo + n;
    for (int64_t k = 0; k < n; ++k) {
      const double f = hi[k];
      hi[k] = s * lo[k] + c * f;
      lo[k] = c * lo[k] - s * f;
    }
  };
  for (int64_t l = 0; l < n; ++l) {
    for (int iteration = 0;; ++iteration) {
      int64_t m = l;
      while (m + 1 < n && std::abs(e[m]) > DBL_EPSILON * (std::abs(d[m]) + std::abs(d[m + 1]))) ++m;
      if (m == l) break;
      if (iteration == 100) throw std::runtime_error("exact_polar: the QL eigenvalue iteration did not converge");
      double g = (d[l + 1] - d[l]) / (2.0 * e[l]);
      double r = std::hypot(g, 1.0);
      g = d[m] - d[l] + e[l] / (g + std::copysign(r, g));
      double s = 1.0, c = 1.0, p = 0.0;
      bool deflated = false;
      for (int64_t i = m - 1; i >= l; --i) {
        const double f = s * e[i], b = c * e[i];
        r = std::hypot(f, g);
        e[i + 1] = r;
        if (r == 0.0) {  // an off-diagonal underflowed: the matrix splits here
          d[i + 1] -= p;
          e[m] = 0.0;
          deflated = true;
          break;
        }
        s = f / r;
        c = g / r;
        g = d[i + 1] - p;
        r = (d[i] - g) * s + 2.0 * c * b;
        p = s * r;
        d[i + 1] = g + p;
        g = c * r - b;
        rotate_rows(i, c, s);
      }
      if (deflated) continue;
      d[l] -= p;
      e[l] = g;
      e[m] = 0.0;
    }
  }
}

}  // namespace

SymmetricEigen symmetric_eigen(std::vector<double> matrix, int64_t n) {
  if (static_cast<int64_t>(matrix.size()) != n * n)
    throw std::invalid_argument("symmetric_eigen: expected " + std::to_string(n * n) + " values, got " +
                                std::to_string(matrix.size()));
  std::vector<double> d, e;
  std::vector<double> z_t = tridiagonalize(matrix, n, d, e);
  tridiagonal_ql(d, e, z_t, n);
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return d[a] < d[b]; });
  SymmetricEigen out;
  out.values.resize(static_cast<size_t>(n));
  out.vectors.resize(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i) {
    out.values[i] = d[order[i]];
    std::copy_n(&z_t[static_cast<size_t>(order[i] * n)], n, &out.vectors[static_cast<size_t>(i * n)]);
  }
  return out;
}

}  // namespace ml
