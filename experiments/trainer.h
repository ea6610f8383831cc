// The YAML-driven training loop behind `muonlab train`. Its evaluation (and `muonlab eval`) is in
// experiments/evaluation.h; the run directory's files, checks and loop state in experiments/run_dir.h.
//
// A run directory holds: config.yaml (the resolved config), metrics.jsonl (one JSON object per
// logged step and per evaluation), summary.json (written when the run completes, with "status":
// "completed", or when a signal stops it, with "status": "interrupted") and the checkpoints (see experiments/checkpoint.h): model.safetensors, optimizer.safetensors,
// trainer.json (step, clocks, generator state, best values) and, for character-level text,
// vocab.txt. Training batch k is a pure function of (seed, k) and every other piece of state is
// in the checkpoint, so a resumed run reproduces the uninterrupted one bit for bit on the same
// thread count. A process holds an exclusive lock on the run directory while it trains into it
// (experiments/run_lock.h): a second one fails at once.
#pragma once
#include <cstdint>
#include <iosfwd>
#include <stdexcept>
#include <string>
#include <vector>

#include "experiments/config.h"
#include "framework/distributed/communicator.h"
#include "framework/io/json.h"
#include "framework/nn/module.h"
#include "optimizers/optimizer.h"

namespace ml {

// The run diverged: a non-finite loss, gradient, parameter, buffer or optimizer state, or a
// training loss beyond train.max_loss_ratio times the first step's. The message names the step
// and the tensor (or the loss) and the last good checkpoint, which was left untouched; no
// checkpoint ever holds a non-finite value.
class TrainingDiverged : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// SIGINT or SIGTERM stopped the run after the step in progress: a checkpoint of that step and a
// summary.json with "status": "interrupted" were written, so --resume continues it exactly.
class TrainingInterrupted : public std::runtime_error {
 public:
  TrainingInterrupted(const std::string& message, int signal_number)
      : std::runtime_error(message), signal_number_(signal_number) {}
  int signal_number() const { return signal_number_; }

 private:
  int signal_number_;
};

struct TrainOptions {
  std::string out_dir;     // "" -> runs/<name>-<YYYYmmdd-HHMMSS> under the working directory
  std::string resume_dir;  // continue the run saved there (then out_dir must be "" or the same)
  bool quiet = false;      // no progress output
  std::ostream* progress = nullptr;  // where progress goes; null -> std::cerr
  // Stop after this many steps of this session (with a checkpoint), leaving the run resumable;
  // 0 runs to the end.
  int64_t max_session_steps = 0;
  // The ranks of a data-parallel job (`mpirun -np N`), each running train() with the same config:
  // data.batch_size is the global batch and must be a multiple of N; rank r trains on part r of
  // every batch, gradients are summed over the ranks, and rank 0 alone holds the run directory's
  // lock and writes metrics, checkpoints and the summary. null: this process alone.
  Communicator* communicator = nullptr;
};

struct TrainResult {
  std::string run_dir;
  bool completed = false;  // false when stopped early by max_session_steps
  Json summary;            // summary.json's contents (only when completed)
};

// Trains `config` (already validated). While it trains, SIGINT and SIGTERM stop it after the
// step in progress (a second signal acts as usual) and it throws TrainingInterrupted. Everything that can fail for reasons of the config or the
// data (missing files, shapes that do not fit, a resume directory whose run differs) fails
// before the run directory is created or modified. Throws TrainingDiverged as described above.
TrainResult train(const RunConfig& config, const TrainOptions& options = {});

// The model's trainable parameters with their dotted names, as the optimizers take them. Frozen
// parameters (requires_grad false, e.g. the CNN's whitening filters) are left out: no optimizer
// state, no update, no weight decay.
std::vector<NamedParam> optimizer_params(const Module& model);

// The learning-rate multiplier for the (0-based) step about to be taken: linear warmup over
// warmup_steps, then the decay down to min_lr_ratio at the end of the run.
double lr_scale_at(const ScheduleConfig& schedule, int64_t step, int64_t total_steps);

}  // namespace ml
