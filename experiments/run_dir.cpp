#include "experiments/run_dir.h"

#include <ctime>
#include <filesystem>
#include <sstream>
#include <stdexcept>

#include "framework/io/atomic_file.h"
#include "framework/io/safetensors.h"

namespace ml {
namespace fs = std::filesystem;
namespace {

// The keys that may change when a run is resumed: how long it trains, how often it reports, and
// the thread count (a resumed session on another machine; the loop notes that the curve then
// differs by rounding).
RunConfig with_resumable_keys_of(RunConfig saved, const RunConfig& given) {
  saved.threads = given.threads;
  saved.train.steps = given.train.steps;
  saved.train.epochs = given.train.epochs;
  saved.train.eval_every = given.train.eval_every;
  saved.train.log_every = given.train.log_every;
  saved.train.checkpoint_every = given.train.checkpoint_every;
  saved.train.checkpoint_minutes = given.train.checkpoint_minutes;
  saved.train.keep_checkpoints = given.train.keep_checkpoints;
  saved.train.max_loss_ratio = given.train.max_loss_ratio;
  saved.data.workers_prefetch = given.data.workers_prefetch;
  return saved;
}

}  // namespace

void check_holds_no_run(const std::string& out_dir) {
  if (fs::exists(out_dir + "/" + kMetricsFile) || fs::exists(out_dir + "/checkpoint.json"))
    throw std::runtime_error("--out " + out_dir + " already holds a run; continue it with --resume, or choose another folder");
}

void check_same_run(const RunConfig& given, const std::string& run_dir) {
  const std::string saved_path = run_dir + "/" + kConfigFile;
  if (!fs::exists(saved_path)) throw std::runtime_error("--resume " + run_dir + ": no " + kConfigFile + " (not a run directory)");
  const RunConfig saved = with_resumable_keys_of(load_run_config(saved_path), given);
  const std::string difference = first_difference(saved, given);
  if (difference.empty()) return;
  throw std::runtime_error("--resume " + run_dir + ": the config differs from the run's " + kConfigFile + " (run vs given: " +
                           difference +
                           "); only train.steps/epochs/eval_every/log_every/checkpoint_every/checkpoint_minutes/"
                           "keep_checkpoints/max_loss_ratio, threads and data.workers_prefetch may change. Resume with " +
                           saved_path);
}

void truncate_metrics(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::istringstream lines(read_file(path));
  std::string kept;
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) continue;
    try {
      if (parse_json(line).at("step").get<int64_t>() > step) continue;
    } catch (const std::exception&) {
      continue;  // a line cut short by the crash
    }
    kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

std::string new_run_dir(const std::string& parent, const std::string& name) {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &local);
  const std::string base = parent + "/" + name + "-" + stamp;
  std::string dir = base;
  for (int suffix = 2; fs::exists(dir); ++suffix) dir = base + "-" + std::to_string(suffix);
  return dir;
}

bool run_completed(const std::string& run_dir) {
  const std::string path = run_dir + "/" + kSummaryFile;
  if (!fs::exists(path)) return false;
  const Json summary = parse_json(read_file(path));
  // Summaries from before "status" are of finished runs.
  return !summary.contains("status") || summary.at("status").get<std::string>() != "interrupted";
}

Json LoopState::to_json() const {
  Json json = Json::object({{"step", step},
                            {"elapsed_s", elapsed_s},
                            {"optimizer_s", optimizer_s},
                            {"eval_s", eval_s},
                            {"samples", samples},
                            {"threads", threads},
                            {"dropout_rng", Json::object({{"seed", dropout_seed}, {"offset", dropout_offset}})},
                            {"window_loss_sum", window_loss_sum},
                            {"window_steps", window_steps},
                            {"last_train_loss", last_train_loss}});
  if (last_eval) {
    Json eval = Json::object({{"loss", last_eval->loss}, {"targets", last_eval->targets}, {"batches", last_eval->batches}});
    if (last_eval->accuracy) eval["accuracy"] = *last_eval->accuracy;
    json["last_eval"] = eval;
  }
  if (best_val_loss) json["best_val_loss"] = *best_val_loss;
  if (best_val_acc) json["best_val_acc"] = *best_val_acc;
  if (first_loss) json["first_loss"] = *first_loss;
  return json;
}

LoopState LoopState::from_json(const Json& json) {
  const auto optional_number = [](const Json& object, const char* key) {
    return object.contains(key) ? std::optional<double>(object.at(key).get<double>()) : std::nullopt;
  };
  // Checkpoints written before JSON numbers held 64-bit integers exactly store the generator
  // state as decimal strings.
  const auto generator_word = [](const Json& value) {
    return value.is_string() ? std::stoull(value.get<std::string>()) : value.get<uint64_t>();
  };
  LoopState state;
  state.step = json.at("step").get<int64_t>();
  state.elapsed_s = json.at("elapsed_s").get<double>();
  state.optimizer_s = json.at("optimizer_s").get<double>();
  // Checkpoints written before evaluation time was tracked have none.
  state.eval_s = optional_number(json, "eval_s").value_or(0.0);
  state.samples = json.at("samples").get<int64_t>();
  state.threads = json.at("threads").get<int64_t>();
  state.dropout_seed = generator_word(json.at("dropout_rng").at("seed"));
  state.dropout_offset = generator_word(json.at("dropout_rng").at("offset"));
  state.window_loss_sum = json.at("window_loss_sum").get<double>();
  state.window_steps = json.at("window_steps").get<int64_t>();
  state.last_train_loss = json.at("last_train_loss").get<double>();
  if (json.contains("last_eval")) {
    const Json& eval = json.at("last_eval");
    EvalResult result;
    result.loss = eval.at("loss").get<double>();
    result.targets = eval.at("targets").get<int64_t>();
    result.batches = eval.at("batches").get<int64_t>();
    result.accuracy = optional_number(eval, "accuracy");
    state.last_eval = result;
  }
  state.best_val_loss = optional_number(json, "best_val_loss");
  state.best_val_acc = optional_number(json, "best_val_acc");
  // Checkpoints written before the loss bound existed have none: this session's first step sets it.
  state.first_loss = optional_number(json, "first_loss");
  return state;
}

LoopState read_loop_state(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return LoopState::from_json(parse_json(text));
  } catch (const std::exception& error) {
    throw std::runtime_error(path + ": not a valid trainer state: " + error.what());
  }
}

StateDict read_optimizer_state(const std::string& path) {
  StateDict state;
  for (const auto& [name, tensor] : load_safetensors(path).tensors) state[name] = tensor;
  return state;
}

}  // namespace ml
