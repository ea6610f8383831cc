// CacheMuon — Dev, Bohara, Takáč & Horváth (2026). Momentum changes slowly, so the polar factors of
// successive steps are correlated: keep the left transform of the last fresh solve and reuse it
// while it still orthogonalizes the current momentum. Per matrix, on the small side S of U (U from
// Muon's momentum), with A = S S^T / (||S||_F + 1e-7)^2 the normalized Gram matrix:
//   fresh solve: Newton–Schulz as O = T X, X = S / (||S||_F + 1e-7), T a k x k polynomial
//                (cached, with the fresh result's residual r_ref = r(T A T^T));
//   later steps: D = T_cache X, whose Gram matrix is D D^T = T_cache A T_cache^T;
//                r(D) = ||D D^T - I||_F / sqrt(k);
//   hit if r(D) <= r_ref + gamma (use O = D), else a fresh solve; a fresh solve is forced after
//   k_max hits in a row. W <- W (1 - lr wd) - lr scale O, as in Muon.
// No author code is public. The threshold bounds the staleness on top of the fresh solver's own
// error r_ref (the paper's bound: fresh-solver error plus staleness); an absolute r(D) <= gamma
// would never hit with Keller's coefficients, whose fresh results have r of about 0.2-0.3 by design.
// The test reads D D^T through A, the Gram matrix every solve starts from: a miss hands A to the
// fresh solve, so a failed test costs only T A T^T (2 k^3 + 2 k^3), and D itself (2 k^2 l) is
// formed only on a hit.
#include "optimizers/cache_muon.h"

#include <cmath>
#include <stdexcept>

#include "framework/ops.h"

namespace ml {

namespace {

// ||D D^T - I||_F / sqrt(k) for D = T X, from T (k x k) and A = X X^T: T A T^T is D's Gram matrix.
Tensor orthogonality_residual(const Tensor& transform, const Tensor& normalized_gram) {
  Tensor gram = matmul(matmul(transform, normalized_gram), transform.t());
  Tensor diagonal = diagonal_view(gram);
  add_(diagonal, -1.0);
  return mul(norm(gram), 1.0 / std::sqrt(static_cast<double>(gram.size(0))));
}

int64_t as_count(double flops) { return static_cast<int64_t>(std::llround(flops)); }

}  // namespace

const SettingList<CacheMuonSettings>& CacheMuonSettings::settings() {
  using S = CacheMuonSettings;
  static const SettingList<S> settings = [] {
    SettingList<S> rows = muon_settings<S>(5, NsCoefficients::Keller);
    rows.push_back(number<S>("gamma", &S::gamma, greater_than(0), 0.1,
                             "a cached transform is reused while r(D) <= r_ref + gamma"));
    rows.push_back(integer<S>("k_max", &S::k_max, at_least(1), 10, "a fresh solve is forced after k_max hits in a row"));
    return rows;
  }();
  return settings;
}

CacheMuon::CacheMuon(std::vector<NamedParam> params, const CacheMuonSettings& settings)
    : MatrixOptimizer(CacheMuonSettings::kind, std::move(params), settings),
      schedule_(ns_schedule(settings)),
      momentum_(settings),
      gamma_(settings.gamma),
      k_max_(settings.k_max),
      hits_(add_counter("cache.hits")),
      misses_(add_counter("cache.misses")),
      forced_refreshes_(add_counter("cache.forced_refreshes")),
      cold_solves_(add_counter("cache.cold_solves")),
      flops_spent_(add_counter("cache.flops_spent")),
      flops_muon_(add_counter("cache.flops_muon")) {
  if (!(gamma_ >= 0.0)) throw std::invalid_argument("cache_muon: gamma must be >= 0, got " + std::to_string(gamma_));
  if (k_max_ < 1) throw std::invalid_argument("cache_muon: k_max must be >= 1, got " + std::to_string(k_max_));
  for (size_t i = 0; i < this->params().size(); ++i) {
    const std::string& name = this->params()[i].name;
    const Tensor& p = this->params()[i].param;
    const Shape shape = matrix_shape(i);
    const int64_t k = std::min(shape[0], shape[1]);
    slots_.push_back({add_matrix_buffer(i, "momentum"),
                      add_buffer(name, "cache_transform", zeros({k, k}, p.dtype(), p.device())),
                      add_buffer(name, "cache_reference_residual", zeros({}, p.dtype(), p.device())),
                      &add_counter(name + ".has_cache"), &add_counter(name + ".cache_age")});
  }
}

Tensor CacheMuon::begin_update(size_t index, const Tensor& grad) {
  return lerp_momentum(slots_[index].momentum, grad, momentum_.momentum, momentum_.nesterov);
}

Tensor CacheMuon::orthogonalize(size_t index, const Tensor& update) {
  Slot& slot = slots_[index];
  const Shape shape = matrix_shape(index);
  const int64_t rows = shape[0], cols = shape[1];
  const double k = static_cast<double>(std::min(rows, cols)), l = static_cast<double>(std::max(rows, cols));
  const int64_t steps = static_cast<int64_t>(schedule_.triples.size());
  flops_muon_ += as_count(newton_schulz_flops(rows, cols, steps));

  const Tensor raw_gram = small_side_gram(update);
  const Tensor inv_norm = inverse_norm_of_gram(raw_gram, schedule_);
  const Tensor normalized_gram = mul(raw_gram, mul(inv_norm, inv_norm));
  flops_spent_ += as_count(2.0 * k * k * l);
  const double residual_flops = 4.0 * k * k * k;  // T A, then (T A) T^T

  Tensor ortho;  // on the small side
  if (*slot.has_cache && *slot.cache_age < k_max_) {
    flops_spent_ += as_count(residual_flops);
    // The one value this step reads back from the device: the hit test decides whether the
    // expensive fresh solve runs at all, a branch the host has to take.
    const double staleness =
        sub(orthogonality_residual(slot.transform, normalized_gram), slot.reference_residual).item();
    if (staleness <= gamma_) {
      ortho = matmul(mul(slot.transform, inv_norm), small_side(update));
      flops_spent_ += as_count(2.0 * k * k * l);
      ++*slot.cache_age;
      ++hits_;
    } else {
      ++misses_;
    }
  } else {
    ++(*slot.has_cache ? forced_refreshes_ : cold_solves_);
  }
  if (!ortho.defined()) {
    NsTransformResult fresh = newton_schulz_with_transform(update, schedule_, raw_gram);
    ortho = small_side(fresh.result);
    copy_(slot.transform, fresh.transform);
    copy_(slot.reference_residual, orthogonality_residual(slot.transform, normalized_gram));
    *slot.has_cache = 1;
    *slot.cache_age = 0;
    flops_spent_ += as_count(newton_schulz_flops(rows, cols, steps, true, true) + residual_flops);
  }

  return rows > cols ? ortho.t() : ortho;
}

void CacheMuon::finish_update(size_t, Tensor& weight, const Tensor& ortho) {
  const double scale = scale_of(weight.size(0), weight.size(1));
  decay_weight(weight);
  add_(weight, ortho, -lr() * scale);
}

std::map<std::string, double> CacheMuon::metrics() const {
  const double total = static_cast<double>(hits_ + misses_ + forced_refreshes_ + cold_solves_);
  return {{"cache_hit_rate", total > 0 ? static_cast<double>(hits_) / total : 0.0},
          {"cache_hits", static_cast<double>(hits_)},
          {"cache_misses", static_cast<double>(misses_)},
          {"cache_forced_refreshes", static_cast<double>(forced_refreshes_)},
          {"cache_cold_solves", static_cast<double>(cold_solves_)},
          {"ortho_gflops", static_cast<double>(flops_spent_) * 1e-9},
          {"muon_gflops", static_cast<double>(flops_muon_) * 1e-9},
          {"flops_ratio", flops_muon_ > 0 ? static_cast<double>(flops_spent_) / static_cast<double>(flops_muon_) : 0.0}};
}

}  // namespace ml
