#include "experiments/trainer.h"

#include <malloc.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <vector>

#include "datasets/image_batcher.h"
#include "datasets/prefetch.h"
#include "experiments/checkpoint.h"
#include "experiments/evaluation.h"
#include "experiments/host.h"
#include "experiments/progress.h"
#include "experiments/run_data.h"
#include "experiments/run_device.h"
#include "experiments/run_dir.h"
#include "experiments/run_lock.h"
#include "framework/backend.h"
#include "framework/backends/cpu/cpu_backend.h"
#include "framework/distributed/data_parallel.h"
#include "framework/io/atomic_file.h"
#include "framework/io/safetensors.h"
#include "framework/nn/serialize.h"
#include "framework/ops.h"
#include "framework/parallel.h"
#include "optimizers/factory.h"

namespace ml {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;

// Dropout draws from the default generator; its seed is derived from the run's seed so that the
// masks are not correlated with the initial weights (which are drawn from the seed itself).
constexpr uint64_t kDropoutSeedSalt = 0xd50b0a7d5eedULL;

// The dropout stream of `rank`: rank 0 keeps the run's (the one its checkpoints record); every
// other rank of a data-parallel job draws from its own, else each slice would get rank 0's masks.
uint64_t dropout_seed_of_rank(uint64_t run_seed, int rank) {
  return rank == 0 ? run_seed : mix64(run_seed + static_cast<uint64_t>(rank));
}

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// The most memory resident since the last start_peak_rss() (ru_maxrss follows the kernel's
// high-water mark, which that resets).
double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

// Starts a run's count of peak memory, so that a run which follows others in one process (a
// sweep's points) reports its own: the CPU cache's freed blocks and the heap's free pages go back
// to the system, and the high-water mark restarts from what is resident now. Without it a sweep's
// later points reported the process's peak so far, the earlier points' cached blocks included (the
// study's 6-layer GPT: 697 MB for the first point, 1332-1496 MB for the next fifteen). False where
// the kernel refused.
bool start_peak_rss() {
  cpu_release_cached_memory();
  malloc_trim(0);
  std::ofstream clear_refs("/proc/self/clear_refs");
  clear_refs << "5";  // 5: reset the peak resident set size (proc(5))
  clear_refs.close();
  return static_cast<bool>(clear_refs);
}

// The signal that asked the running training loop to stop (0: none).
volatile std::sig_atomic_t stop_signal = 0;

void request_stop(int signal_number) { stop_signal = signal_number; }

// While a training loop runs, SIGINT and SIGTERM ask it to stop after the step in progress instead
// of killing the process. SA_RESETHAND restores the default at the first signal, so a second
// Ctrl-C still stops a run that is slow to reach the end of its step.
class StopSignalScope {
 public:
  StopSignalScope() {
    stop_signal = 0;
    struct sigaction action {};
    action.sa_handler = request_stop;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESETHAND;
    sigaction(SIGINT, &action, &previous_int_);
    sigaction(SIGTERM, &action, &previous_term_);
  }
  ~StopSignalScope() {
    sigaction(SIGINT, &previous_int_, nullptr);
    sigaction(SIGTERM, &previous_term_, nullptr);
  }
  StopSignalScope(const StopSignalScope&) = delete;
  StopSignalScope& operator=(const StopSignalScope&) = delete;

 private:
  struct sigaction previous_int_ {}, previous_term_ {};
};

// Models that initialize from the data (the CNN's whitening stem) get the first training images,
// normalized and not augmented, as airbench94_muon.py's init_whiten gets train_images[:5000].
void initialize_from_data(Model& model, const Batcher& batcher) {
  const int64_t count = model.init_examples();
  if (count == 0) return;
  const auto* images = dynamic_cast<const ImageBatcher*>(&batcher);
  if (!images) throw std::invalid_argument("model: a data-dependent initialization needs an image dataset");
  const HostBatch sample = images->train_examples(count);
  model.init_from_data(Tensor::from_vector(sample.inputs, sample.input_shape));
}

// sqrt of the sum of squared gradient entries over all parameters, in double.
double global_grad_norm(const std::vector<Tensor>& params) {
  double sum_squares = 0.0;
  for (const Tensor& param : params) {
    const Tensor grad = param.grad();
    if (!grad.defined()) continue;
    const double norm_value = norm(grad).item();
    sum_squares += norm_value * norm_value;
  }
  return std::sqrt(sum_squares);
}

// The name of the first floating-point tensor holding a NaN or an infinity, or "" when all are
// finite. x * 0 is 0 for every finite x and NaN otherwise, so the sum is exact (no overflow of
// large finite values) and non-finite only when an entry is.
template <typename Named>
std::string first_non_finite(const Named& tensors) {
  NoGradGuard no_grad;
  for (const auto& [name, tensor] : tensors)
    if (tensor.defined() && is_floating(tensor.dtype()) && tensor.numel() > 0 &&
        !std::isfinite(sum(mul(tensor, 0.0)).item()))
      return name;
  return "";
}

std::string non_finite_text(double value) { return std::isnan(value) ? "NaN" : value > 0 ? "+inf" : "-inf"; }

void scale_grads(const std::vector<Tensor>& params, double factor) {
  NoGradGuard no_grad;
  for (const Tensor& param : params) {
    Tensor grad = param.grad();
    if (grad.defined()) mul_(grad, factor);
  }
}

// Optimizer steps of the run: train.steps, or train.epochs passes over the training data.
int64_t total_steps_of(const RunConfig& config, const Batcher& batcher) {
  if (config.train.steps > 0) return config.train.steps;
  const int64_t steps_per_epoch = batcher.steps_per_epoch() / config.train.grad_accum;
  if (steps_per_epoch == 0)
    fail_config_key(config, "train.grad_accum", std::to_string(config.train.grad_accum) + " is more than the " +
                                                    std::to_string(batcher.steps_per_epoch()) +
                                                    " batches of one epoch");
  return config.train.epochs * steps_per_epoch;
}

class Trainer {
 public:
  Trainer(const RunConfig& config, const TrainOptions& options)
      : config_(config),
        options_(options),
        comm_(options.communicator ? *options.communicator : alone_),
        threads_(config.threads) {}

  TrainResult run() {
    peak_rss_is_the_runs_ = start_peak_rss();
    prepare();  // everything that can fail on the config or the data, before touching files
    open_run_dir();
    return loop();
  }

 private:
  void prepare() {
    device_ = run_device(config_);
    std::optional<CheckpointRef> checkpoint;
    std::optional<CharVocab> stored_vocab;
    if (!options_.resume_dir.empty()) {
      if (!options_.out_dir.empty() && fs::path(options_.out_dir) != fs::path(options_.resume_dir))
        throw std::runtime_error("--resume " + options_.resume_dir + " continues that run in place; --out " +
                                 options_.out_dir + " cannot differ");
      check_same_run(config_, options_.resume_dir);
      // Before reading the checkpoint: another process may be writing the next one. Rank 0 holds
      // the lock for the whole job; the other ranks read under it.
      if (writer()) lock_.emplace(options_.resume_dir);
      comm_.barrier();
      std::vector<std::string> rejected;
      checkpoint = newest_valid_checkpoint(options_.resume_dir, rejected);
      std::string reasons;
      for (const std::string& reason : rejected) reasons += "\n  " + reason;
      if (!checkpoint)
        throw std::runtime_error("--resume " + options_.resume_dir +
                                 (rejected.empty() ? ": the run has no checkpoint yet" : ": no valid checkpoint:" + reasons));
      if (!rejected.empty())
        fallback_warning_ = "warning: skipped the newer, corrupt checkpoints of " + options_.resume_dir + ":" + reasons +
                            "\nresuming from the newest valid one, " + checkpoint->dir + " (step " +
                            std::to_string(checkpoint->step) + ")\n";
      if (fs::exists(checkpoint->file(kVocabFile))) stored_vocab = CharVocab::load(checkpoint->file(kVocabFile));
    }
    data_ = load_run_data(config_, stored_vocab);
    if (config_.data.batch_size % comm_.size() != 0)
      fail_config_key(config_, "data.batch_size",
                      std::to_string(config_.data.batch_size) + " is the global batch, split over the job's " +
                          std::to_string(comm_.size()) + " ranks: it must be a multiple of " +
                          std::to_string(comm_.size()));
    total_steps_ = total_steps_of(config_, *data_.batcher);
    if (config_.schedule.warmup_steps > total_steps_)
      fail_config_key(config_, "schedule.warmup_steps",
                      std::to_string(config_.schedule.warmup_steps) + " is longer than the run's " +
                          std::to_string(total_steps_) + " steps: the learning rate would never reach optimizer.lr");
    model_ = make_model(config_.model, {data_.example_shape, data_.num_classes, data_.vocab_size},
                        static_cast<uint64_t>(config_.seed));
    if (!checkpoint) initialize_from_data(*model_, *data_.batcher);  // a resumed run loads the result
    model_->to(device_);
    params_ = model_->parameters();
    optimizer_ = make_optimizer(config_.optimizer, optimizer_params(*model_), static_cast<uint64_t>(config_.seed));
    optimizer_->set_communicator(&comm_);

    state_.dropout_seed = mix64(static_cast<uint64_t>(config_.seed) ^ kDropoutSeedSalt);
    if (checkpoint) {
      load_weights(*model_, checkpoint->file(kModelFile));
      optimizer_->load_state_dict(read_optimizer_state(checkpoint->file(kOptimizerFile)));
      state_ = read_loop_state(checkpoint->file(kTrainerFile));
      if (state_.step > total_steps_)
        throw std::runtime_error("--resume " + options_.resume_dir + ": the checkpoint is at step " +
                                 std::to_string(state_.step) + ", past the run's " + std::to_string(total_steps_) +
                                 " steps");
      last_checkpoint_ = checkpoint;
    }
    default_generator().set_state(dropout_seed_of_rank(state_.dropout_seed, comm_.rank()), state_.dropout_offset);
  }

  // Rank 0 alone writes into the run directory (metrics, checkpoints, the summary) and holds its
  // lock; the other ranks only learn its name, for their messages.
  void open_run_dir() {
    if (!options_.resume_dir.empty()) {
      run_dir_ = options_.resume_dir;
      if (writer()) truncate_metrics(run_dir_ + "/" + kMetricsFile, state_.step);
    } else if (writer()) {
      run_dir_ = options_.out_dir.empty() ? new_run_dir("runs", config_.name) : options_.out_dir;
      fs::create_directories(run_dir_);
      lock_.emplace(run_dir_);
      check_holds_no_run(run_dir_);  // under the lock: no other process can be starting a run here now
    }
    run_dir_ = comm_.broadcast_text(run_dir_, 0);  // a new one is named after rank 0's clock
    if (!writer()) return;
    write_file_atomic(run_dir_ + "/" + kConfigFile, to_yaml(config_));
    metrics_.open(run_dir_ + "/" + kMetricsFile, std::ios::app);
    if (!metrics_) throw std::runtime_error(run_dir_ + "/" + kMetricsFile + ": cannot open for writing");
  }

  TrainResult loop() {
    const int64_t accum = config_.train.grad_accum;
    const int64_t first_step = state_.step;
    const int64_t end_step = options_.max_session_steps > 0
                                 ? std::min(total_steps_, first_step + options_.max_session_steps)
                                 : total_steps_;
    std::ostream& out = options_.progress ? *options_.progress : std::cerr;
    if (writer()) out << fallback_warning_;  // even when quiet: the run continues from an older state than asked
    if (writer() && !peak_rss_is_the_runs_)
      out << "warning: /proc/self/clear_refs could not be written: peak_rss_mb is this process's peak since it "
             "started, earlier runs in it included\n";
    ProgressReporter progress(out, progress_style(), first_step, total_steps_, config_.train.log_every);
    announce_session(progress, first_step);

    const Clock::time_point session_start = Clock::now();
    const double elapsed_before = state_.elapsed_s;
    const int64_t samples_before = state_.samples;
    Clock::time_point window_start = session_start;
    int64_t window_samples = 0;
    const auto loader = train_loader(*data_.batcher, first_step * accum, end_step * accum,
                                     static_cast<int>(config_.data.workers_prefetch));
    model_->train();
    const StopSignalScope stop_signals;
    last_checkpoint_time_ = session_start;
    window_comm_ = comm_.stats();
    while (state_.step < end_step) {
      const StepResult step = train_step(*loader);
      state_.step += 1;
      state_.samples += step.samples;
      state_.optimizer_s += step.optimizer_s;
      state_.last_train_loss = step.loss;
      state_.window_loss_sum += state_.last_train_loss;
      state_.window_steps += 1;
      state_.elapsed_s = elapsed_before + seconds_since(session_start);
      window_samples += step.samples;
      const double session_s = seconds_since(session_start);
      // The mean since the last metrics line: at a logging step, the value the line records.
      progress.step({state_.step, state_.window_loss_sum / static_cast<double>(state_.window_steps),
                     optimizer_->base_lr() * optimizer_->lr_scale(),
                     session_s > 0 ? static_cast<double>(state_.samples - samples_before) / session_s : 0.0});

      const bool last = state_.step == total_steps_;
      const bool log_now = every(config_.train.log_every) || last;
      const bool eval_now = every(config_.train.eval_every) || last;
      const bool checkpoint_now =
          every(config_.train.checkpoint_every) || last || state_.step == end_step || checkpoint_due();
      // The loss and the gradient norm are checked every step (train_step). Parameters and buffers
      // (BatchNorm's running statistics can overflow while the loss stays finite) would need a
      // pass over every tensor, so they are checked where a non-finite value would do harm or be
      // recorded: before a metrics line, an evaluation or a checkpoint. That bounds how late a
      // divergence shows to train.log_every steps for the cost of one pass per log line.
      if (log_now || eval_now || checkpoint_now) check_model_is_finite();
      if (log_now) {
        const double window_s = seconds_since(window_start);
        log_train_line(window_s > 0 ? static_cast<double>(window_samples) / window_s : 0.0);
        window_start = Clock::now();
        window_samples = 0;
      }
      if (eval_now) run_eval(progress);
      if (checkpoint_now) save_checkpoint(progress);
      const int stop = agreed_stop_signal();
      if (stop != 0 && state_.step < total_steps_) interrupted(progress, stop);
    }
    progress.finish();
    return session_result();
  }

  // What one optimizer step leaves for the loop to record.
  struct StepResult {
    double loss = 0.0;         // the mean training loss of the step's batches, over all ranks
    int64_t samples = 0;       // examples in the step's global batches
    double optimizer_s = 0.0;  // the wall-clock of the optimizer's update
  };

  // The optimizer step after state_.step: train.grad_accum batches from `loader`, forward and
  // backward on this rank's part of each, the gradients summed over the ranks, checked and
  // clipped, then the update. A non-finite loss or gradient, or a loss beyond
  // train.max_loss_ratio, stops the run (diverged).
  StepResult train_step(PrefetchLoader& loader) {
    const int64_t step = state_.step;
    const int64_t accum = config_.train.grad_accum;
    optimizer_->set_lr_scale(lr_scale_at(config_.schedule, step, total_steps_));
    optimizer_->zero_grad();
    model_->begin_training_step(epoch());
    StepResult result;
    double loss_sum = 0.0;
    for (int64_t micro = 0; micro < accum; ++micro) {
      // Each rank trains on its part of the global batch; its loss counts with its share of the
      // examples, so that the gradients summed over ranks are the global batch's (share 1 alone).
      const HostBatch global_batch = loader.next();
      const HostBatch batch = batch_part(global_batch, comm_.rank(), comm_.size());
      const double share = static_cast<double>(batch.size()) / static_cast<double>(global_batch.size());
      result.samples += global_batch.size();
      if (batch.size() == 0) continue;  // a short last batch of an epoch left this rank nothing
      const auto [inputs, targets] = batch_tensors(batch, device_);
      const Tensor loss = cross_entropy(model_->forward(inputs), targets, -100, config_.train.label_smoothing);
      const double loss_value = loss.item();
      if (!std::isfinite(loss_value)) diverged("non-finite training loss (" + non_finite_text(loss_value) + ")", step + 1);
      const double loss_weight = share / static_cast<double>(accum);
      (loss_weight != 1.0 ? loss * loss_weight : loss).backward();
      loss_sum += share * loss_value;
    }
    reduce_gradients(comm_, params_);
    loss_sum = all_reduce_values(comm_, {loss_sum}).front();
    result.loss = loss_sum / static_cast<double>(accum);
    check_loss_bound(result.loss, step + 1);
    // The gradient norm, computed every step anyway, checks every gradient at once.
    const double grad_norm = global_grad_norm(params_);
    if (!std::isfinite(grad_norm))
      diverged("non-finite gradient norm (" + non_finite_text(grad_norm) + "; first in the gradient of " +
                   first_non_finite(named_gradients()) + ")",
               step + 1);
    if (config_.train.grad_clip > 0 && grad_norm > config_.train.grad_clip)
      scale_grads(params_, config_.train.grad_clip / (grad_norm + 1e-6));
    // Device work is asynchronous: drain the queue around the step so that its time is its own.
    Backend& backend = backend_for(device_);
    backend.synchronize();
    const Clock::time_point optimizer_start = Clock::now();
    optimizer_->step();
    backend.synchronize();
    result.optimizer_s = seconds_since(optimizer_start);
    broadcast_buffers();
    return result;
  }

  ProgressStyle progress_style() const {
    // A stream handed in (tests, the demo) is not a terminal.
    const bool quiet = options_.quiet || !writer();  // the ranks of a job report through rank 0
    return options_.progress ? (quiet ? ProgressStyle::Quiet : ProgressStyle::Lines)
                             : choose_progress_style(quiet, fileno(stderr));
  }

  // What the session trains, from where, into which run directory.
  void announce_session(ProgressReporter& progress, int64_t first_step) {
    if (first_step > 0 && state_.threads != num_threads())
      progress.note("note: the checkpoint was written with " + std::to_string(state_.threads) + " threads, this session uses " +
                    std::to_string(num_threads()) + "; the loss curve will differ slightly from an uninterrupted run");
    progress.note((first_step > 0 ? "resuming " : "training ") + model_->summary() + " for " +
                  std::to_string(total_steps_) + " steps" +
                  (first_step > 0 ? " from step " + std::to_string(first_step) : "") + " -> " + run_dir_);
  }

  // The session ended at end_step: a completed run writes its summary.
  TrainResult session_result() {
    TrainResult result;
    result.run_dir = run_dir_;
    result.completed = state_.step == total_steps_;
    if (result.completed) {
      result.summary = summary("completed");
      if (writer()) write_file_atomic(run_dir_ + "/" + kSummaryFile, dump_json(result.summary) + "\n");
    }
    return result;
  }

  bool writer() const { return comm_.rank() == 0; }

  // BatchNorm's running statistics come from each rank's own slice: rank 0's are kept on every
  // rank (PyTorch DDP's broadcast_buffers), so that all ranks hold the same model.
  void broadcast_buffers() {
    if (comm_.size() == 1) return;
    for (auto [name, buffer] : model_->named_buffers()) comm_.broadcast(buffer, 0);
  }

  // The signal that stops the run after this step (0: none). Signals and clocks are a rank's own:
  // in a job of several ranks they agree here, at the end of every step, on the largest signal and
  // on whether any rank's clock has a checkpoint due (taken at the next step), so that all ranks
  // stop and checkpoint at the same step.
  int agreed_stop_signal() {
    if (comm_.size() == 1) return stop_signal;
    const std::vector<double> agreed =
        all_reduce_values(comm_, {static_cast<double>(stop_signal), checkpoint_is_due() ? 1.0 : 0.0}, ReduceOp::Max);
    agreed_checkpoint_due_ = agreed[1] != 0.0;
    return static_cast<int>(agreed[0]);
  }

  bool checkpoint_due() const { return comm_.size() == 1 ? checkpoint_is_due() : agreed_checkpoint_due_; }

  bool checkpoint_is_due() const {
    return config_.train.checkpoint_minutes > 0 &&
           seconds_since(last_checkpoint_time_) >= 60.0 * config_.train.checkpoint_minutes;
  }

  // A signal came: the step in progress is done. Checkpoints it (unless that just happened), marks
  // the summary interrupted and stops the run.
  [[noreturn]] void interrupted(ProgressReporter& progress, int signal_number) {
    if (!last_checkpoint_ || last_checkpoint_->step != state_.step) {
      check_model_is_finite();
      save_checkpoint(progress);
    }
    progress.finish();
    if (writer()) write_file_atomic(run_dir_ + "/" + kSummaryFile, dump_json(summary("interrupted")) + "\n");
    throw TrainingInterrupted(std::string(signal_number == SIGINT ? "SIGINT" : "SIGTERM") + " at step " +
                                  std::to_string(state_.step) + " of " + std::to_string(total_steps_) +
                                  ": checkpoint " + last_checkpoint_->dir + " written; continue with --resume " +
                                  run_dir_,
                              signal_number);
  }

  bool every(int64_t interval) const { return interval > 0 && state_.step % interval == 0; }

  double epoch() const {
    const int64_t steps_per_epoch =
        std::max<int64_t>(1, data_.batcher->steps_per_epoch() / config_.train.grad_accum);
    return static_cast<double>(state_.step) / static_cast<double>(steps_per_epoch);
  }

  void write_metrics(const Json& line) {
    if (!writer()) return;
    metrics_ << dump_json(line) << "\n" << std::flush;
    // A full disk (or a file size limit) must stop the run, not silently drop lines.
    if (!metrics_) throw std::runtime_error(run_dir_ + "/" + kMetricsFile + ": write failed (disk full?)");
  }

  void log_train_line(double samples_per_s) {
    Json line = Json::object({{"step", state_.step},
                              {"epoch", epoch()},
                              {"train_loss", state_.window_loss_sum / static_cast<double>(state_.window_steps)},
                              {"lr", optimizer_->base_lr() * optimizer_->lr_scale()},
                              {"elapsed_s", state_.elapsed_s},
                              {"optimizer_s", state_.optimizer_s},
                              {"samples_per_s", samples_per_s}});
    for (const auto& [name, value] : optimizer_->metrics())
      if (std::isfinite(value)) line["optimizer." + name] = value;
    if (comm_.size() > 1) {
      // What this rank exchanged since the last line (gradients, updates, reductions), per step.
      const double steps = static_cast<double>(state_.window_steps);
      line["comm_bytes_per_step"] = static_cast<double>(comm_.stats().bytes - window_comm_.bytes) / steps;
      line["comm_s_per_step"] = (comm_.stats().seconds - window_comm_.seconds) / steps;
      window_comm_ = comm_.stats();
    }
    write_metrics(line);
    state_.window_loss_sum = 0.0;
    state_.window_steps = 0;
  }

  void run_eval(ProgressReporter& progress) {
    if (data_.batcher->num_val_batches() == 0) return;
    const Clock::time_point start = Clock::now();
    const EvalResult result = evaluate(*model_, *data_.batcher, eval_options(config_, data_), device_, &comm_);
    model_->train();
    if (!std::isfinite(result.loss))
      diverged("non-finite validation loss (" + non_finite_text(result.loss) + ")", state_.step);
    state_.last_eval = result;
    if (!state_.best_val_loss || result.loss < *state_.best_val_loss) state_.best_val_loss = result.loss;
    if (result.accuracy && (!state_.best_val_acc || *result.accuracy > *state_.best_val_acc))
      state_.best_val_acc = result.accuracy;
    Json line = Json::object({{"step", state_.step}, {"epoch", epoch()}, {"val_loss", result.loss}});
    if (result.accuracy) line["val_acc"] = *result.accuracy;
    // train_s: the wall-clock of the training steps so far, evaluations excluded, so that the time
    // to reach a validation target does not depend on how often the run evaluates.
    line["train_s"] = state_.elapsed_s - state_.eval_s;
    line["optimizer_s"] = state_.optimizer_s;
    const double eval_s = seconds_since(start);
    line["eval_s"] = eval_s;
    state_.eval_s += eval_s;
    write_metrics(line);
    char text[160];
    std::snprintf(text, sizeof text, "step %lld: val_loss %.4f", static_cast<long long>(state_.step), result.loss);
    std::string message = text;
    if (result.accuracy) {
      std::snprintf(text, sizeof text, "  val_acc %.4f", *result.accuracy);
      message += text;
    }
    progress.note(message);
  }

  void save_checkpoint(ProgressReporter& progress) {
    // A checkpoint never holds a non-finite value: it is what a diverged run falls back to.
    const std::string bad_state = first_non_finite(optimizer_->state_dict());
    if (!bad_state.empty()) diverged("NaN or infinity in the optimizer state " + bad_state, state_.step);
    if (!writer()) {
      // The checkpoint is rank 0's to write (every rank holds the same state); the others learn
      // where it went, for their messages.
      CheckpointRef written;
      written.step = state_.step;
      written.dir = comm_.broadcast_text("", 0);
      last_checkpoint_ = written;
      last_checkpoint_time_ = Clock::now();
      return;
    }
    state_.threads = num_threads();
    state_.dropout_seed = default_generator().seed();
    state_.dropout_offset = default_generator().offset();
    std::vector<CheckpointFile> files{
        {kModelFile, [&](const std::string& path) { save_weights(*model_, path); }},
        {kOptimizerFile,
         [&](const std::string& path) {
           const StateDict state = optimizer_->state_dict();
           save_safetensors(path, NamedTensors(state.begin(), state.end()), {{"optimizer", optimizer_->kind()}});
         }},
        {kTrainerFile, [&](const std::string& path) { write_file_atomic(path, dump_json(state_.to_json()) + "\n"); }}};
    if (data_.vocab) files.push_back({kVocabFile, [&](const std::string& path) { data_.vocab->save(path); }});
    last_checkpoint_ = write_checkpoint(run_dir_, state_.step, files, config_.train.keep_checkpoints);
    comm_.broadcast_text(last_checkpoint_->dir, 0);
    last_checkpoint_time_ = Clock::now();
    progress.note("checkpoint: " + last_checkpoint_->dir);
  }

  void check_model_is_finite() {
    const std::string bad = first_non_finite(model_->state_dict());
    if (!bad.empty()) diverged("NaN or infinity in the model tensor " + bad, state_.step);
  }

  void check_loss_bound(double step_loss, int64_t step) {
    if (!state_.first_loss) state_.first_loss = step_loss;
    const double ratio = config_.train.max_loss_ratio;
    if (ratio > 0 && step_loss > ratio * *state_.first_loss) {
      std::ostringstream what;
      what << "training loss " << step_loss << ", more than train.max_loss_ratio (" << ratio
           << ") times the first step's loss " << *state_.first_loss << ",";
      diverged(what.str(), step);
    }
  }

  NamedTensors named_gradients() const {
    NamedTensors gradients;
    for (const auto& [name, param] : model_->named_parameters()) gradients.push_back({name, param.grad()});
    return gradients;
  }

  // `what` went wrong at `step`: stops the run with TrainingDiverged, leaving the last checkpoint
  // (which holds finite values only) as it is.
  [[noreturn]] void diverged(const std::string& what, int64_t step) {
    metrics_.flush();
    std::ostringstream message;
    message << what << " at step " << step << "; training stopped. ";
    if (last_checkpoint_)
      message << "The last good checkpoint (step " << last_checkpoint_->step << ") is " << last_checkpoint_->dir
              << "; lower optimizer.lr or set train.grad_clip, then resume with --resume " << run_dir_;
    else
      message << "No checkpoint had been written yet (train.checkpoint_every sets how often); lower optimizer.lr "
                 "or set train.grad_clip";
    throw TrainingDiverged(message.str());
  }

  // status: "completed" or "interrupted".
  Json summary(const std::string& status) const {
    const auto optional_number = [](const std::optional<double>& value) { return value ? Json(*value) : Json(); };
    Json optimizer_metrics = Json::object();
    for (const auto& [name, value] : optimizer_->metrics())
      if (std::isfinite(value)) optimizer_metrics[name] = value;
    Json result = Json::object({
        {"name", config_.name},
        {"model", model_->summary()},
        {"optimizer", kind_of(config_.optimizer)},
        {"parameters", model_->num_parameters()},
        {"steps", state_.step},
        {"epochs", epoch()},
        {"samples", state_.samples},
        {"final_train_loss", state_.last_train_loss},
        {"val_loss", state_.last_eval ? Json(state_.last_eval->loss) : Json()},
        {"val_acc", state_.last_eval ? optional_number(state_.last_eval->accuracy) : Json()},
        {"best_val_loss", optional_number(state_.best_val_loss)},
        {"best_val_acc", optional_number(state_.best_val_acc)},
        {"total_s", state_.elapsed_s},
        {"train_s", state_.elapsed_s - state_.eval_s},
        {"optimizer_s", state_.optimizer_s},
        {"samples_per_s", state_.elapsed_s > 0 ? static_cast<double>(state_.samples) / state_.elapsed_s : 0.0},
        {"peak_rss_mb", peak_rss_mb()},
        {"threads", num_threads()},
        {"device", name_of(device_type_names(), config_.device)},
        {"host", host_description()},
        {"optimizer_metrics", optimizer_metrics},
        {"status", status},
    });
    if (comm_.size() > 1) {
      result["ranks"] = comm_.size();
      result["comm_bytes"] = comm_.stats().bytes;
      result["comm_s"] = comm_.stats().seconds;
    }
    return result;
  }

  const RunConfig& config_;
  const TrainOptions& options_;
  SingleProcess alone_;  // the communicator when the options name none
  Communicator& comm_;
  ThreadCountScope threads_;
  Device device_;
  RunData data_;
  int64_t total_steps_ = 0;
  std::shared_ptr<Model> model_;
  std::vector<Tensor> params_;
  std::unique_ptr<Optimizer> optimizer_;
  LoopState state_;
  std::optional<CheckpointRef> last_checkpoint_;
  Clock::time_point last_checkpoint_time_;  // of this session: train.checkpoint_minutes counts from it
  std::string fallback_warning_;  // why a resume starts from an older checkpoint than the newest
  bool peak_rss_is_the_runs_ = false;  // start_peak_rss() succeeded
  std::string run_dir_;
  std::optional<RunDirLock> lock_;  // held from before the first read or write of the run directory
  std::ofstream metrics_;
  CommStats window_comm_;  // the communicator's totals at the last metrics line
  bool agreed_checkpoint_due_ = false;
};

}  // namespace

double lr_scale_at(const ScheduleConfig& schedule, int64_t step, int64_t total_steps) {
  if (step < schedule.warmup_steps)
    return static_cast<double>(step + 1) / static_cast<double>(schedule.warmup_steps);
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - schedule.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - schedule.warmup_steps) / static_cast<double>(decay_steps));
  const double floor = schedule.min_lr_ratio;
  switch (schedule.decay) {
    case LrDecay::None: return 1.0;
    case LrDecay::Linear: return 1.0 - (1.0 - floor) * progress;
    case LrDecay::Cosine: return floor + (1.0 - floor) * 0.5 * (1.0 + std::cos(M_PI * progress));
  }
  throw std::logic_error("lr_scale_at: an unknown decay");
}

TrainResult train(const RunConfig& config, const TrainOptions& options) { return Trainer(config, options).run(); }

std::vector<NamedParam> optimizer_params(const Module& model) {
  std::vector<NamedParam> params;
  for (const auto& [name, tensor] : model.named_parameters())
    if (tensor.requires_grad()) params.push_back({name, tensor});
  return params;
}

}  // namespace ml
