#include "experiments/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace ml {
namespace {

constexpr int kBarCells = 24;
// Redrawing more often than this only costs terminal bandwidth.
constexpr double kMinSecondsBetweenDraws = 0.1;

std::string format_loss(double loss) {
  char text[32];
  std::snprintf(text, sizeof text, "%.4f", loss);
  return text;
}

std::string format_rate(double samples_per_s) {
  char text[32];
  std::snprintf(text, sizeof text, "%.0f", samples_per_s);
  return text;
}

std::string format_lr(double lr) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3g", lr);
  return text;
}

}  // namespace

ProgressStyle choose_progress_style(bool quiet, int file_descriptor) {
  if (quiet) return ProgressStyle::Quiet;
  return isatty(file_descriptor) ? ProgressStyle::Bar : ProgressStyle::Lines;
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t total = static_cast<int64_t>(std::llround(seconds));
  const int64_t hours = total / 3600, minutes = total / 60 % 60, secs = total % 60;
  char text[32];
  if (hours > 0)
    std::snprintf(text, sizeof text, "%lldh%02lldm", static_cast<long long>(hours), static_cast<long long>(minutes));
  else if (minutes > 0)
    std::snprintf(text, sizeof text, "%lldm%02llds", static_cast<long long>(minutes), static_cast<long long>(secs));
  else
    std::snprintf(text, sizeof text, "%llds", static_cast<long long>(secs));
  return text;
}

ProgressReporter::ProgressReporter(std::ostream& out, ProgressStyle style, int64_t first_step, int64_t total_steps,
                                   int64_t log_every)
    : out_(out),
      style_(style),
      first_step_(first_step),
      total_steps_(total_steps),
      log_every_(log_every),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_ - std::chrono::hours(1)) {}

double ProgressReporter::eta_seconds(int64_t step) const {
  const int64_t done = step - first_step_;
  if (done <= 0) return -1;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  return elapsed / static_cast<double>(done) * static_cast<double>(total_steps_ - step);
}

void ProgressReporter::step(const StepReport& report) {
  if (style_ == ProgressStyle::Bar) {
    const auto now = std::chrono::steady_clock::now();
    const bool last = report.step == total_steps_;
    if (last || std::chrono::duration<double>(now - last_draw_).count() >= kMinSecondsBetweenDraws) {
      last_draw_ = now;
      draw_bar(report);
    }
  } else if (style_ == ProgressStyle::Lines && log_every_ > 0 &&
             (report.step % log_every_ == 0 || report.step == total_steps_)) {
    out_ << "step " << report.step << "/" << total_steps_ << "  loss " << format_loss(report.train_loss) << "  lr "
         << format_lr(report.lr) << "  " << format_rate(report.samples_per_s) << " samples/s  eta "
         << format_duration(eta_seconds(report.step)) << "\n"
         << std::flush;
  }
}

void ProgressReporter::draw_bar(const StepReport& report) {
  const double fraction = total_steps_ > 0 ? static_cast<double>(report.step) / static_cast<double>(total_steps_) : 1;
  const int filled = static_cast<int>(fraction * kBarCells);
  std::string line = "[" + std::string(filled, '#') + std::string(kBarCells - filled, '.') + "] " +
                     std::to_string(report.step) + "/" + std::to_string(total_steps_) + "  loss " +
                     format_loss(report.train_loss) + "  " + format_rate(report.samples_per_s) + " samples/s  eta " +
                     format_duration(eta_seconds(report.step));
  // Pad over the remains of a longer previous line.
  const size_t width = line.size();
  if (width < bar_width_) line += std::string(bar_width_ - width, ' ');
  out_ << "\r" << line << std::flush;
  bar_width_ = width;
  bar_visible_ = true;
}

void ProgressReporter::clear_bar() {
  if (!bar_visible_) return;
  out_ << "\r" << std::string(bar_width_, ' ') << "\r";
  bar_visible_ = false;
  bar_width_ = 0;
}

void ProgressReporter::note(const std::string& line) {
  if (style_ == ProgressStyle::Quiet) return;
  clear_bar();
  out_ << line << "\n" << std::flush;
}

void ProgressReporter::finish() {
  if (style_ != ProgressStyle::Bar || !bar_visible_) return;
  out_ << "\n" << std::flush;
  bar_visible_ = false;
  bar_width_ = 0;
}

}  // namespace ml
