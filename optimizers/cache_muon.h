// CacheMuon: Muon that reuses the last fresh Newton–Schulz transform while it still orthogonalizes.
#pragma once
#include "optimizers/matrix_optimizer.h"

namespace ml {

class CacheMuon;

// Muon's settings plus the cache's; members start at zero, the defaults are the table's.
struct CacheMuonSettings : MatrixOptimizerSettings, MomentumSettings, NewtonSchulzSettings {
  using Optimizer = CacheMuon;
  static constexpr const char* kind = "cache_muon";
  static const SettingList<CacheMuonSettings>& settings();
  double gamma{};
  int64_t k_max{};
};

class CacheMuon : public MatrixOptimizer {
 public:
  CacheMuon(std::vector<NamedParam> params, const CacheMuonSettings& settings);

  // cache_hit_rate (hits over all orthogonalizations), cache_hits, cache_misses (failed checks),
  // cache_forced_refreshes (k_max reached), cache_cold_solves (no cache yet), ortho_gflops (spent
  // so far), muon_gflops (what fresh Newton–Schulz every step would have spent), flops_ratio.
  std::map<std::string, double> metrics() const override;

 private:
  Tensor begin_update(size_t index, const Tensor& grad) override;
  // The cache test and, on a miss, the fresh solve: reads and writes the cache.
  Tensor orthogonalize(size_t index, const Tensor& input) override;
  void finish_update(size_t index, Tensor& weight, const Tensor& ortho) override;
  // The cache (transform, reference residual, age) and the hit counters are updated by
  // orthogonalize: sharing it out would leave them complete only on each matrix's owner. Every
  // rank keeps its own (identical) cache instead, so that a checkpoint holds it all.
  bool shards_orthogonalization() const override { return false; }
  NsSchedule schedule_;
  MomentumSettings momentum_;
  double gamma_;
  int64_t k_max_;
  struct Slot {
    Tensor momentum;
    Tensor transform;           // T, k x k (k = min(rows, cols))
    Tensor reference_residual;  // 0-d: the residual of the fresh result T was taken from
    int64_t* has_cache;
    int64_t* cache_age;         // hits since the last fresh solve
  };
  std::vector<Slot> slots_;
  int64_t& hits_;
  int64_t& misses_;
  int64_t& forced_refreshes_;
  int64_t& cold_solves_;
  int64_t& flops_spent_;
  int64_t& flops_muon_;
};

}  // namespace ml
