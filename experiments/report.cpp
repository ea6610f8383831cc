#include "experiments/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <ostream>
#include <set>
#include <sstream>
#include <stdexcept>

#include "experiments/config.h"
#include "experiments/report_stats.h"
#include "experiments/run_dir.h"
#include "experiments/sweep.h"
#include "experiments/yaml_file_reader.h"
#include "framework/io/atomic_file.h"
#include "framework/io/json.h"

namespace fs = std::filesystem;

namespace ml {
namespace {

// ------------------------------------------------------------------ reading runs

struct Run {
  std::string dir;
  std::string label;  // the sweep block's label, else the config's name
  RunConfig config;
  bool diverged = false;
  Json summary;             // null when diverged
  std::vector<Json> evals;  // the metrics lines holding val_loss, in step order
  std::string sample;       // sample.txt, when the run has one
};

bool is_run_dir(const fs::path& dir) {
  return fs::exists(dir / "config.yaml") && fs::exists(dir / "metrics.jsonl");
}

bool finished_or_diverged(const fs::path& dir) {
  return run_completed(dir.string()) || recorded_status(dir.string()).first == "diverged";
}

// A sweep point's method name: its block's label, plus the grid values it ran at other than the
// learning rate (chosen per method) and the seed (aggregated over), so that a grid over another
// key (CacheMuon's gamma) gives one method per value: "cache_muon-gamma3.0".
std::string configuration_label(const Json& point) {
  std::string label = point.at("label").get<std::string>();
  if (!point.contains("grid")) return label;
  std::vector<std::string> keys;
  for (const auto& entry : point.at("grid").items()) keys.push_back(entry.key());
  for (const auto& [key, value] : point.at("grid").items())
    if (key != "optimizer.lr" && key != "seed") label += "-" + grid_key_label(key, keys) + value.get<std::string>();
  return label;
}

Run read_run(const fs::path& dir) {
  Run run;
  run.dir = dir.string();
  try {
    run.config = load_run_config((dir / "config.yaml").string());
    run.label = run.config.name;
    if (fs::exists(dir / kSweepPointFile))
      run.label = configuration_label(parse_json(read_file((dir / kSweepPointFile).string())));
    if (run_completed(dir.string()))
      run.summary = parse_json(read_file((dir / "summary.json").string()));
    else
      run.diverged = true;
    std::istringstream lines(read_file((dir / "metrics.jsonl").string()));
    for (std::string line; std::getline(lines, line);) {
      if (line.empty()) continue;
      Json entry = parse_json(line);
      if (entry.contains("val_loss")) run.evals.push_back(std::move(entry));
    }
    if (fs::exists(dir / kSampleFile)) run.sample = read_file((dir / kSampleFile).string());
  } catch (const std::exception& error) {
    throw std::runtime_error(run.dir + ": cannot read this run: " + error.what());
  }
  return run;
}

void collect_runs(const fs::path& path, std::vector<Run>& runs, int& incomplete) {
  if (!fs::exists(path)) throw std::runtime_error(path.string() + ": no such run folder");
  if (is_run_dir(path)) {
    if (finished_or_diverged(path))
      runs.push_back(read_run(path));
    else
      ++incomplete;
    return;
  }
  if (!fs::is_directory(path)) throw std::runtime_error(path.string() + ": not a run folder (no config.yaml and metrics.jsonl)");
  std::vector<fs::path> children;
  for (const auto& entry : fs::directory_iterator(path))
    if (entry.is_directory()) children.push_back(entry.path());
  std::sort(children.begin(), children.end());
  for (const fs::path& child : children) collect_runs(child, runs, incomplete);
}

// ------------------------------------------------------------------ grouping

// The config with what a seed grid varies blanked out: runs with equal keys differ only by seed.
std::string configuration_key(const Run& run, bool without_lr) {
  RunConfig config = run.config;
  config.seed = 0;
  config.name.clear();
  config.threads = 0;
  if (without_lr) set_learning_rate(config.optimizer, 0.0);
  return run.label + "\n" + to_yaml(config);
}

struct Target {
  std::string metric;  // val_loss | val_acc
  double value = 0.0;
  bool reached(double x) const { return metric == "val_acc" ? x >= value : x <= value; }
  std::string text() const { return metric + (metric == "val_acc" ? " >= " : " <= ") + format_general(value); }
};

Target parse_target(const std::string& text) {
  const size_t equals = text.find('=');
  const std::string metric = text.substr(0, equals);
  char* end = nullptr;
  const double value = equals == std::string::npos ? 0.0 : std::strtod(text.c_str() + equals + 1, &end);
  if (equals == std::string::npos || (metric != "val_loss" && metric != "val_acc") || *end != '\0' ||
      end == text.c_str() + equals + 1 || !std::isfinite(value))
    throw std::runtime_error("--target " + text + ": expected val_loss=NUMBER or val_acc=NUMBER");
  return {metric, value};
}

double number_or_nan(const Json& object, const std::string& key) {
  return object.contains(key) && object.at(key).is_number() ? object.at(key).get<double>() : std::nan("");
}

struct Configuration {
  std::string key, family;
  std::string label;
  double lr = 0.0;
  int64_t steps = 0;
  std::vector<const Run*> runs;  // all seeds, diverged ones included
  std::vector<const Run*> finished;

  Stats stat(const std::string& key) const {
    std::vector<double> values;
    for (const Run* run : finished) values.push_back(number_or_nan(run->summary, key));
    return Stats::of(values);
  }
  // numerator / denominator of each run, times `scale` (a change of unit).
  Stats ratio(const std::string& numerator, const std::string& denominator, double scale = 1.0) const {
    std::vector<double> values;
    for (const Run* run : finished)
      values.push_back(scale * number_or_nan(run->summary, numerator) / number_or_nan(run->summary, denominator));
    return Stats::of(values);
  }
  // Milliseconds per optimizer step, the unit the papers' speed claims use.
  Stats optimizer_ms_per_step() const { return ratio("optimizer_s", "steps", 1e3); }
  Stats optimizer_metric(const std::string& key) const {
    std::vector<double> values;
    for (const Run* run : finished)
      if (run->summary.contains("optimizer_metrics"))
        values.push_back(number_or_nan(run->summary.at("optimizer_metrics"), key));
    return Stats::of(values);
  }
  // The first evaluation reaching the target, per run: its step and its training seconds.
  std::pair<Stats, Stats> to_target(const Target& target, int& reached) const {
    std::vector<double> steps, seconds;
    reached = 0;
    for (const Run* run : runs)
      for (const Json& eval : run->evals) {
        const double value = number_or_nan(eval, target.metric);
        if (std::isnan(value) || !target.reached(value)) continue;
        ++reached;
        steps.push_back(eval.at("step").get<double>());
        seconds.push_back(number_or_nan(eval, "train_s"));
        break;
      }
    return {Stats::of(steps), Stats::of(seconds)};
  }
};

struct Family {
  std::string label;
  std::vector<Configuration*> configurations;  // by learning rate
  Configuration* best = nullptr;
  bool best_at_edge = false;
};

// ------------------------------------------------------------------ the report

class Report {
 public:
  Report(std::vector<Run> runs, const ReportOptions& options) : runs_(std::move(runs)), options_(options) {
    for (const std::string& text : options.targets) targets_.push_back(parse_target(text));
    classifier_ = std::all_of(runs_.begin(), runs_.end(), [](const Run& run) {
      return run.diverged || (run.summary.contains("val_acc") && run.summary.at("val_acc").is_number());
    });
    metric_ = classifier_ ? "val_acc" : "val_loss";
    group();
  }

  // `h1` is the heading level of the title ("#"); figure links are prefixed with `figures`.
  std::string markdown(int incomplete, const std::string& h1 = "#", const std::string& figures = "") const;

  // The method's row in the headline table; null when no run has that label.
  const Configuration* headline_of(const std::string& label) const {
    for (const Configuration* c : headline_)
      if (c->label == label) return c;
    return nullptr;
  }
  const std::string& metric() const { return metric_; }
  bool classifier() const { return classifier_; }
  std::string csv() const;
  Json plot_data() const;

 private:
  bool better(double a, double b) const {
    if (std::isnan(b)) return !std::isnan(a);
    return !std::isnan(a) && (classifier_ ? a > b : a < b);
  }
  double quality(const Configuration& c) const {
    // A configuration with a diverged seed is not a candidate: it is not reliable at that rate.
    return c.finished.size() < c.runs.size() ? std::nan("") : c.stat(metric_).mean;
  }

  // Which machines the finished runs ran on (summary.json's `host`), most runs first, as a
  // paragraph; empty when no run records one (runs written before muonlab recorded it).
  std::string machines() const {
    std::map<std::string, int> runs_on;
    bool any_recorded = false;
    for (const Run& run : runs_) {
      if (run.diverged) continue;
      const bool recorded = run.summary.contains("host") && run.summary.at("host").is_string();
      any_recorded = any_recorded || recorded;
      ++runs_on[recorded ? run.summary.at("host").get<std::string>() : "not recorded"];
    }
    if (!any_recorded) return "";
    std::vector<std::pair<std::string, int>> hosts(runs_on.begin(), runs_on.end());
    std::stable_sort(hosts.begin(), hosts.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    std::string text = "Machines (`host` in summary.json; wall-clock compares only within one):";
    for (size_t i = 0; i < hosts.size(); ++i)
      text += (i ? "; " : " ") + hosts[i].first + " (" + std::to_string(hosts[i].second) + (hosts[i].second == 1 ? " run)" : " runs)");
    return text + ".\n\n";
  }

  void group() {
    std::map<std::string, size_t> index;
    for (const Run& run : runs_) {
      const std::string key = configuration_key(run, false);
      auto [it, inserted] = index.emplace(key, configurations_.size());
      if (inserted) {
        Configuration c;
        c.key = key;
        c.family = configuration_key(run, true);
        c.label = run.label;
        c.lr = learning_rate(run.config.optimizer);
        c.steps = run.summary.is_null() ? 0 : run.summary.at("steps").get<int64_t>();
        configurations_.push_back(c);
      }
      Configuration& c = configurations_[it->second];
      c.runs.push_back(&run);
      if (!run.diverged) {
        c.finished.push_back(&run);
        c.steps = run.summary.at("steps").get<int64_t>();
      }
    }
    std::map<std::string, size_t> family_index;
    for (Configuration& c : configurations_) {
      auto [it, inserted] = family_index.emplace(c.family, families_.size());
      if (inserted) families_.push_back({c.label, {}, nullptr, false});
      families_[it->second].configurations.push_back(&c);
    }
    for (Family& family : families_) {
      std::sort(family.configurations.begin(), family.configurations.end(),
                [](const Configuration* a, const Configuration* b) { return a->lr < b->lr; });
      for (Configuration* c : family.configurations)
        if (!family.best || better(quality(*c), quality(*family.best))) family.best = c;
      const auto& grid = family.configurations;
      family.best_at_edge = grid.size() >= 3 && (family.best == grid.front() || family.best == grid.back());
    }
    // Each method's headline: its configuration with the most seeds (the seed runs at the chosen
    // rate), ties broken by quality.
    std::map<std::string, Configuration*> headline;
    for (Configuration& c : configurations_) {
      Configuration*& current = headline[c.label];
      if (!current || c.finished.size() > current->finished.size() ||
          (c.finished.size() == current->finished.size() && better(quality(c), quality(*current))))
        current = &c;
    }
    for (Configuration& c : configurations_)
      if (headline[c.label] == &c) headline_.push_back(&c);
  }

  const Family* grid_of(const std::string& label) const {
    const Family* widest = nullptr;
    for (const Family& family : families_)
      if (family.label == label && (!widest || family.configurations.size() > widest->configurations.size()))
        widest = &family;
    return widest;
  }

  // Whether the learning-rate figure shows this family: a method's widest grid of two or more rates.
  bool plots_grid(const Family& family) const {
    return family.configurations.size() >= 2 && grid_of(family.label) == &family;
  }
  bool plots_any_grid() const {
    return std::any_of(families_.begin(), families_.end(), [this](const Family& f) { return plots_grid(f); });
  }

  std::vector<Run> runs_;
  ReportOptions options_;
  std::vector<Target> targets_;
  bool classifier_ = false;
  std::string metric_;
  std::vector<Configuration> configurations_;
  std::vector<Family> families_;
  std::vector<const Configuration*> headline_;

};

std::string cell(const Stats& stats, int digits) {
  if (stats.n == 0) return "-";
  return stats.n > 1 ? format_value(stats.mean, digits) + " ± " + format_value(stats.std, digits)
                     : format_value(stats.mean, digits);
}

std::string Report::markdown(int incomplete, const std::string& h1, const std::string& figures) const {
  const std::string h2 = h1 + "#";
  std::ostringstream md;
  int diverged = 0;
  for (const Run& run : runs_) diverged += run.diverged;
  md << h1 << " " << options_.title << "\n\n";
  md << runs_.size() << " runs (" << diverged << " diverged), " << configurations_.size() << " configurations, from";
  for (const std::string& path : options_.run_paths) md << " `" << path << "`";
  md << (incomplete ? "; " + std::to_string(incomplete) + " unfinished runs left out" : "") << ".\n\n";
  md << machines();
  const std::string direction = classifier_ ? "higher is better" : "lower is better";
  md << "Values are mean ± sample standard deviation over seeds (n = seeds). Learning rates are chosen by the final "
     << metric_ << " (" << direction << ") on the validation split, which is also the split reported here (there is "
     << "no separate test split), so the chosen rows are slightly optimistic. `train s` is wall-clock of the training "
        "steps (evaluations excluded); `optimizer share` is the optimizer step's part of it, and `optimizer ms/step` its "
        "mean time per step.\n\n";

  md << h2 << " Each method at its chosen learning rate\n\n";
  md << "| method | lr | steps | seeds | final " << metric_ << " | best " << metric_ << (classifier_ ? " | final val_loss" : "");
  for (const Target& target : targets_) md << " | steps to " << target.text() << " | s to " << target.text();
  md << " | train s | optimizer share | optimizer ms/step | samples/s | peak MB | cache hits |\n|";
  const size_t columns = 12 + (classifier_ ? 1 : 0) + 2 * targets_.size();
  for (size_t i = 0; i < columns; ++i) md << " --- |";
  md << "\n";
  const int digits = 4;
  for (const Configuration* c : headline_) {
    const Family* grid = grid_of(c->label);
    std::string lr = format_general(c->lr);
    if (grid && grid->best && grid->best->lr != c->lr && grid->configurations.size() > 1)
      lr += " (grid best: " + format_general(grid->best->lr) + ")";
    md << "| " << c->label << " | " << lr << " | " << c->steps << " | " << c->finished.size()
       << (c->finished.size() < c->runs.size() ? " (+" + std::to_string(c->runs.size() - c->finished.size()) + " diverged)" : "")
       << " | " << cell(c->stat(metric_), digits) << " | " << cell(c->stat("best_" + metric_), digits);
    if (classifier_) md << " | " << cell(c->stat("val_loss"), digits);
    for (const Target& target : targets_) {
      int reached = 0;
      const auto [steps, seconds] = c->to_target(target, reached);
      const std::string suffix =
          reached < static_cast<int>(c->runs.size()) ? " (" + std::to_string(reached) + "/" + std::to_string(c->runs.size()) + " reached)" : "";
      md << " | " << (reached ? cell(steps, 0) : "never") << suffix << " | " << (reached ? cell(seconds, 1) : "never");
    }
    const Stats cache = c->optimizer_metric("cache_hit_rate");
    md << " | " << cell(c->stat("train_s"), 1) << " | " << cell(c->ratio("optimizer_s", "train_s"), 3) << " | "
       << cell(c->optimizer_ms_per_step(), 1) << " | " << cell(c->ratio("samples", "train_s"), 1) << " | "
       << cell(c->stat("peak_rss_mb"), 0) << " | "
       << (cache.n ? cell(cache, 3) : "") << " |\n";
  }

  md << "\n" << h2 << " Learning-rate grids\n\nFinal " << metric_ << " per learning rate (mean over seeds; n when more than one; "
     << "`div` when a seed diverged). **Bold**: the chosen rate.\n\n| method | steps | grid | chosen |\n| --- | --- | --- | --- |\n";
  for (const Family& family : families_) {
    md << "| " << family.label << " | " << family.configurations.front()->steps << " | ";
    for (const Configuration* c : family.configurations) {
      std::string value = c->finished.size() < c->runs.size() ? "div" : format_value(c->stat(metric_).mean, 4);
      if (c->runs.size() > 1) value += " (n=" + std::to_string(c->runs.size()) + ")";
      const std::string entry = format_general(c->lr) + ": " + value;
      md << (c == family.best ? "**" + entry + "**" : entry) << (c == family.configurations.back() ? "" : ", ");
    }
    md << " | " << (family.best ? format_general(family.best->lr) : "-")
       << (family.best_at_edge ? " (at the edge of the grid: widen it)" : "") << " |\n";
  }

  md << "\n" << h2 << " Figures\n\n";
  const std::string metric_name = classifier_ ? "validation accuracy" : "validation loss";
  md << "- `curves_step.png`: " << metric_name << " against training step, each method at its chosen rate "
     << "(line: mean over seeds, band: min to max).\n";
  md << "- `curves_time.png`: the same against wall-clock seconds of training (evaluations excluded).\n";
  const bool any_grid = plots_any_grid();
  if (any_grid)
    md << "- `lr_grid.png`: final " << metric_ << " against learning rate, one line per method (diverged rates left out).\n";
  md << "- `optimizer_share.png`: the optimizer step's share of training time, each method at its chosen rate.\n";
  if (!any_grid) md << "- No learning-rate figure: every method ran at a single rate here.\n";
  md << "\n![validation against step](" << figures << "curves_step.png)\n![validation against time](" << figures
     << "curves_time.png)\n";
  if (any_grid) md << "![learning-rate grid](" << figures << "lr_grid.png)\n";
  md << "![optimizer share](" << figures << "optimizer_share.png)\n";

  bool any_sample = false;
  for (const Configuration* c : headline_) any_sample = any_sample || (!c->finished.empty() && !c->finished.front()->sample.empty());
  if (any_sample) {
    md << "\n" << h2 << " Samples\n\n300 characters from each method's model (its first seed at the chosen rate), from a newline, "
          "temperature 0.8, so that the losses above can be read as text.\n";
    for (const Configuration* c : headline_) {
      if (c->finished.empty() || c->finished.front()->sample.empty()) continue;
      const Run& run = *c->finished.front();
      md << "\n**" << c->label << "** (val_loss " << format_value(number_or_nan(run.summary, "val_loss"), 4) << "):\n\n";
      std::istringstream lines(run.sample);
      for (std::string line; std::getline(lines, line);) md << "    " << line << "\n";
    }
  }
  return md.str();
}

std::string Report::csv() const {
  std::ostringstream out;
  out << "label,lr,steps,seeds,diverged,chosen,headline,val_loss_mean,val_loss_std,best_val_loss_mean,val_acc_mean,"
         "val_acc_std,best_val_acc_mean,train_s_mean,optimizer_s_mean,optimizer_share,optimizer_ms_per_step,"
         "samples_per_s,peak_rss_mb,"
         "cache_hit_rate,flops_ratio";
  for (const Target& target : targets_) out << ",steps_to_" << target.metric << "_" << target.value << ",s_to_" << target.metric << "_" << target.value;
  out << "\n";
  const auto number = format_precise;
  for (const Configuration& c : configurations_) {
    bool chosen = false;
    for (const Family& family : families_) chosen = chosen || family.best == &c;
    const bool headline = std::find(headline_.begin(), headline_.end(), &c) != headline_.end();
    out << c.label << "," << number(c.lr) << "," << c.steps << "," << c.finished.size() << ","
        << c.runs.size() - c.finished.size() << "," << chosen << "," << headline << ","
        << number(c.stat("val_loss").mean) << "," << number(c.stat("val_loss").std) << ","
        << number(c.stat("best_val_loss").mean) << "," << number(c.stat("val_acc").mean) << ","
        << number(c.stat("val_acc").std) << "," << number(c.stat("best_val_acc").mean) << ","
        << number(c.stat("train_s").mean) << ","
        << number(c.stat("optimizer_s").mean) << "," << number(c.ratio("optimizer_s", "train_s").mean) << ","
        << number(c.optimizer_ms_per_step().mean) << "," << number(c.ratio("samples", "train_s").mean) << ","
        << number(c.stat("peak_rss_mb").mean) << ","
        << number(c.optimizer_metric("cache_hit_rate").mean) << "," << number(c.optimizer_metric("flops_ratio").mean);
    for (const Target& target : targets_) {
      int reached = 0;
      const auto [steps, seconds] = c.to_target(target, reached);
      out << "," << (reached == static_cast<int>(c.runs.size()) ? number(steps.mean) : "") << ","
          << (reached == static_cast<int>(c.runs.size()) ? number(seconds.mean) : "");
    }
    out << "\n";
  }
  return out.str();
}

Json Report::plot_data() const {
  Json curves = Json::array();
  for (const Configuration* c : headline_) {
    if (c->finished.empty()) continue;
    // The evaluation steps every finished seed has.
    std::map<double, std::vector<std::pair<double, double>>> at_step;  // step -> (value, train_s) per seed
    for (const Run* run : c->finished)
      for (const Json& eval : run->evals)
        at_step[eval.at("step").get<double>()].push_back({number_or_nan(eval, metric_), number_or_nan(eval, "train_s")});
    Json steps = Json::array(), seconds = Json::array(), mean = Json::array(), low = Json::array(), high = Json::array();
    for (const auto& [step, values] : at_step) {
      if (values.size() != c->finished.size()) continue;
      std::vector<double> metric, time;
      for (const auto& [value, train_s] : values) {
        metric.push_back(value);
        time.push_back(train_s);
      }
      const Stats m = Stats::of(metric), t = Stats::of(time);
      steps.push_back(step);
      seconds.push_back(std::isnan(t.mean) ? Json() : Json(t.mean));
      mean.push_back(m.mean);
      low.push_back(m.min);
      high.push_back(m.max);
    }
    curves.push_back(Json::object({{"label", c->label}, {"steps", steps}, {"train_s", seconds}, {"mean", mean},
                                   {"min", low}, {"max", high}, {"seeds", static_cast<int64_t>(c->finished.size())}}));
  }
  Json grids = Json::array();
  for (const Family& family : families_) {
    if (!plots_grid(family)) continue;
    Json lrs = Json::array(), mean = Json::array(), low = Json::array(), high = Json::array();
    for (const Configuration* c : family.configurations) {
      if (c->finished.size() < c->runs.size()) continue;
      const Stats s = c->stat(metric_);
      lrs.push_back(c->lr);
      mean.push_back(s.mean);
      low.push_back(s.min);
      high.push_back(s.max);
    }
    grids.push_back(Json::object({{"label", family.label}, {"lr", lrs}, {"mean", mean}, {"min", low}, {"max", high}}));
  }
  Json shares = Json::array();
  for (const Configuration* c : headline_) {
    if (c->finished.empty()) continue;
    shares.push_back(Json::object({{"label", c->label},
                                   {"optimizer_s", c->stat("optimizer_s").mean},
                                   {"train_s", c->stat("train_s").mean},
                                   {"share", c->ratio("optimizer_s", "train_s").mean}}));
  }
  return Json::object({{"title", options_.title},
                       {"metric", metric_},
                       {"curves", curves},
                       {"lr_grids", grids},
                       {"optimizer_share", shares}});
}

std::string shell_quoted(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}


// Writes report.md, report.csv, report_data.json and the figures of `report` into `dir`.
int write_report(const Report& report, int incomplete, const std::string& dir, std::ostream& out, std::ostream& err) {
  fs::create_directories(dir);
  const std::string data_path = dir + "/report_data.json";
  write_file_atomic(dir + "/report.md", report.markdown(incomplete));
  write_file_atomic(dir + "/report.csv", report.csv());
  write_file_atomic(data_path, dump_json(report.plot_data()) + "\n");
  out << "report: " << dir << "/report.md\n";

  // Debian's python3 is the one setup-deps.sh gives matplotlib; another python3 may come first on PATH.
  // MUONLAB_PYTHON names another (a virtual environment's, where matplotlib lives there).
  const char* chosen_python = std::getenv("MUONLAB_PYTHON");
  const std::string python = chosen_python && *chosen_python ? shell_quoted(chosen_python)
                             : fs::exists("/usr/bin/python3") ? "/usr/bin/python3"
                                                              : "python3";
  const std::string script = (fs::read_symlink("/proc/self/exe").parent_path() / "plot_report.py").string();
  const std::string command = python + " " + shell_quoted(script) + " " + shell_quoted(data_path) + " " + shell_quoted(dir);
  if (std::system(command.c_str()) != 0) {
    err << "error: the figures were not drawn (`" << command << "` failed; it needs python3 with matplotlib, "
        << "which scripts/setup-deps.sh installs, or MUONLAB_PYTHON naming a python that has it). The tables were "
        << "written.\n";
    return 1;
  }
  return 0;
}

// ------------------------------------------------------------------ the study

struct StudySection {
  std::string name, title, note;
  ReportOptions options;
};

// A claim of a paper and the comparison of headline rows that tests it.
struct Claim {
  std::string claim, source, section, note;
  std::string kind;  // no_worse | better | fewer_steps | cheaper | reaches
  std::string method, baseline;
  double tolerance = 0.0;  // no_worse: allowed loss in the section's metric
  double flops_ratio_below = 0.0;  // no_worse, when > 0: the method's orthogonalization FLOPs over fresh Muon's must be under it
  double factor = 1.0;     // cheaper: the claimed speed-up of the optimizer step
  std::string target;      // fewer_steps: metric=value
  double value = 0.0;      // reaches: the claimed metric value
};

struct Study {
  std::string title, intro;
  std::vector<StudySection> sections;
  std::vector<Claim> claims;
};

Study load_study(const std::string& path) {
  const YamlFileReader reader(path);
  if (!fs::exists(path)) throw ConfigError(path + ": cannot read the study file: no such file");
  const YAML::Node root = reader.load(read_file(path));
  reader.check_keys(root, "", {"title", "intro", "sections", "claims"});
  Study study;
  const auto text = [&](const YAML::Node& node, const std::string& key, bool required) -> std::string {
    if (!node[key]) {
      if (required) reader.fail(node, key, "missing");
      return "";
    }
    return reader.text(node[key], key, "[\\s\\S]+", "a text");
  };
  study.title = text(root, "title", true);
  study.intro = text(root, "intro", false);
  study.intro.erase(study.intro.find_last_not_of(" \n") + 1);
  if (!root["sections"] || !root["sections"].IsSequence())
    reader.fail(root, "sections", "expected a list of sections (name, title, runs, targets, note)");
  for (const YAML::Node& node : root["sections"]) {
    reader.check_keys(node, "sections[]", {"name", "title", "runs", "targets", "note"});
    StudySection section;
    section.name = reader.text(node["name"], "sections[].name", "[A-Za-z0-9_.-]+", "a folder name");
    section.title = text(node, "title", true);
    section.note = text(node, "note", false);
    section.options.title = section.title;
    for (const char* key : {"runs", "targets"}) {
      if (!node[key]) continue;
      if (!node[key].IsSequence()) reader.fail(node[key], std::string("sections[].") + key, "expected a list");
      for (const YAML::Node& item : node[key])
        (std::string(key) == "runs" ? section.options.run_paths : section.options.targets)
            .push_back(reader.text(item, key, ".+", "a text"));
    }
    for (const std::string& target : section.options.targets) parse_target(target);  // validated now, not after the runs
    study.sections.push_back(section);
  }
  if (root["claims"]) {
    for (const YAML::Node& node : root["claims"]) {
      reader.check_keys(node, "claims[]", {"claim", "source", "section", "check", "note"});
      Claim claim;
      claim.claim = text(node, "claim", true);
      claim.source = text(node, "source", true);
      claim.section = text(node, "section", true);
      claim.note = text(node, "note", false);
      if (std::none_of(study.sections.begin(), study.sections.end(), [&](const StudySection& s) { return s.name == claim.section; }))
        reader.fail(node["section"], "claims[].section", "no section is named " + claim.section);
      const YAML::Node check = node["check"];
      if (!check) reader.fail(node, "claims[].check", "missing");
      reader.check_keys(check, "claims[].check", {"kind", "method", "baseline", "tolerance", "flops_ratio_below", "factor", "target", "value"});
      claim.kind = reader.text(check["kind"], "check.kind", "no_worse|better|fewer_steps|cheaper|reaches",
                               "no_worse, better, fewer_steps, cheaper or reaches");
      claim.method = reader.text(check["method"], "check.method", ".+", "a method label");
      if (claim.kind != "reaches") claim.baseline = reader.text(check["baseline"], "check.baseline", ".+", "a method label");
      const auto number = [&](const char* key) {
        const std::optional<double> value =
            check[key] && check[key].IsScalar() ? std::optional<double>(std::strtod(check[key].Scalar().c_str(), nullptr)) : std::nullopt;
        if (!value || !std::isfinite(*value)) reader.fail(check, std::string("check.") + key, "expected a number");
        return *value;
      };
      if (claim.kind == "no_worse") claim.tolerance = number("tolerance");
      if (claim.kind == "no_worse" && check["flops_ratio_below"]) claim.flops_ratio_below = number("flops_ratio_below");
      if (claim.kind == "cheaper") claim.factor = number("factor");
      if (claim.kind == "reaches") claim.value = number("value");
      if (claim.kind == "fewer_steps") {
        claim.target = reader.text(check["target"], "check.target", ".+", "metric=value");
        parse_target(claim.target);
      }
      study.claims.push_back(claim);
    }
  }
  return study;
}

std::string described(const Configuration& c, const std::string& metric) {
  return c.label + " " + cell(c.stat(metric), 4) + " (n=" + std::to_string(c.finished.size()) + ")";
}

// The verdict on a claim from the section's headline rows, and the numbers behind it.
std::pair<std::string, std::string> judge_rows(const Claim& claim, const Report* report);

// judge_rows, marked provisional while a compared row has a single seed: without a second seed
// nothing says whether a difference is more than noise.
std::pair<std::string, std::string> judge(const Claim& claim, const Report* report) {
  auto [verdict, measured] = judge_rows(claim, report);
  if (verdict == "not measured yet") return {verdict, measured};
  for (const std::string& label : {claim.method, claim.baseline}) {
    const Configuration* row = label.empty() ? nullptr : report->headline_of(label);
    if (row && row->finished.size() < 2) return {verdict + ", provisional (one seed)", measured};
  }
  return {verdict, measured};
}

std::pair<std::string, std::string> judge_rows(const Claim& claim, const Report* report) {
  const Configuration* method = report ? report->headline_of(claim.method) : nullptr;
  const Configuration* baseline = report && !claim.baseline.empty() ? report->headline_of(claim.baseline) : nullptr;
  if (!method || method->finished.empty() || (claim.kind != "reaches" && (!baseline || baseline->finished.empty())))
    return {"not measured yet", "no finished runs of " + claim.method + (claim.baseline.empty() ? "" : " and " + claim.baseline)};
  const std::string metric = report->metric();
  const double sign = report->classifier() ? -1.0 : 1.0;  // > 0: the method is worse
  if (claim.kind == "reaches") {
    const double mean = method->stat(metric).mean;
    const bool met = report->classifier() ? mean >= claim.value : mean <= claim.value;
    return {met ? "reproduced" : "not at this scale", described(*method, metric) + " against the claimed " + format_general(claim.value)};
  }
  const Stats a = method->stat(metric), b = baseline->stat(metric);
  const std::string numbers = described(*method, metric) + " vs " + described(*baseline, metric);
  const double worse_by = sign * (a.mean - b.mean);
  if (claim.kind == "no_worse") {
    bool met = worse_by <= claim.tolerance;
    std::string text = numbers + ": " +
                       (worse_by <= 0 ? "better by " + format_value(-worse_by, 4) : "worse by " + format_value(worse_by, 4)) +
                       " (tolerance " + format_general(claim.tolerance) + ")";
    if (claim.flops_ratio_below > 0) {
      const double ratio = method->optimizer_metric("flops_ratio").mean;
      met = met && ratio < claim.flops_ratio_below;
      text += "; orthogonalization FLOPs " + format_value(ratio, 2) + "x fresh Muon's (needed: below " +
              format_general(claim.flops_ratio_below) + "x)";
    }
    return {met ? "reproduced" : "not at this scale", text};
  }
  if (claim.kind == "better") {
    // Seed noise: the larger standard deviation of the two (0 with single seeds).
    const double noise = std::max(a.std, b.std);
    const std::string verdict = -worse_by > noise ? "reproduced" : worse_by > noise ? "contradicted" : "not at this scale";
    return {verdict, numbers + ": difference " + format_value(-worse_by, 4) + ", seed noise " + format_value(noise, 4)};
  }
  if (claim.kind == "fewer_steps") {
    const Target target = parse_target(claim.target);
    int reached_a = 0, reached_b = 0;
    const Stats steps_a = method->to_target(target, reached_a).first, steps_b = baseline->to_target(target, reached_b).first;
    const std::string text = "steps to " + target.text() + ": " + claim.method + " " +
                             (reached_a ? cell(steps_a, 0) : "never") + ", " + claim.baseline + " " +
                             (reached_b ? cell(steps_b, 0) : "never");
    if (!reached_a) return {reached_b ? "contradicted" : "not at this scale", text};
    if (!reached_b) return {"reproduced", text};
    return {steps_a.mean < steps_b.mean ? "reproduced" : steps_a.mean > steps_b.mean ? "contradicted" : "not at this scale", text};
  }
  // cheaper: optimizer-step time per step.
  const double method_ms = method->optimizer_ms_per_step().mean, baseline_ms = baseline->optimizer_ms_per_step().mean;
  const double ratio = baseline_ms / method_ms;
  return {ratio >= claim.factor ? "reproduced" : ratio > 1.0 ? "not at this scale" : "contradicted",
          "optimizer step " + format_value(method_ms, 2) + " ms (" + claim.method + ") vs " +
              format_value(baseline_ms, 2) + " ms (" + claim.baseline + "): " + format_value(ratio, 2) +
              "x faster; claimed " + format_general(claim.factor) + "x"};
}

std::string escaped_cell(const std::string& text) {
  std::string cell;
  for (char c : text) cell += c == '|' ? std::string("\\|") : c == '\n' ? std::string(" ") : std::string(1, c);
  return cell;
}

}  // namespace

int run_report(const ReportOptions& options, std::ostream& out, std::ostream& err) {
  if (options.out_dir.empty()) throw std::runtime_error("--out: empty; give the folder for the report");
  std::vector<Run> runs;
  int incomplete = 0;
  for (const std::string& path : options.run_paths) collect_runs(path, runs, incomplete);
  if (runs.empty())
    throw std::runtime_error("no finished run found under the given folders (" + std::to_string(incomplete) +
                             " unfinished)");
  return write_report(Report(std::move(runs), options), incomplete, options.out_dir, out, err);
}

int run_study_report(const std::string& study_path, const std::string& out_path, std::ostream& out, std::ostream& err) {
  if (out_path.empty()) throw std::runtime_error("--out: empty; give the study's path (without .md)");
  const Study study = load_study(study_path);
  const std::string folder = fs::path(out_path).filename().string();
  std::ostringstream md, sections;
  std::map<std::string, std::unique_ptr<Report>> reports;
  int status = 0;
  for (const StudySection& section : study.sections) {
    std::vector<Run> runs;
    int incomplete = 0;
    for (const std::string& path : section.options.run_paths)
      if (fs::exists(path)) collect_runs(path, runs, incomplete);
    sections << "\n## " << section.title << "\n\n" << (section.note.empty() ? "" : section.note + "\n\n");
    if (runs.empty()) {
      sections << "No finished runs yet (" << incomplete << " unfinished).\n";
      continue;
    }
    auto report = std::make_unique<Report>(std::move(runs), section.options);
    const std::string dir = out_path + "/" + section.name;
    status = std::max(status, write_report(*report, incomplete, dir, out, err));
    std::string body = report->markdown(incomplete, "##", folder + "/" + section.name + "/");
    sections << body.substr(body.find("\n\n") + 2);  // its own title is the section heading
    reports[section.name] = std::move(report);
  }
  md << "# " << study.title << "\n\n" << (study.intro.empty() ? "" : study.intro + "\n\n");
  md << "Made by `muonlab report --study " << study_path << " --out " << out_path
     << "` from the runs kept in the repository; not edited by hand.\n\n## Claims\n\n"
     << "| claim | source | verdict | measured here | note |\n| --- | --- | --- | --- | --- |\n";
  for (const Claim& claim : study.claims) {
    const auto found = reports.find(claim.section);
    const auto [verdict, measured] = judge(claim, found == reports.end() ? nullptr : found->second.get());
    md << "| " << escaped_cell(claim.claim) << " | " << escaped_cell(claim.source) << " | **" << verdict << "** | "
       << escaped_cell(claim.section + ": " + measured) << " | " << escaped_cell(claim.note) << " |\n";
  }
  md << sections.str();
  write_file_atomic(out_path + ".md", md.str());
  out << "study: " << out_path << ".md\n";
  return status;
}

}  // namespace ml
