// A progress stream that raises a signal in the training thread itself, right after the trainer
// reports a given step: a Ctrl-C at an exact, reproducible moment of an in-process run.
#pragma once
#include <csignal>
#include <cstdint>
#include <sstream>
#include <string>

namespace ml {

class SignalAtStep : public std::stringbuf {
 public:
  SignalAtStep(int64_t step, int signal_number) : marker_("step " + std::to_string(step) + "/"), signal_(signal_number) {}

 protected:
  // The progress reporter flushes after every line.
  int sync() override {
    if (!raised_ && str().find(marker_) != std::string::npos) {
      raised_ = true;
      std::raise(signal_);
    }
    return 0;
  }

 private:
  std::string marker_;
  int signal_;
  bool raised_ = false;
};

}  // namespace ml
