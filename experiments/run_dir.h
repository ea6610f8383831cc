// A run directory (experiments/trainer.h describes what it holds): the names of its files, the
// checks before a run starts or resumes in one, and the loop state a checkpoint records besides
// the model and the optimizer.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "experiments/config.h"
#include "experiments/evaluation.h"
#include "framework/io/json.h"
#include "optimizers/optimizer.h"

namespace ml {

// The files of a run directory and of each of its checkpoints.
inline constexpr const char* kModelFile = "model.safetensors";
inline constexpr const char* kOptimizerFile = "optimizer.safetensors";
inline constexpr const char* kTrainerFile = "trainer.json";
inline constexpr const char* kVocabFile = "vocab.txt";
inline constexpr const char* kConfigFile = "config.yaml";
inline constexpr const char* kMetricsFile = "metrics.jsonl";
inline constexpr const char* kSummaryFile = "summary.json";

// Throws when `out_dir` already holds a run (metrics or checkpoints): a new run starts elsewhere.
void check_holds_no_run(const std::string& out_dir);

// Throws when `given` differs from the config saved in `run_dir` in a key that a resume may not
// change, naming the first difference.
void check_same_run(const RunConfig& given, const std::string& run_dir);

// Drops the metrics lines logged after `step` (from a session that died after its last checkpoint).
void truncate_metrics(const std::string& path, int64_t step);

// "<parent>/<name>-<YYYYmmdd-HHMMSS>", with "-2", "-3", ... appended when that already exists.
std::string new_run_dir(const std::string& parent, const std::string& name);

// Whether the run in `run_dir` finished: its summary.json exists and is not marked interrupted.
bool run_completed(const std::string& run_dir);

// The state of the loop that is not in the model or the optimizer.
struct LoopState {
  int64_t step = 0;  // optimizer steps done
  double elapsed_s = 0.0;
  double optimizer_s = 0.0;
  double eval_s = 0.0;  // of elapsed_s, the time spent evaluating
  int64_t samples = 0;
  int64_t threads = 0;  // of the session that wrote the checkpoint: reductions sum in a per-thread-count order
  uint64_t dropout_seed = 0;
  uint64_t dropout_offset = 0;
  // Train losses of the steps since the last metrics line (their mean is what gets logged).
  double window_loss_sum = 0.0;
  int64_t window_steps = 0;
  double last_train_loss = 0.0;
  std::optional<double> first_loss;  // of the run's first step: the yardstick of train.max_loss_ratio
  std::optional<EvalResult> last_eval;
  std::optional<double> best_val_loss;
  std::optional<double> best_val_acc;

  Json to_json() const;
  static LoopState from_json(const Json& json);
};

// A checkpoint's trainer.json, with errors naming it: one that passes its checksum may still be
// damaged (written before checksums, or edited together with the manifest).
LoopState read_loop_state(const std::string& path);

// A checkpoint's optimizer.safetensors, as Optimizer::load_state_dict takes it.
StateDict read_optimizer_state(const std::string& path);

}  // namespace ml
