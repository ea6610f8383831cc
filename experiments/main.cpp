// The `muonlab` command line: parses argv (experiments/cli_args.h) and runs the command.
// Exit codes: 0 success, 1 runtime error, 2 bad command line or config, 3 training diverged,
// 130 / 143 training stopped by SIGINT / SIGTERM (after saving a checkpoint: 128 + the signal).
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <variant>

#include "experiments/bench_models.h"
#include "experiments/bench_ops.h"
#include "experiments/cli_args.h"
#include "experiments/config.h"
#include "experiments/demo.h"
#include "experiments/evaluation.h"
#include "experiments/ortho_command.h"
#include "experiments/report.h"
#include "experiments/sample.h"
#include "experiments/sweep.h"
#include "experiments/trainer.h"
#include "framework/backends/cpu/blas_kernels.h"
#include "framework/distributed/communicator.h"
#include "framework/io/json.h"
#include "framework/parallel.h"

namespace ml {
namespace {

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;
constexpr int kExitDiverged = 3;

std::string number_text(const Json& value, const char* format) {
  if (!value.is_number()) return "-";
  char text[32];
  std::snprintf(text, sizeof text, format, value.get<double>());
  return text;
}

int run(const HelpRequest& request) {
  std::cout << usage(request.command);
  return 0;
}

int run(const TrainArgs& args) {
  const RunConfig config = load_config(args.config_path, args.overrides);
  TrainOptions options;
  options.out_dir = args.out_dir;
  options.resume_dir = args.resume_dir;
  options.quiet = args.quiet;
  // Under mpirun every rank runs this command; rank 0 reports.
  options.communicator = &process_communicator(config.device == DeviceType::CUDA);
  const TrainResult result = train(config, options);
  if (options.communicator->rank() != 0) return 0;
  const Json& summary = result.summary;
  std::cout << "run: " << result.run_dir << "\n"
            << "steps " << summary.at("steps").get<int64_t>() << "  val_loss " << number_text(summary.at("val_loss"), "%.4f")
            << (summary.at("val_acc").is_number() ? "  val_acc " + number_text(summary.at("val_acc"), "%.4f") : "")
            << "  best_val_loss " << number_text(summary.at("best_val_loss"), "%.4f") << "\n"
            << "total " << number_text(summary.at("total_s"), "%.1f") << " s  optimizer "
            << number_text(summary.at("optimizer_s"), "%.2f") << " s  "
            << number_text(summary.at("samples_per_s"), "%.0f") << " samples/s  peak memory "
            << number_text(summary.at("peak_rss_mb"), "%.0f") << " MB\n";
  return 0;
}

int run(const EvalArgs& args) {
  const RunConfig config = load_config(args.config_path, args.overrides);
  std::cout << dump_json(evaluate_checkpoint(config, args.checkpoint_path)) << "\n";
  return 0;
}

int run(const CheckArgs& args) {
  std::cout << to_yaml(load_config(args.config_path, args.overrides));
  return 0;
}

int run(const DemoArgs& args) { return run_demo(args, std::cout, std::cerr); }

int run(const OrthoArgs& args) { return run_ortho(args.method, args.input_path, args.output_path, args.steps); }

int run(const BenchArgs& args) {
  if (args.target == "models") return run_bench_models(args, std::cout);
  if (args.target == "ops") return run_bench_ops(args, std::cout);
  set_num_threads(static_cast<int>(args.threads));
  return run_bench_ortho(args.device, args.repeats);
}

int run(const SweepArgs& args) {
  const Sweep sweep = load_sweep(args.sweep_path);
  SweepOptions options;
  options.dry_run = args.dry_run;
  options.only = args.only;
  options.quiet = args.quiet;
  return run_sweep(sweep, options, std::cout) == 0 ? 0 : kExitError;
}

int run(const ReportArgs& args) {
  if (!args.study_path.empty()) return run_study_report(args.study_path, args.out_dir, std::cout, std::cerr);
  return run_report({args.run_paths, args.out_dir, args.targets, args.title}, std::cout, std::cerr);
}

int run(const SampleArgs& args) {
  SampleOptions options;
  options.prompt = args.prompt;
  options.tokens = args.tokens;
  options.temperature = args.temperature;
  options.top_k = args.top_k;
  options.seed = static_cast<uint64_t>(args.seed);
  // Sampled before anything is written: a checkpoint that fails to load leaves stdout empty, not the prompt.
  const std::string text = sample_text(args.checkpoint_path, options);
  std::cout << args.prompt << text << "\n";
  return 0;
}

int dispatch(int argc, const char* const argv[]) {
  try {
    const CliArgs args = parse_cli(argc, argv);
    return std::visit([](const auto& command) { return run(command); }, args);
  } catch (const CliError& error) {
    std::cerr << error.what() << "\n";
    return kExitUsage;
  } catch (const ConfigError& error) {
    std::cerr << "config error: " << error.what() << "\n";
    return kExitUsage;
  } catch (const TrainingDiverged& error) {
    std::cerr << "training diverged: " << error.what() << "\n";
    return kExitDiverged;
  } catch (const TrainingInterrupted& error) {
    std::cerr << "training interrupted: " << error.what() << "\n";
    return 128 + error.signal_number();
  } catch (const std::exception& error) {
    std::cerr << "error: " << without_json_error_ids(error.what()) << "\n";
    return kExitError;
  }
}

}  // namespace
}  // namespace ml

// Two libraries read a setting from the environment once, when they are loaded, so it must be
// there before this process starts; unless the user chose one, restart once with each that is
// needed (if the restart fails, run on with the defaults):
// - libgomp by default lets idle threads spin for ~300k iterations after every parallel region.
//   On two vCPUs that are hyperthreads of one core the spinning sibling starves the serial work
//   between regions (measured: GPT benchmark step 205 ms with two threads against 69 ms with
//   one): ask for a short spin.
// - OpenBLAS falls back to SSE3 kernels on a processor newer than its release
//   (framework/backends/cpu/blas_kernels.h): ask for the kernels the processor's features allow.
static void restart_with_library_settings(char** argv) {
  bool restart = false;
  if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("GOMP_SPINCOUNT")) {
    setenv("GOMP_SPINCOUNT", "10000", 1);
    restart = true;
  }
  const std::string blas_kernels = ml::blas_kernels_to_request();
  if (!blas_kernels.empty()) {
    setenv("OPENBLAS_CORETYPE", blas_kernels.c_str(), 1);
    restart = true;
  }
  if (restart) execv("/proc/self/exe", argv);
}

int main(int argc, char** argv) {
  restart_with_library_settings(argv);
  ml::set_flush_denormals(true);  // before any thread starts (framework/parallel.h says why)
  ml::set_num_threads(0);  // the default count, as every command then runs it (framework/parallel.h)
  const int code = ml::dispatch(argc, argv);
  // Under mpirun, a rank that failed ends the whole job: the others may be waiting for it in a
  // collective. (A stop by signal happens on every rank at the same step: they end normally.)
  if (code != 0 && code != 128 + SIGINT && code != 128 + SIGTERM) ml::abort_job(code);
  ml::finalize_communicator();
  return code;
}
