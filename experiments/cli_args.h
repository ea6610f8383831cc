// Command-line parsing of the `muonlab` tool: turns argv into one typed struct per command.
// Pure: no files are read and nothing is printed; the caller runs the command.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

namespace ml {

// A command line that cannot be run; the message names the option and points at --help.
class CliError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// `muonlab --help`, `muonlab help [CMD]` or `muonlab CMD --help`: print usage(command).
struct HelpRequest {
  std::string command;  // "" for the overview of all commands
};

struct TrainArgs {
  std::string config_path;
  std::vector<std::string> overrides;  // --set key=value, in order
  std::string out_dir;                 // "" when not given
  std::string resume_dir;              // "" when not given
  bool quiet = false;
};

struct EvalArgs {
  std::string config_path;
  std::vector<std::string> overrides;
  std::string checkpoint_path;
};

struct OrthoArgs {
  std::string method;
  std::string input_path;
  std::string output_path;
  int64_t steps = 0;  // 0: the method's default
};

struct BenchArgs {
  std::string target;  // ortho | ops | models
  std::string device;  // cpu | cuda
  int64_t threads = 0;  // 0: the OpenMP default
  int64_t repeats = 0;
  std::string model = "all";  // models: gpt | cnn, or all (both)
};

struct DemoArgs {
  bool quick = false;
};

// Validate a config and print it fully resolved.
struct CheckArgs {
  std::string config_path;
  std::vector<std::string> overrides;
};

// Run (or list) the points of a sweep file (experiments/sweep.h).
struct SweepArgs {
  std::string sweep_path;
  bool dry_run = false;
  std::string only;  // a glob over point names; "" = all
  bool quiet = false;
};

// Aggregate run folders into report.md, report.csv and figures (experiments/report.h).
struct ReportArgs {
  std::vector<std::string> run_paths;  // run folders or folders holding them
  std::string out_dir;
  std::vector<std::string> targets;  // metric=value, e.g. val_loss=1.6
  std::string title;
  std::string study_path;  // "" unless --study
};

// Generate text from a trained character GPT (experiments/sample.h).
struct SampleArgs {
  std::string checkpoint_path;
  std::string prompt;
  int64_t tokens = 0;
  double temperature = 1.0;
  int64_t top_k = 0;  // 0: no cut
  int64_t seed = 0;
};

using CliArgs = std::variant<HelpRequest, TrainArgs, EvalArgs, OrthoArgs, BenchArgs, DemoArgs, CheckArgs, SweepArgs,
                             ReportArgs, SampleArgs>;

// `args` are the arguments after the program name. Throws CliError.
CliArgs parse_cli(const std::vector<std::string>& args);
CliArgs parse_cli(int argc, const char* const argv[]);

// The help text of one command, or of the whole tool for "". Throws CliError for an unknown command.
std::string usage(const std::string& command);

}  // namespace ml
