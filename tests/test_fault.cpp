// The fault suite (CTest label "fault"): the `muonlab` binary under kill -9 at random moments,
// SIGINT/SIGTERM, corrupt checkpoints, two writers of one run and a full disk. A run must then
// either continue to exactly the numbers of an uninterrupted run or fail with a message naming
// the file: never a silent wrong number, a crash or a hang.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <functional>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "framework/backends/cpu/blas_kernels.h"
#include "framework/io/atomic_file.h"
#include "framework/io/json.h"
#include "tests/temp_dir.h"
#include "tests/training_data.h"

namespace ml {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr const char* kMuonlab = MUONLAB_BINARY_DIR "/bin/muonlab";

// A `muonlab` child process with its stdout and stderr in one log file.
class Muonlab {
 public:
  // file_size_limit: RLIMIT_FSIZE in bytes (0: none); writes beyond it fail with EFBIG.
  Muonlab(const std::vector<std::string>& args, std::string log_path, rlim_t file_size_limit = 0)
      : log_path_(std::move(log_path)) {
    // Everything the child needs is built before fork: between fork and exec only async-signal-safe calls.
    std::vector<std::string> words{kMuonlab};
    words.insert(words.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& word : words) argv.push_back(word.data());
    argv.push_back(nullptr);
    // A wait policy given keeps muonlab from re-executing itself for libgomp (it still does for
    // OpenBLAS's kernels where the library does not know the processor; the pid stays the same).
    std::string wait_policy = "OMP_WAIT_POLICY=PASSIVE";
    std::vector<char*> envp{wait_policy.data(), nullptr};
    const int log = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(log, STDOUT_FILENO);
      ::dup2(log, STDERR_FILENO);
      if (file_size_limit > 0) {
        ::signal(SIGXFSZ, SIG_IGN);  // a write past the limit fails with EFBIG instead of killing
        const rlimit limit{file_size_limit, file_size_limit};
        ::setrlimit(RLIMIT_FSIZE, &limit);
      }
      ::execve(kMuonlab, argv.data(), envp.data());
      ::_exit(127);
    }
    ::close(log);
  }
  ~Muonlab() {
    if (!exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  Muonlab(const Muonlab&) = delete;
  Muonlab& operator=(const Muonlab&) = delete;

  void signal(int signal_number) const { ::kill(pid_, signal_number); }

  // The exit code, or 128 + the signal that ended it; -1 (and the child killed) after `timeout_s`.
  int wait(double timeout_s = 120) {
    const Clock::time_point deadline =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (Clock::now() > deadline) return -1;  // the destructor kills it
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    exited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  std::string output() const { return read_file(log_path_); }

 private:
  std::string log_path_;
  pid_t pid_ = -1;
  bool exited_ = false;
};

std::string gpt_config(const TempDir& dir, int64_t steps) {
  return dir.write("gpt.yaml", "name: fault_gpt\nseed: 5\nthreads: 1\n"
                               "data: {kind: text_char, path: " + write_text(dir) + ", batch_size: 8, block_size: 16}\n"
                               "model: {kind: gpt, n_layer: 1, n_head: 2, n_embd: 32, dropout: 0.1}\n"
                               "optimizer: {kind: muon, lr: 0.02}\n"
                               "schedule: {warmup_steps: 5, decay: cosine}\n"
                               "train: {steps: " + std::to_string(steps) +
                               ", eval_every: 20, eval_batches: 4, log_every: 5, checkpoint_every: 3}\n");
}

std::string cnn_config(const TempDir& dir, int64_t steps) {
  return dir.write("cnn.yaml", "name: fault_cnn\nseed: 6\nthreads: 1\n"
                               "data: {kind: fashion_mnist, path: " + write_idx_dataset(dir) +
                               ", batch_size: 32, flip: true, translate: 1}\n"
                               "model: {kind: cnn, stem_width: 8, widths: [8, 16], dropout: 0.1}\n"
                               "optimizer: {kind: sgd, lr: 0.05, momentum: 0.9, nesterov: true}\n"
                               "train: {steps: " + std::to_string(steps) +
                               ", eval_every: 20, log_every: 5, checkpoint_every: 3}\n");
}

// What must not differ between an interrupted and an uninterrupted run: every metrics line's
// numbers except the clocks, and the summary's.
std::string results_of(const std::string& run_dir) {
  std::ostringstream text;
  std::istringstream lines(read_file(run_dir + "/metrics.jsonl"));
  for (std::string line; std::getline(lines, line);) {
    const Json entry = parse_json(line);
    for (const char* key : {"step", "train_loss", "lr", "val_loss", "val_acc"})
      if (entry.contains(key)) text << key << "=" << dump_json(entry.at(key)) << " ";
    text << "\n";
  }
  const Json summary = parse_json(read_file(run_dir + "/summary.json"));
  for (const char* key : {"steps", "samples", "final_train_loss", "val_loss", "val_acc", "best_val_loss", "status"})
    text << key << "=" << dump_json(summary.at(key)) << " ";
  return text.str();
}

// Trains `config` into `run_dir`, killing the process with SIGKILL after random delays `kills`
// times (any moment: loading, a step, a checkpoint write) and resuming until the run completes.
void train_through_kills(const std::string& config, const std::string& run_dir, const TempDir& dir, int kills,
                         uint32_t seed) {
  std::mt19937 random(seed);
  std::uniform_real_distribution<double> delay_s(0.05, 0.6);
  for (int attempt = 0;; ++attempt) {
    ASSERT_LT(attempt, kills + 5) << "the run did not complete";
    const bool resume = fs::exists(run_dir + "/checkpoint.json");
    // Killed before its first checkpoint: nothing to continue, start again.
    if (!resume) fs::remove_all(run_dir);
    Muonlab run({"train", config, resume ? "--resume" : "--out", run_dir, "--quiet"}, dir.file("log.txt"));
    if (attempt < kills) {
      std::this_thread::sleep_for(std::chrono::duration<double>(delay_s(random)));
      run.signal(SIGKILL);
    }
    const int code = run.wait();
    if (code == 0) return;
    ASSERT_EQ(code, 128 + SIGKILL) << run.output();
  }
}

TEST(FaultKill, KilledAtRandomMomentsAndResumedGivesTheUninterruptedNumbers) {
  TempDir dir;
  for (const std::string& config : {gpt_config(dir, 300), cnn_config(dir, 60)}) {
    SCOPED_TRACE(config);
    fs::remove_all(dir.file("straight"));
    fs::remove_all(dir.file("killed"));
    Muonlab straight({"train", config, "--out", dir.file("straight"), "--quiet"}, dir.file("straight.txt"));
    ASSERT_EQ(straight.wait(), 0) << straight.output();
    train_through_kills(config, dir.file("killed"), dir, 4, 20261202);
    EXPECT_EQ(results_of(dir.file("killed")), results_of(dir.file("straight")));
  }
}

// On a processor OpenBLAS's release does not know (it then runs SSE3 kernels, 3x slower here),
// muonlab restarts itself with the kernels the processor allows; the summary names them.
TEST(LibrarySettings, TrainingRunsOpenBlasKernelsTheProcessorAllows) {
  TempDir dir;
  Muonlab run({"train", gpt_config(dir, 6), "--out", dir.file("run"), "--quiet"}, dir.file("run.txt"));
  ASSERT_EQ(run.wait(), 0) << run.output();
  const std::string host = parse_json(read_file(dir.file("run/summary.json"))).at("host").get<std::string>();
  const X86Features features = this_processor_features();
  if (features.avx2_fma) {
    EXPECT_EQ(host.find("OpenBLAS Prescott kernels"), std::string::npos) << host;
  }
  if (blas_kernel_name() == "Prescott" && features.avx512) {
    EXPECT_NE(host.find("OpenBLAS SkylakeX kernels"), std::string::npos) << host;
  }
}

// Waits until the run in `run_dir` has written its first checkpoint (so that it is training).
void wait_for_training(const std::string& run_dir) {
  const Clock::time_point deadline = Clock::now() + std::chrono::seconds(60);
  while (!fs::exists(run_dir + "/checkpoint.json") && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

TEST(FaultSignal, SigintAndSigtermSaveExitWith130And143AndTheRunResumesExactly) {
  TempDir dir;
  const std::string config = gpt_config(dir, 600);
  Muonlab straight({"train", config, "--out", dir.file("straight"), "--quiet"}, dir.file("straight.txt"));
  ASSERT_EQ(straight.wait(), 0) << straight.output();
  for (const int signal_number : {SIGINT, SIGTERM}) {
    const std::string run_dir = dir.file(signal_number == SIGINT ? "int" : "term");
    Muonlab run({"train", config, "--out", run_dir, "--quiet"}, dir.file("log.txt"));
    wait_for_training(run_dir);
    run.signal(signal_number);
    ASSERT_EQ(run.wait(), 128 + signal_number) << run.output();
    EXPECT_NE(run.output().find("continue with --resume " + run_dir), std::string::npos) << run.output();
    EXPECT_EQ(parse_json(read_file(run_dir + "/summary.json")).at("status").get<std::string>(), "interrupted");
    Muonlab resumed({"train", config, "--resume", run_dir, "--quiet"}, dir.file("resumed.txt"));
    ASSERT_EQ(resumed.wait(), 0) << resumed.output();
    EXPECT_EQ(results_of(run_dir), results_of(dir.file("straight")));
  }
}

TEST(FaultTwoWriters, ASecondProcessOnARunFailsAtOnce) {
  TempDir dir;
  const std::string config = gpt_config(dir, 100000);
  const std::string run_dir = dir.file("run");
  Muonlab first({"train", config, "--out", run_dir, "--quiet"}, dir.file("first.txt"));
  wait_for_training(run_dir);
  for (const char* flag : {"--resume", "--out"}) {
    Muonlab second({"train", config, flag, run_dir, "--quiet"}, dir.file("second.txt"));
    ASSERT_EQ(second.wait(30), 1) << second.output();
    EXPECT_NE(second.output().find("another muonlab process is training in this run directory"), std::string::npos)
        << second.output();
  }
  first.signal(SIGTERM);
  EXPECT_EQ(first.wait(), 128 + SIGTERM) << first.output();
}

TEST(FaultCorrupt, ACorruptNewestCheckpointFallsBackOrFailsNamingTheFile) {
  TempDir dir;
  const std::string config = gpt_config(dir, 30);  // checkpoints at 27 and 30 are kept
  Muonlab straight({"train", config, "--out", dir.file("straight"), "--quiet"}, dir.file("straight.txt"));
  ASSERT_EQ(straight.wait(), 0) << straight.output();
  const std::string newest = "/checkpoints/step-000030/";
  const std::vector<std::pair<std::string, std::function<void(const std::string&)>>> faults{
      {"model.safetensors", flip_middle_byte},
      {"optimizer.safetensors", [](const std::string& path) { fs::resize_file(path, fs::file_size(path) / 2); }},
      {"trainer.json", [](const std::string& path) { fs::remove(path); }},
      {"vocab.txt", [](const std::string& path) { std::ofstream(path, std::ios::app) << "x"; }},
  };
  for (const auto& [file, corrupt] : faults) {
    SCOPED_TRACE(file);
    const std::string run_dir = dir.file("run");
    fs::remove_all(run_dir);
    fs::copy(dir.file("straight"), run_dir, fs::copy_options::recursive);
    corrupt(run_dir + newest + file);

    Muonlab eval({"eval", config, "--checkpoint", run_dir}, dir.file("eval.txt"));
    EXPECT_EQ(eval.wait(), 1) << eval.output();
    EXPECT_NE(eval.output().find(run_dir + newest + file), std::string::npos) << eval.output();

    // Resumed: from step 27, the numbers of the uninterrupted run again.
    Muonlab resumed({"train", config, "--resume", run_dir, "--quiet"}, dir.file("resume.txt"));
    ASSERT_EQ(resumed.wait(), 0) << resumed.output();
    EXPECT_NE(resumed.output().find("resuming from the newest valid one, " + run_dir + "/checkpoints/step-000027"),
              std::string::npos)
        << resumed.output();
    EXPECT_EQ(results_of(run_dir), results_of(dir.file("straight")));
  }
  // A manifest cut short: a clear failure naming it.
  fs::remove_all(dir.file("run"));
  fs::copy(dir.file("straight"), dir.file("run"), fs::copy_options::recursive);
  fs::resize_file(dir.file("run/checkpoint.json"), fs::file_size(dir.file("run/checkpoint.json")) / 2);
  Muonlab resumed({"train", config, "--resume", dir.file("run"), "--quiet"}, dir.file("resume.txt"));
  EXPECT_EQ(resumed.wait(), 1) << resumed.output();
  EXPECT_NE(resumed.output().find(dir.file("run/checkpoint.json")), std::string::npos) << resumed.output();
}

// The sample command writes its prompt only with the text that follows it: a missing checkpoint
// leaves the error alone on the output.
TEST(FaultCorrupt, SamplingFromAMissingCheckpointPrintsOnlyTheError) {
  TempDir dir;
  Muonlab sample({"sample", "--checkpoint", dir.file("none"), "--prompt", "ROMEO:"}, dir.file("log.txt"));
  ASSERT_EQ(sample.wait(30), 1) << sample.output();
  EXPECT_EQ(sample.output().rfind("error: " + dir.file("none") + ": no such checkpoint", 0), 0u) << sample.output();
}

TEST(FaultDiskFull, AWriteThatDoesNotFitFailsNamingTheFileAndKeepsTheCheckpointsValid) {
  TempDir dir;
  const std::string config = gpt_config(dir, 600);
  Muonlab straight({"train", config, "--out", dir.file("straight"), "--quiet", "--set", "train.log_every=1"},
                   dir.file("straight.txt"));
  ASSERT_EQ(straight.wait(), 0) << straight.output();
  // The weights (56 KB) and the optimizer state (65 KB) of a checkpoint: 60 KB fails the first
  // checkpoint; 70 KB lets every checkpoint through until the metrics log outgrows it.
  for (const auto& [limit_kb, failing_file] : {std::pair<rlim_t, std::string>{60, "optimizer.safetensors"},
                                               {70, "metrics.jsonl: write failed"}}) {
    SCOPED_TRACE(limit_kb);
    const std::string run_dir = dir.file("run" + std::to_string(limit_kb));
    Muonlab run({"train", config, "--out", run_dir, "--quiet", "--set", "train.log_every=1"}, dir.file("log.txt"),
                limit_kb * 1024);
    ASSERT_EQ(run.wait(), 1) << run.output();
    EXPECT_NE(run.output().find(failing_file), std::string::npos) << run.output();
    if (!fs::exists(run_dir + "/checkpoint.json")) continue;
    // What the manifest lists is complete: the run resumes (without the limit) to the uninterrupted numbers.
    Muonlab resumed({"train", config, "--resume", run_dir, "--quiet", "--set", "train.log_every=1"},
                    dir.file("resumed.txt"));
    ASSERT_EQ(resumed.wait(), 0) << resumed.output();
    EXPECT_EQ(resumed.output().find("corrupt"), std::string::npos) << resumed.output();
    EXPECT_EQ(results_of(run_dir), results_of(dir.file("straight")));
  }
}

}  // namespace
}  // namespace ml
