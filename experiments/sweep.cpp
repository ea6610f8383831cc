#include "experiments/sweep.h"

#include <fnmatch.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <functional>
#include <iomanip>
#include <ostream>
#include <regex>
#include <set>
#include <sstream>

#include "experiments/run_dir.h"
#include "experiments/sample.h"
#include "experiments/trainer.h"
#include "experiments/yaml_file_reader.h"
#include "framework/io/atomic_file.h"
#include "framework/io/json.h"

namespace fs = std::filesystem;

namespace ml {

const char* const kSweepPointFile = "sweep_point.json";
const char* const kSweepStatusFile = "sweep_status.json";
const char* const kSampleFile = "sample.txt";

namespace {

// The files of a run that a sweep keeps; summary.json last, because its presence marks a kept
// point as finished.
const std::vector<std::string> kKeptFiles{"config.yaml", "metrics.jsonl", kSweepPointFile, kSweepStatusFile,
                                          kSampleFile, "summary.json"};

// A grid value as it reads in a folder name: "0.02", "[16, 32]" -> "16x32".
std::string value_label(const YAML::Node& value) {
  std::string text;
  if (value.IsSequence()) {
    for (const auto& element : value) text += (text.empty() ? "" : "x") + value_label(element);
  } else {
    text = value.IsScalar() ? value.Scalar() : YamlFileReader::yaml_text(value);
  }
  for (char& c : text)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '+' && c != '_') c = '_';
  return text;
}

std::string utc_stamp() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm parts{};
  gmtime_r(&now, &parts);
  std::ostringstream text;
  text << std::put_time(&parts, "%Y%m%d-%H%M%S");
  return text.str();
}

std::string run_dir_of(const Sweep& sweep, const SweepPoint& point) { return sweep.out + "/" + point.name; }
std::string kept_dir_of(const Sweep& sweep, const SweepPoint& point) {
  return sweep.keep.empty() ? "" : sweep.keep + "/" + point.name;
}

// "" when the run in `dir` was made with the point's config (threads aside: they change the speed,
// not what is computed beyond rounding), else what differs.
std::string config_mismatch(const std::string& dir, const SweepPoint& point) {
  RunConfig saved = load_run_config(dir + "/config.yaml");
  saved.threads = point.config.threads;
  return first_difference(saved, point.config);
}

void copy_kept_files(const std::string& run_dir, const std::string& kept_dir) {
  if (kept_dir.empty()) return;
  fs::create_directories(kept_dir);
  for (const std::string& name : kKeptFiles)
    if (fs::exists(run_dir + "/" + name)) write_file_atomic(kept_dir + "/" + name, read_file(run_dir + "/" + name));
}

void write_status(const std::string& run_dir, const std::string& status, const std::string& message) {
  write_file_atomic(run_dir + "/" + kSweepStatusFile,
                    dump_json(Json::object({{"status", status}, {"message", message}})) + "\n");
}

Json point_json(const Sweep& sweep, const SweepPoint& point) {
  Json grid = Json::object();
  for (const auto& [key, value] : point.grid_values) grid[key] = value;
  return Json::object({{"sweep", sweep.name},
                       {"point", point.name},
                       {"label", point.label},
                       {"base", point.base},
                       {"overrides", point.overrides},
                       {"grid", grid}});
}

std::string summary_text(const std::string& dir) {
  const std::string path = dir + "/summary.json";
  if (!fs::exists(path)) return "";
  const Json summary = parse_json(read_file(path));
  std::ostringstream text;
  text << std::fixed;
  if (summary.at("val_loss").is_number())
    text << "val_loss " << std::setprecision(4) << summary.at("val_loss").get<double>();
  if (summary.at("val_acc").is_number())
    text << "  val_acc " << std::setprecision(4) << summary.at("val_acc").get<double>();
  text << "  " << std::setprecision(0) << summary.at("total_s").get<double>() << " s";
  return text.str();
}

}  // namespace

std::pair<std::string, std::string> recorded_status(const std::string& dir) {
  const std::string path = dir + "/" + kSweepStatusFile;
  if (!fs::exists(path)) return {"", ""};
  const Json status = parse_json(read_file(path));
  return {status.at("status").get<std::string>(), status.at("message").get<std::string>()};
}

std::string grid_key_label(const std::string& key, const std::vector<std::string>& keys) {
  const auto last = [](const std::string& path) { return path.substr(path.rfind('.') + 1); };
  const auto same_last = std::count_if(keys.begin(), keys.end(), [&](const std::string& other) { return last(other) == last(key); });
  return same_last > 1 ? key : last(key);
}

Sweep parse_sweep(const std::string& yaml_text, const std::string& source_name) {
  const YamlFileReader reader(source_name);
  const YAML::Node root = reader.load(yaml_text);
  if (!root.IsMap()) reader.fail(root, "", "expected a sweep: a mapping with name, runs and optionally out, keep, set, grid");
  reader.check_keys(root, "", {"name", "out", "keep", "base", "set", "grid", "runs"});
  if (!root["name"]) reader.fail(root, "name", "missing: every sweep needs a name (its folder)");
  if (!root["runs"]) reader.fail(root, "runs", "missing: the list of runs (blocks of base, label, set, grid)");

  Sweep sweep;
  sweep.file = source_name;
  sweep.name = reader.text(root["name"], "name", "[A-Za-z0-9_.-]+", "a folder name (letters, digits, _ . -)");
  const std::string out = root["out"] ? reader.text(root["out"], "out", ".+", "a folder") : "runs";
  sweep.out = out + "/" + sweep.name;
  if (root["keep"]) sweep.keep = reader.text(root["keep"], "keep", ".+", "a folder") + "/" + sweep.name;
  const std::string default_base = root["base"] ? reader.text(root["base"], "base", ".+", "a config file") : "";
  std::vector<std::string> common_overrides;
  if (root["set"]) reader.flatten(root["set"], "", common_overrides);
  const auto common_grid = reader.grid(root["grid"], "grid");

  const YAML::Node runs = root["runs"];
  if (!runs.IsSequence() || runs.size() == 0) reader.fail(runs, "runs", "expected a non-empty list of blocks");
  std::map<std::string, size_t> block_of_point;  // point name -> its block, to report duplicates
  for (size_t b = 0; b < runs.size(); ++b) {
    const YAML::Node block = runs[b];
    const std::string where = "runs[" + std::to_string(b) + "]";
    reader.check_keys(block, where, {"base", "label", "set", "grid"});
    std::string base = default_base;
    if (block["base"]) base = reader.text(block["base"], where + ".base", ".+", "a config file");
    if (base.empty()) reader.fail(block, where + ".base", "missing (and the sweep has no top-level base)");
    std::vector<std::string> block_overrides = common_overrides;
    if (block["set"]) reader.flatten(block["set"], "", block_overrides);
    auto axes = reader.grid(block["grid"], where + ".grid");
    for (const auto& axis : common_grid) {
      if (std::any_of(axes.begin(), axes.end(), [&](const auto& own) { return own.first == axis.first; }))
        reader.fail(block["grid"], where + ".grid." + axis.first, "is also in the sweep's grid; set it in one place");
      axes.push_back(axis);
    }
    std::vector<std::string> keys;
    for (const auto& axis : axes) keys.push_back(axis.first);

    std::string label;
    if (block["label"]) label = reader.text(block["label"], where + ".label", "[A-Za-z0-9_.+-]+", "a name (letters, digits, _ . + -)");
    // Every combination of the axes, the last varying fastest.
    size_t count = 1;
    for (const auto& axis : axes) count *= axis.second.size();
    for (size_t index = 0; index < count; ++index) {
      SweepPoint point;
      point.base = base;
      point.overrides = block_overrides;
      size_t rest = index;
      std::vector<size_t> choice(axes.size());
      for (size_t a = axes.size(); a-- > 0;) {
        choice[a] = rest % axes[a].second.size();
        rest /= axes[a].second.size();
      }
      std::string suffix;
      for (size_t a = 0; a < axes.size(); ++a) {
        const YAML::Node& value = axes[a].second[choice[a]];
        point.overrides.push_back(axes[a].first + "=" + YamlFileReader::yaml_text(value));
        point.grid_values.emplace_back(axes[a].first, YamlFileReader::yaml_text(value));
        suffix += "-" + grid_key_label(axes[a].first, keys) + value_label(value);
      }
      try {
        point.config = load_config(base, point.overrides);
      } catch (const ConfigError& error) {
        reader.fail(block, where, "a point of this block has an invalid config: " + std::string(error.what()));
      }
      point.label = label.empty() ? kind_of(point.config.optimizer) : label;
      point.name = point.label + suffix;
      const auto [existing, inserted] = block_of_point.emplace(point.name, b);
      if (!inserted)
        reader.fail(block, where, "point " + point.name + " is also made by runs[" + std::to_string(existing->second) +
                                      "]; give the blocks different labels");
      sweep.points.push_back(std::move(point));
    }
  }
  return sweep;
}

Sweep load_sweep(const std::string& path) {
  std::error_code error;
  if (fs::is_directory(path, error)) throw ConfigError(path + ": cannot read the sweep file: it is a directory");
  if (!fs::exists(path, error)) throw ConfigError(path + ": cannot read the sweep file: no such file");
  return parse_sweep(read_file(path), path);
}

const char* point_state_name(PointState state) {
  switch (state) {
    case PointState::Pending:
      return "pending";
    case PointState::Resumable:
      return "resumable";
    case PointState::Completed:
      return "completed";
    case PointState::Kept:
      return "kept";
    case PointState::Diverged:
      return "diverged";
    case PointState::Stale:
      return "stale";
  }
  return "?";
}

PointStatus point_status(const Sweep& sweep, const SweepPoint& point) {
  // A finished or diverged result, in the kept folder first: it is what a fresh clone has.
  for (const std::string& dir : {kept_dir_of(sweep, point), run_dir_of(sweep, point)}) {
    if (dir.empty()) continue;
    const bool finished = run_completed(dir);
    const auto [status, message] = recorded_status(dir);
    if (!finished && status != "diverged") continue;
    const std::string mismatch = config_mismatch(dir, point);
    if (!mismatch.empty())
      return {PointState::Stale, dir + " was made with a different config (" + mismatch +
                                     "); move it away to run this point again"};
    if (!finished) return {PointState::Diverged, message};
    return {dir == kept_dir_of(sweep, point) ? PointState::Kept : PointState::Completed, ""};
  }
  if (fs::exists(run_dir_of(sweep, point) + "/checkpoint.json")) return {PointState::Resumable, ""};
  return {PointState::Pending, ""};
}

int run_sweep(const Sweep& sweep, const SweepOptions& options, std::ostream& out) {
  std::vector<const SweepPoint*> selected;
  for (const SweepPoint& point : sweep.points)
    if (options.only.empty() || fnmatch(options.only.c_str(), point.name.c_str(), 0) == 0) selected.push_back(&point);
  if (selected.empty()) throw ConfigError(sweep.file + ": no point matches --only " + options.only);

  int failures = 0;
  size_t number = 0;
  for (const SweepPoint* point : selected) {
    ++number;
    const std::string run_dir = run_dir_of(sweep, *point);
    const std::string prefix = "[" + std::to_string(number) + "/" + std::to_string(selected.size()) + "] " + point->name;
    const PointStatus status = point_status(sweep, *point);
    if (options.dry_run) {
      out << prefix << ": " << point_state_name(status.state);
      for (const auto& [key, value] : point->grid_values) out << "  " << key << "=" << value;
      out << "  (" << point->base << ")" << (status.detail.empty() ? "" : "\n    " + status.detail) << "\n";
      continue;
    }
    switch (status.state) {
      case PointState::Completed:
        copy_kept_files(run_dir, kept_dir_of(sweep, *point));
        [[fallthrough]];
      case PointState::Kept:
        out << prefix << ": done, skipped  " << summary_text(status.state == PointState::Kept ? kept_dir_of(sweep, *point) : run_dir) << "\n";
        continue;
      case PointState::Diverged:
        out << prefix << ": diverged earlier, skipped (" << status.detail << ")\n";
        continue;
      case PointState::Stale:
        out << prefix << ": not run: " << status.detail << "\n";
        ++failures;
        continue;
      case PointState::Pending:
      case PointState::Resumable:
        break;
    }
    const bool resume = status.state == PointState::Resumable;
    out << prefix << ": " << (resume ? "resuming" : "training") << " -> " << run_dir << "\n" << std::flush;
    // A folder left by a run that stopped before its first checkpoint cannot be continued: set it
    // aside rather than delete what it logged.
    if (!resume && fs::exists(run_dir + "/metrics.jsonl")) {
      const std::string aside = run_dir + ".interrupted-" + utc_stamp();
      fs::rename(run_dir, aside);
      out << "  (an earlier attempt without a checkpoint was moved to " << aside << ")\n";
    }
    try {
      fs::create_directories(run_dir);
      fs::remove(run_dir + "/" + kSweepStatusFile);
      write_file_atomic(run_dir + "/" + kSweepPointFile, dump_json(point_json(sweep, *point)) + "\n");
      TrainOptions train_options;
      (resume ? train_options.resume_dir : train_options.out_dir) = run_dir;
      train_options.quiet = options.quiet;
      train(point->config, train_options);
      // What the loss means, in characters: a short sample from each finished text model.
      if (point->config.data.kind == DataKind::TextChar && std::holds_alternative<GptOptions>(point->config.model)) {
        SampleOptions sample;
        sample.tokens = 300;
        write_file_atomic(run_dir + "/" + kSampleFile, sample_text(run_dir, sample));
      }
      copy_kept_files(run_dir, kept_dir_of(sweep, *point));
      out << prefix << ": completed  " << summary_text(run_dir) << "\n";
    } catch (const TrainingInterrupted& error) {
      // The user asked to stop: not the next point. The point resumes on the next run of the sweep.
      out << prefix << ": interrupted: " << error.what() << "\n"
          << "sweep " << sweep.name << " stopped; run it again to resume\n"
          << std::flush;
      throw;
    } catch (const TrainingDiverged& error) {
      write_status(run_dir, "diverged", error.what());
      copy_kept_files(run_dir, kept_dir_of(sweep, *point));
      out << prefix << ": diverged: " << error.what() << "\n";
    } catch (const std::exception& error) {
      const std::string message = without_json_error_ids(error.what());
      if (fs::is_directory(run_dir)) write_status(run_dir, "failed", message);
      out << prefix << ": FAILED: " << message << "\n";
      ++failures;
    }
    out << std::flush;
  }
  if (!options.dry_run)
    out << "sweep " << sweep.name << ": " << selected.size() - failures << " of " << selected.size()
        << " points done or diverged" << (failures ? ", " + std::to_string(failures) + " failed" : "") << "\n";
  return failures;
}

}  // namespace ml
