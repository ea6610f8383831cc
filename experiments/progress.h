// What a training run tells the person watching it: a redrawn progress bar on a terminal, plain
// log lines otherwise (logs, CI, pipes), or nothing but errors with --quiet.
#pragma once
#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>

namespace ml {

enum class ProgressStyle { Bar, Lines, Quiet };

// Bar when `file_descriptor` (usually stderr's) is a terminal, else Lines; `quiet` wins.
ProgressStyle choose_progress_style(bool quiet, int file_descriptor);

struct StepReport {
  int64_t step = 0;  // optimizer steps done
  double train_loss = 0.0;
  double lr = 0.0;
  double samples_per_s = 0.0;
};

// "1h02m", "3m07s", "12s"; "?" for a negative or non-finite duration.
std::string format_duration(double seconds);

class ProgressReporter {
 public:
  // `first_step` is where this session starts (non-zero when resuming): the ETA extrapolates from
  // the steps done in this session only. `log_every` paces the plain lines (0: none).
  ProgressReporter(std::ostream& out, ProgressStyle style, int64_t first_step, int64_t total_steps, int64_t log_every);
  // Finishes the bar's line, so that an error message thrown past the reporter starts on its own line.
  ~ProgressReporter() { finish(); }
  ProgressReporter(const ProgressReporter&) = delete;
  ProgressReporter& operator=(const ProgressReporter&) = delete;

  // Called after every optimizer step.
  void step(const StepReport& report);
  // A line that must not be lost under the bar (evaluations, checkpoints, warnings).
  void note(const std::string& line);
  // Ends the bar's line so that later output starts on a fresh line.
  void finish();

 private:
  void draw_bar(const StepReport& report);
  void clear_bar();
  double eta_seconds(int64_t step) const;

  std::ostream& out_;
  ProgressStyle style_;
  int64_t first_step_;
  int64_t total_steps_;
  int64_t log_every_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
  bool bar_visible_ = false;
  size_t bar_width_ = 0;  // characters of the bar line currently on screen
};

}  // namespace ml
