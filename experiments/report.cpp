#include "experiments/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <numeric>
#include <optional>
#include <ostream>
#include <set>
#include <sstream>
#include <stdexcept>

#include "experiments/config.h"
#include "experiments/report_stats.h"
#include "experiments/sweep.h"
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
  if (fs::exists(dir / "summary.json")) return true;
  const fs::path status = dir / kSweepStatusFile;
  return fs::exists(status) && Json::parse(read_file(status.string())).at("status").as_string() == "diverged";
}

Run read_run(const fs::path& dir) {
  Run run;
  run.dir = dir.string();
  try {
    run.config = load_config((dir / "config.yaml").string());
    run.label = run.config.name;
    if (fs::exists(dir / kSweepPointFile))
      run.label = Json::parse(read_file((dir / kSweepPointFile).string())).at("label").as_string();
    if (fs::exists(dir / "summary.json"))
      run.summary = Json::parse(read_file((dir / "summary.json").string()));
    else
      run.diverged = true;
    std::istringstream lines(read_file((dir / "metrics.jsonl").string()));
    for (std::string line; std::getline(lines, line);) {
      if (line.empty()) continue;
      Json entry = Json::parse(line);
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
  if (without_lr) config.optimizer.lr = 0.0;
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
  const Json* value = object.find(key);
  return value && value->is_number() ? value->as_number() : std::nan("");
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
  Stats ratio(const std::string& numerator, const std::string& denominator) const {
    std::vector<double> values;
    for (const Run* run : finished)
      values.push_back(number_or_nan(run->summary, numerator) / number_or_nan(run->summary, denominator));
    return Stats::of(values);
  }
  Stats optimizer_metric(const std::string& key) const {
    std::vector<double> values;
    for (const Run* run : finished)
      if (const Json* metrics = run->summary.find("optimizer_metrics")) values.push_back(number_or_nan(*metrics, key));
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
        steps.push_back(eval.at("step").as_number());
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
      return run.diverged || (run.summary.find("val_acc") && run.summary.at("val_acc").is_number());
    });
    metric_ = classifier_ ? "val_acc" : "val_loss";
    group();
  }

  std::string markdown(int incomplete) const;
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
        c.lr = run.config.optimizer.lr;
        c.steps = run.summary.is_null() ? 0 : run.summary.at("steps").as_int();
        configurations_.push_back(c);
      }
      Configuration& c = configurations_[it->second];
      c.runs.push_back(&run);
      if (!run.diverged) {
        c.finished.push_back(&run);
        c.steps = run.summary.at("steps").as_int();
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

  std::vector<Run> runs_;
  ReportOptions options_;
  std::vector<Target> targets_;
  bool classifier_ = false;
  std::string metric_;
  std::vector<Configuration> configurations_;
  std::vector<Family> families_;
  std::vector<const Configuration*> headline_;

  friend class ReportWriter;
};

std::string cell(const Stats& stats, int digits) {
  if (stats.n == 0) return "-";
  return stats.n > 1 ? format_value(stats.mean, digits) + " ± " + format_value(stats.std, digits)
                     : format_value(stats.mean, digits);
}

std::string Report::markdown(int incomplete) const {
  std::ostringstream md;
  int diverged = 0;
  for (const Run& run : runs_) diverged += run.diverged;
  md << "# " << options_.title << "\n\n";
  md << runs_.size() << " runs (" << diverged << " diverged), " << configurations_.size() << " configurations, from";
  for (const std::string& path : options_.run_paths) md << " `" << path << "`";
  md << (incomplete ? "; " + std::to_string(incomplete) + " unfinished runs left out" : "") << ".\n\n";
  const std::string direction = classifier_ ? "higher is better" : "lower is better";
  md << "Values are mean ± sample standard deviation over seeds (n = seeds). Learning rates are chosen by the final "
     << metric_ << " (" << direction << ") on the validation split, which is also the split reported here (there is "
     << "no separate test split), so the chosen rows are slightly optimistic. `train s` is wall-clock of the training "
        "steps (evaluations excluded); `optimizer share` is the optimizer step's part of it.\n\n";

  md << "## Each method at its chosen learning rate\n\n";
  md << "| method | lr | steps | seeds | final " << metric_ << " | best " << metric_ << (classifier_ ? " | final val_loss" : "");
  for (const Target& target : targets_) md << " | steps to " << target.text() << " | s to " << target.text();
  md << " | train s | optimizer share | samples/s | peak MB | cache hits |\n|";
  const size_t columns = 11 + (classifier_ ? 1 : 0) + 2 * targets_.size();
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
       << cell(c->ratio("samples", "train_s"), 0) << " | " << cell(c->stat("peak_rss_mb"), 0) << " | "
       << (cache.n ? cell(cache, 3) : "") << " |\n";
  }

  md << "\n## Learning-rate grids\n\nFinal " << metric_ << " per learning rate (mean over seeds; n when more than one; "
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

  md << "\n## Figures\n\n";
  const std::string metric_name = classifier_ ? "validation accuracy" : "validation loss";
  md << "- `curves_step.png`: " << metric_name << " against training step, each method at its chosen rate "
     << "(line: mean over seeds, band: min to max).\n";
  md << "- `curves_time.png`: the same against wall-clock seconds of training (evaluations excluded).\n";
  md << "- `lr_grid.png`: final " << metric_ << " against learning rate, one line per method (diverged rates left out).\n";
  md << "- `optimizer_share.png`: the optimizer step's share of training time, each method at its chosen rate.\n\n";
  md << "![validation against step](curves_step.png)\n![validation against time](curves_time.png)\n"
     << "![learning-rate grid](lr_grid.png)\n![optimizer share](optimizer_share.png)\n";

  bool any_sample = false;
  for (const Configuration* c : headline_) any_sample = any_sample || (!c->finished.empty() && !c->finished.front()->sample.empty());
  if (any_sample) {
    md << "\n## Samples\n\n300 characters from each method's model (its first seed at the chosen rate), from a newline, "
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
         "val_acc_std,best_val_acc_mean,train_s_mean,optimizer_s_mean,optimizer_share,samples_per_s,peak_rss_mb,"
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
        << number(c.ratio("samples", "train_s").mean) << "," << number(c.stat("peak_rss_mb").mean) << ","
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
        at_step[eval.at("step").as_number()].push_back({number_or_nan(eval, metric_), number_or_nan(eval, "train_s")});
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
    if (family.configurations.size() < 2 || grid_of(family.label) != &family) continue;
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

}  // namespace

int run_report(const ReportOptions& options, std::ostream& out, std::ostream& err) {
  if (options.out_dir.empty()) throw std::runtime_error("--out: empty; give the folder for the report");
  std::vector<Run> runs;
  int incomplete = 0;
  for (const std::string& path : options.run_paths) collect_runs(path, runs, incomplete);
  if (runs.empty())
    throw std::runtime_error("no finished run found under the given folders (" + std::to_string(incomplete) +
                             " unfinished)");
  const Report report(std::move(runs), options);
  fs::create_directories(options.out_dir);
  const std::string data_path = options.out_dir + "/report_data.json";
  write_file_atomic(options.out_dir + "/report.md", report.markdown(incomplete));
  write_file_atomic(options.out_dir + "/report.csv", report.csv());
  write_file_atomic(data_path, report.plot_data().dump() + "\n");
  out << "report: " << options.out_dir << "/report.md\n";

  // Debian's python3 is the one setup-deps.sh gives matplotlib; another python3 may come first on PATH.
  const std::string python = fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  const std::string script = (fs::read_symlink("/proc/self/exe").parent_path() / "plot_report.py").string();
  const std::string command =
      python + " " + shell_quoted(script) + " " + shell_quoted(data_path) + " " + shell_quoted(options.out_dir);
  const int status = std::system(command.c_str());
  if (status != 0) {
    err << "error: the figures were not drawn (`" << command << "` failed; it needs python3 with matplotlib, "
        << "which scripts/setup-deps.sh installs). The tables were written.\n";
    return 1;
  }
  return 0;
}

}  // namespace ml
