// Tests of the study commands: sweep expansion, validation, skip/resume/divergence handling and a
// tiny end-to-end sweep (experiments/sweep.h); the report's statistics, learning-rate choice,
// targets and figures against hand-made runs (experiments/report.h); text sampling
// (experiments/sample.h). Data are tiny generated files in a temp dir.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "experiments/config.h"
#include "experiments/report.h"
#include "experiments/report_stats.h"
#include "experiments/sample.h"
#include "experiments/sweep.h"
#include "experiments/trainer.h"
#include "framework/io/atomic_file.h"
#include "framework/io/json.h"
#include "tests/signal_at_step.h"
#include "tests/temp_dir.h"

namespace ml {
namespace {

namespace fs = std::filesystem;

const char* const kText = "the cat sat on the mat. a dog ran to the log. ";

// A one-layer character GPT on a generated text, small enough to train in well under a second.
std::string write_tiny_gpt_config(const TempDir& dir, const std::string& name = "gpt.yaml") {
  std::ofstream text(dir.file("text.txt"));
  for (int i = 0; i < 200; ++i) text << kText;
  text.close();
  return dir.write(name, "name: tiny\nseed: 0\n"
                         "data: {kind: text_char, path: " + dir.file("text.txt") + ", block_size: 16, batch_size: 4}\n"
                         "model: {kind: gpt, n_layer: 1, n_head: 2, n_embd: 16}\n"
                         "optimizer: {kind: adamw, lr: 3.0e-3}\n"
                         "train: {steps: 12, eval_every: 4, eval_batches: 2, log_every: 4}\n");
}

std::vector<std::string> names_of(const Sweep& sweep) {
  std::vector<std::string> names;
  for (const SweepPoint& point : sweep.points) names.push_back(point.name);
  return names;
}

std::string sweep_error(const std::string& yaml) {
  try {
    parse_sweep(yaml, "sweep.yaml");
  } catch (const ConfigError& error) {
    return error.what();
  }
  return "no error";
}

TEST(SweepExpansion, EachBlockCrossesItsGridWithTheSweepsGrid) {
  TempDir dir;
  const std::string base = write_tiny_gpt_config(dir);
  const Sweep sweep = parse_sweep("name: s\nout: " + dir.file("runs") + "\nset: {threads: 1, train: {steps: 6}}\n"
                                  "grid: {seed: [1, 2]}\nruns:\n"
                                  "  - base: " + base + "\n    grid: {optimizer.lr: [1.0e-3, 0.01]}\n"
                                  "  - base: " + base + "\n    label: m\n    set: {optimizer: {kind: muon, lr: 0.02}}\n",
                                  "sweep.yaml");
  EXPECT_EQ(sweep.out, dir.file("runs") + "/s");
  EXPECT_EQ(names_of(sweep), (std::vector<std::string>{"adamw-lr1.0e-3-seed1", "adamw-lr1.0e-3-seed2", "adamw-lr0.01-seed1",
                                                       "adamw-lr0.01-seed2", "m-seed1", "m-seed2"}));
  const SweepPoint& point = sweep.points[3];
  EXPECT_EQ(point.overrides, (std::vector<std::string>{"threads=1", "train.steps=6", "optimizer.lr=0.01", "seed=2"}));
  EXPECT_EQ(ml::learning_rate(point.config.optimizer), 0.01);
  EXPECT_EQ(point.config.seed, 2);
  EXPECT_EQ(point.config.threads, 1);
  EXPECT_EQ(point.config.train.steps, 6);
  EXPECT_EQ(point.label, "adamw");
  EXPECT_EQ(ml::kind_of(sweep.points[5].config.optimizer), "muon");
  EXPECT_EQ(sweep.points[5].label, "m");
}

TEST(SweepExpansion, GridKeysEndingAlikeAreNamedInFull) {
  TempDir dir;
  const std::string base = write_tiny_gpt_config(dir);
  const Sweep sweep = parse_sweep("name: s\nruns:\n  - base: " + base +
                                      "\n    set: {optimizer.kind: muon}\n"
                                      "    grid: {optimizer.lr: [0.02], optimizer.non_matrix.lr: [0.001]}\n",
                                  "sweep.yaml");
  EXPECT_EQ(names_of(sweep), std::vector<std::string>{"muon-optimizer.lr0.02-optimizer.non_matrix.lr0.001"});
}

TEST(SweepValidation, ErrorsNameTheFileTheLineAndTheKey) {
  TempDir dir;
  const std::string base = write_tiny_gpt_config(dir);
  const std::string runs = "runs:\n  - base: " + base + "\n";
  EXPECT_NE(sweep_error("name: s\nrunz: []\n").find("sweep.yaml:2: runz: unknown key (did you mean runs?)"),
            std::string::npos);
  EXPECT_NE(sweep_error("name: s\n" + runs + "    grid: {optimizer.lr: 0.1}\n").find("sweep.yaml:4: runs[0].grid.optimizer.lr: expected a non-empty list"),
            std::string::npos);
  EXPECT_NE(sweep_error("name: s\n" + runs + "    lable: x\n").find("runs[0].lable: unknown key (did you mean label?)"),
            std::string::npos);
  EXPECT_NE(sweep_error(runs).find("name: missing"), std::string::npos);
  EXPECT_NE(sweep_error("name: a/b\n" + runs).find("name: expected a folder name"), std::string::npos);
  const std::string invalid = sweep_error("name: s\n" + runs + "    grid: {optimizer.lr: [-1]}\n");
  EXPECT_NE(invalid.find("sweep.yaml:3: runs[0]: a point of this block has an invalid config"), std::string::npos) << invalid;
  EXPECT_NE(invalid.find("optimizer.lr"), std::string::npos) << invalid;
  EXPECT_NE(sweep_error("name: s\n" + runs + runs.substr(6)).find("point adamw is also made by runs[0]"),
            std::string::npos);
  EXPECT_NE(sweep_error("name: s\ngrid: {seed: [1]}\n" + runs + "    grid: {seed: [2]}\n").find("also in the sweep's grid"),
            std::string::npos);
}

Json summary_of(const std::string& dir) { return parse_json(read_file(dir + "/summary.json")); }

TEST(SweepRun, SkipsFinishedPointsResumesInterruptedOnesAndRecordsDivergence) {
  TempDir dir;
  const std::string base = write_tiny_gpt_config(dir);
  const std::string sweep_file =
      dir.write("sweep.yaml", "name: s\nout: " + dir.file("runs") + "\nkeep: " + dir.file("keep") +
                                  "\nset: {threads: 1}\nruns:\n  - base: " + base +
                                  "\n    grid: {optimizer.lr: [3.0e-3, 1.0e+9]}\n");
  const Sweep sweep = load_sweep(sweep_file);
  ASSERT_EQ(sweep.points.size(), 2u);
  const SweepPoint& good = sweep.points[0];
  const std::string good_dir = sweep.out + "/" + good.name;

  // An uninterrupted run of the first point, for comparison.
  TrainOptions reference_options;
  reference_options.out_dir = dir.file("reference");
  reference_options.quiet = true;
  const TrainResult reference = train(good.config, reference_options);

  // The first point is interrupted after 4 steps (with a checkpoint): the sweep must resume it.
  TrainOptions interrupted;
  interrupted.out_dir = good_dir;
  interrupted.quiet = true;
  interrupted.max_session_steps = 4;
  ASSERT_FALSE(train(good.config, interrupted).completed);
  EXPECT_EQ(point_status(sweep, good).state, PointState::Resumable);

  SweepOptions options;
  options.quiet = true;
  std::ostringstream first;
  EXPECT_EQ(run_sweep(sweep, options, first), 0) << first.str();
  EXPECT_NE(first.str().find("resuming"), std::string::npos) << first.str();
  EXPECT_EQ(summary_of(good_dir).at("val_loss").get<double>(), reference.summary.at("val_loss").get<double>());
  EXPECT_EQ(point_status(sweep, good).state, PointState::Kept);
  EXPECT_EQ(point_status(sweep, sweep.points[1]).state, PointState::Diverged);
  for (const char* file : {"config.yaml", "metrics.jsonl", "summary.json", "sweep_point.json", "sample.txt"})
    EXPECT_TRUE(fs::exists(sweep.keep + "/" + good.name + "/" + file)) << file;
  EXPECT_FALSE(fs::exists(sweep.keep + "/" + good.name + "/checkpoint.json"));
  const Json status = parse_json(read_file(sweep.keep + "/" + sweep.points[1].name + "/sweep_status.json"));
  EXPECT_EQ(status.at("status").get<std::string>(), "diverged");

  // Run again: nothing trains.
  const std::string metrics_before = read_file(good_dir + "/metrics.jsonl");
  std::ostringstream second;
  EXPECT_EQ(run_sweep(sweep, options, second), 0);
  EXPECT_EQ(second.str().find("training ->"), std::string::npos) << second.str();
  EXPECT_EQ(read_file(good_dir + "/metrics.jsonl"), metrics_before);

  // A fresh clone has only the kept results: still nothing to train.
  fs::remove_all(sweep.out);
  EXPECT_EQ(point_status(sweep, good).state, PointState::Kept);
  EXPECT_EQ(point_status(sweep, sweep.points[1]).state, PointState::Diverged);

  // A kept result made with another config is reported, not silently reused or overwritten.
  const std::string kept_config = sweep.keep + "/" + good.name + "/config.yaml";
  RunConfig changed = load_config(kept_config);
  ml::set_learning_rate(changed.optimizer, 0.5);
  write_file_atomic(kept_config, to_yaml(changed));
  const PointStatus stale = point_status(sweep, good);
  EXPECT_EQ(stale.state, PointState::Stale);
  EXPECT_NE(stale.detail.find("lr: 0.5"), std::string::npos) << stale.detail;
  std::ostringstream third;
  EXPECT_EQ(run_sweep(sweep, options, third), 1);
}

TEST(SweepRun, AnInterruptedPointStopsTheSweepAndResumesOnTheNextRun) {
  TempDir dir;
  const std::string base = write_tiny_gpt_config(dir);
  const Sweep sweep = parse_sweep("name: s\nout: " + dir.file("runs") + "\nset: {threads: 1}\nruns:\n  - base: " + base +
                                      "\n    grid: {optimizer.lr: [3.0e-3, 1.0e-3]}\n",
                                  "sweep.yaml");
  // Ctrl-C during the first point's step 4 (its progress goes to stderr, a line every 4 steps).
  SignalAtStep buffer(4, SIGINT);
  std::streambuf* const stderr_buffer = std::cerr.rdbuf(&buffer);
  SweepOptions options;
  std::ostringstream first;
  EXPECT_THROW(run_sweep(sweep, options, first), TrainingInterrupted);
  std::cerr.rdbuf(stderr_buffer);
  EXPECT_NE(first.str().find("interrupted"), std::string::npos) << first.str();
  EXPECT_EQ(point_status(sweep, sweep.points[0]).state, PointState::Resumable);
  EXPECT_EQ(point_status(sweep, sweep.points[1]).state, PointState::Pending);

  options.quiet = true;
  std::ostringstream second;
  EXPECT_EQ(run_sweep(sweep, options, second), 0) << second.str();
  EXPECT_NE(second.str().find("resuming"), std::string::npos) << second.str();
  for (const SweepPoint& point : sweep.points) EXPECT_EQ(point_status(sweep, point).state, PointState::Completed);
}

TEST(SweepRun, AFailedPointIsRecordedAndTheSweepGoesOn) {
  TempDir dir;
  const std::string base = write_tiny_gpt_config(dir);
  const Sweep sweep = parse_sweep("name: s\nout: " + dir.file("runs") + "\nset: {threads: 1}\nruns:\n  - base: " + base +
                                      "\n    label: missing\n    set: {data.path: " + dir.file("nothing.txt") +
                                      "}\n  - base: " + base + "\n",
                                  "sweep.yaml");
  SweepOptions options;
  options.quiet = true;
  std::ostringstream out;
  EXPECT_EQ(run_sweep(sweep, options, out), 1);
  EXPECT_NE(out.str().find("missing: FAILED"), std::string::npos) << out.str();
  const Json status = parse_json(read_file(sweep.out + "/missing/sweep_status.json"));
  EXPECT_EQ(status.at("status").get<std::string>(), "failed");
  EXPECT_NE(status.at("message").get<std::string>().find("nothing.txt"), std::string::npos);
  EXPECT_TRUE(fs::exists(sweep.out + "/adamw/summary.json"));
  // A failed point is tried again next time.
  EXPECT_EQ(point_status(sweep, sweep.points[0]).state, PointState::Pending);
}

TEST(SweepRun, DryRunListsWithoutTrainingAndOnlySelectsByName) {
  TempDir dir;
  const std::string base = write_tiny_gpt_config(dir);
  const Sweep sweep = parse_sweep("name: s\nout: " + dir.file("runs") + "\nruns:\n  - base: " + base +
                                      "\n    grid: {optimizer.lr: [1.0e-3, 2.0e-3]}\n",
                                  "sweep.yaml");
  SweepOptions options;
  options.dry_run = true;
  options.only = "*2.0e-3";
  std::ostringstream out;
  EXPECT_EQ(run_sweep(sweep, options, out), 0);
  EXPECT_EQ(out.str(), "[1/1] adamw-lr2.0e-3: pending  optimizer.lr=2.0e-3  (" + base + ")\n");
  EXPECT_FALSE(fs::exists(sweep.out));
  options.only = "nothing*";
  EXPECT_THROW(run_sweep(sweep, options, out), ConfigError);
}

// The shipped smoke configs through the whole study path: a sweep with per-method settings and
// seeds, then a report over the sweep's folder.
TEST(SweepEndToEnd, SmokeConfigsSweepAndReport) {
  const std::string data = MUONLAB_SOURCE_DIR "/../shared/data";
  if (!fs::exists(data + "/tinyshakespeare/input.txt") || !fs::exists(data + "/cifar-10-batches-bin"))
    GTEST_SKIP() << "no " << data << " (Tiny Shakespeare and CIFAR-10)";
  TempDir dir;
  const std::string configs = MUONLAB_SOURCE_DIR "/configs/";
  const Sweep sweep = parse_sweep(
      "name: smoke\nout: " + dir.file("runs") + "\nkeep: " + dir.file("keep") + "\nset: {threads: 1}\nruns:\n"
      "  - base: " + configs + "tiny_mlp_smoke.yaml\n    grid: {optimizer.lr: [3.0e-3, 1.0e-2], seed: [0, 1]}\n"
      "  - base: " + configs + "tiny_mlp_smoke.yaml\n    set: {optimizer: {kind: muon, lr: 0.02}}\n    grid: {seed: [0, 1]}\n"
      "  - base: " + configs + "tiny_gpt_smoke.yaml\n    set: {data.path: " + data + "/tinyshakespeare/input.txt, train.steps: 20}\n"
      "  - base: " + configs + "tiny_cnn_smoke.yaml\n    set: {data.path: " + data + "/cifar-10-batches-bin, train.steps: 8}\n",
      "smoke.yaml");
  ASSERT_EQ(sweep.points.size(), 8u);
  SweepOptions options;
  options.quiet = true;
  std::ostringstream out, err;
  ASSERT_EQ(run_sweep(sweep, options, out), 0) << out.str();
  EXPECT_TRUE(fs::exists(sweep.keep + "/adamw/sample.txt"));  // the GPT point (its label: the optimizer kind)
  ASSERT_EQ(run_report({{sweep.keep}, dir.file("report"), {}, "smoke"}, out, err), 0) << err.str();
  const std::string md = read_file(dir.file("report/report.md"));
  EXPECT_NE(md.find("8 runs (0 diverged), 5 configurations"), std::string::npos) << md;
  EXPECT_TRUE(fs::exists(dir.file("report/curves_step.png")));
}

TEST(ReportStats, MeanSampleStandardDeviationAndRangeLeaveMissingValuesOut) {
  const Stats stats = Stats::of({1.0, 2.0, std::nan(""), 4.0});
  EXPECT_EQ(stats.n, 3);
  EXPECT_DOUBLE_EQ(stats.mean, 7.0 / 3.0);
  EXPECT_DOUBLE_EQ(stats.std, std::sqrt(7.0 / 3.0));  // squares 16/9 + 1/9 + 25/9 over n - 1 = 2
  EXPECT_EQ(stats.min, 1.0);
  EXPECT_EQ(stats.max, 4.0);
  EXPECT_EQ(Stats::of({5.0}).std, 0.0);
  EXPECT_EQ(Stats::of({}).n, 0);
  EXPECT_EQ(format_value(1.23456, 3), "1.235");
  EXPECT_EQ(format_general(0.0005), "0.0005");
}

// A run folder written by hand: its config, an evaluation every 10 steps (values at steps 10, 20
// with train_s 5 per 10 steps) and a summary, or a divergence record.
void write_fixture_run(const TempDir& dir, const std::string& base, const std::string& name, double lr, int64_t seed,
                       const std::vector<double>& val_losses, bool diverged = false, const std::string& label = "m") {
  const std::string run = dir.file("runs/" + name);
  fs::create_directories(run);
  RunConfig config = load_config(base, {"optimizer.lr=" + std::to_string(lr), "seed=" + std::to_string(seed)});
  write_file_atomic(run + "/config.yaml", to_yaml(config));
  write_file_atomic(run + "/sweep_point.json", dump_json(Json::object({{"label", label}})));
  std::string metrics;
  for (size_t i = 0; i < val_losses.size(); ++i)
    metrics +=
        dump_json(Json::object({{"step", 10 * (i + 1)}, {"val_loss", val_losses[i]}, {"train_s", 5.0 * (i + 1)}})) + "\n";
  write_file_atomic(run + "/metrics.jsonl", metrics);
  if (diverged) {
    write_file_atomic(run + "/sweep_status.json", dump_json(Json::object({{"status", "diverged"}, {"message", "x"}})));
    return;
  }
  write_file_atomic(run + "/summary.json",
                    dump_json(Json::object({{"steps", 10 * static_cast<int64_t>(val_losses.size())},
                                            {"val_loss", val_losses.back()},
                                            {"val_acc", Json()},
                                            {"best_val_loss", *std::min_element(val_losses.begin(), val_losses.end())},
                                            {"train_s", 5.0 * val_losses.size()},
                                            {"optimizer_s", 1.0 * val_losses.size()},
                                            {"samples", 100},
                                            {"peak_rss_mb", 50.0}})));
}

// A kept run written before keys a kind ignores were refused (issue 10, item 11): its config.yaml
// lists dion2's momentum and nesterov and the text data's val_batch_size, as muonlab wrote them.
TEST(SweepRun, AKeptRunWhoseConfigListsKeysTheSchemaDroppedIsNeitherStaleNorUnreadable) {
  TempDir dir;
  write_tiny_gpt_config(dir);
  const std::string base = dir.write("dion2.yaml", "name: tiny\nseed: 0\n"
                                                   "data: {kind: text_char, path: " + dir.file("text.txt") +
                                                       ", block_size: 16, batch_size: 4}\n"
                                                   "model: {kind: gpt, n_layer: 1, n_head: 2, n_embd: 16}\n"
                                                   "optimizer: {kind: dion2, lr: 0.02}\n"
                                                   "train: {steps: 12, eval_every: 4, log_every: 4}\n");
  const Sweep sweep = parse_sweep("name: s\nout: " + dir.file("runs") + "\nkeep: " + dir.file("keep") +
                                      "\nruns:\n  - base: " + base + "\n    grid: {optimizer.lr: [0.02]}\n",
                                  "sweep.yaml");
  const SweepPoint& point = sweep.points.at(0);
  std::string old_config = to_yaml(point.config);
  const auto insert_after = [&](const std::string& line, const std::string& added) {
    const size_t at = old_config.find(line);
    ASSERT_NE(at, std::string::npos) << line;
    old_config.insert(at + line.size(), added);
  };
  insert_after("  batch_size: 4\n", "  val_batch_size: 0\n");
  insert_after("  kind: dion2\n", "  momentum: 0.95\n  nesterov: true\n");
  const std::string kept = sweep.keep + "/" + point.name;
  fs::create_directories(kept);
  write_file_atomic(kept + "/config.yaml", old_config);
  write_file_atomic(kept + "/sweep_point.json", dump_json(Json::object({{"label", "dion2"}})));
  write_file_atomic(kept + "/metrics.jsonl",
                    dump_json(Json::object({{"step", 12}, {"val_loss", 2.5}, {"train_s", 1.0}})) + "\n");
  write_file_atomic(kept + "/summary.json",
                    dump_json(Json::object({{"steps", 12}, {"val_loss", 2.5}, {"val_acc", Json()},
                                            {"best_val_loss", 2.5}, {"train_s", 1.0}, {"optimizer_s", 0.5},
                                            {"samples", 48}, {"peak_rss_mb", 50.0}})));
  EXPECT_THROW(load_config(kept + "/config.yaml"), ConfigError);  // as a config of one's own: refused
  const PointStatus status = point_status(sweep, point);
  EXPECT_EQ(status.state, PointState::Kept) << status.detail;
  std::ostringstream out, err;
  EXPECT_EQ(run_report({{sweep.keep}, dir.file("report"), {}, "old"}, out, err), 0) << err.str();
}

std::vector<std::string> csv_row(const std::string& csv, const std::string& prefix) {
  std::istringstream lines(csv);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind(prefix, 0) == 0) {
      std::vector<std::string> cells;
      std::istringstream row(line);
      for (std::string cell; std::getline(row, cell, ',');) cells.push_back(cell);
      return cells;
    }
  return {};
}

TEST(Report, AggregatesSeedsChoosesTheLearningRateAndFindsTargetCrossings) {
  TempDir dir;
  const std::string base = write_tiny_gpt_config(dir);
  write_fixture_run(dir, base, "a1", 0.01, 1, {2.5, 2.0});
  write_fixture_run(dir, base, "a2", 0.01, 2, {2.4, 2.2});
  write_fixture_run(dir, base, "b1", 0.02, 1, {1.9, 1.5});
  write_fixture_run(dir, base, "b2", 0.02, 2, {1.75, 1.7});
  write_fixture_run(dir, base, "c1", 0.04, 1, {3.0}, true);
  std::ostringstream out, err;
  ASSERT_EQ(run_report({{dir.file("runs")}, dir.file("report"), {"val_loss=1.8"}, "fixture"}, out, err), 0) << err.str();

  const std::string csv = read_file(dir.file("report/report.csv"));
  const std::vector<std::string> header = csv_row(csv, "label,");
  const std::vector<std::string> chosen = csv_row(csv, "m,0.02,");
  ASSERT_EQ(chosen.size(), header.size()) << csv;
  const auto column = [&](const std::vector<std::string>& row, const std::string& name) {
    return row[std::find(header.begin(), header.end(), name) - header.begin()];
  };
  EXPECT_EQ(column(chosen, "seeds"), "2");
  EXPECT_EQ(column(chosen, "chosen"), "1");
  EXPECT_EQ(column(chosen, "headline"), "1");
  EXPECT_NEAR(std::stod(column(chosen, "val_loss_mean")), 1.6, 1e-9);
  EXPECT_NEAR(std::stod(column(chosen, "val_loss_std")), std::sqrt(0.02), 1e-6);
  EXPECT_NEAR(std::stod(column(chosen, "best_val_loss_mean")), 1.6, 1e-9);
  EXPECT_NEAR(std::stod(column(chosen, "optimizer_share")), 0.2, 1e-9);
  EXPECT_NEAR(std::stod(column(chosen, "optimizer_ms_per_step")), 100.0, 1e-9);  // 2 s over 20 steps
  // Seed 1 crosses 1.8 at its second evaluation (step 20, 10 s), seed 2 at its first (10, 5 s).
  EXPECT_NEAR(std::stod(column(chosen, "steps_to_val_loss_1.8")), 15.0, 1e-9);
  EXPECT_NEAR(std::stod(column(chosen, "s_to_val_loss_1.8")), 7.5, 1e-9);
  const std::vector<std::string> worse = csv_row(csv, "m,0.01,");
  EXPECT_NEAR(std::stod(column(worse, "val_loss_mean")), 2.1, 1e-9);
  EXPECT_EQ(column(worse, "chosen"), "0");
  EXPECT_EQ(column(worse, "steps_to_val_loss_1.8"), "");  // never reached
  EXPECT_EQ(column(csv_row(csv, "m,0.04,"), "diverged"), "1");

  const std::string md = read_file(dir.file("report/report.md"));
  EXPECT_NE(md.find("5 runs (1 diverged), 3 configurations"), std::string::npos) << md;
  EXPECT_NE(md.find("| m | 0.02 | 20 | 2 | 1.6000 ± 0.1414 |"), std::string::npos) << md;
  // train s, optimizer share, optimizer ms/step, samples/s, peak MB
  EXPECT_NE(md.find("| 10.0 ± 0.0 | 0.200 ± 0.000 | 100.0 ± 0.0 | 10.0 ± 0.0 | 50 ± 0 |"), std::string::npos) << md;
  EXPECT_NE(md.find("0.01: 2.1000 (n=2), **0.02: 1.6000 (n=2)**, 0.04: div"), std::string::npos) << md;

  for (const char* figure : {"curves_step", "curves_time", "lr_grid", "optimizer_share"}) {
    const std::string png = read_file(dir.file("report/" + std::string(figure) + ".png"));
    EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << figure;
    const std::string svg = read_file(dir.file("report/" + std::string(figure) + ".svg"));
    EXPECT_NE(svg.find("<svg"), std::string::npos) << figure;
    EXPECT_NE(svg.find("</svg>"), std::string::npos) << figure;
  }
}

// Wall-clock is comparable only between runs on the same machine: the report says which hosts the
// finished runs name (diverged runs have no summary), and nothing for runs that name none.
TEST(Report, SaysWhichMachinesTheRunsRanOn) {
  TempDir dir;
  const std::string base = write_tiny_gpt_config(dir);
  write_fixture_run(dir, base, "a1", 0.01, 1, {2.5});
  write_fixture_run(dir, base, "a2", 0.01, 2, {2.4});
  write_fixture_run(dir, base, "b1", 0.02, 1, {1.9});
  write_fixture_run(dir, base, "c1", 0.04, 1, {3.0}, true);
  std::ostringstream out, err;
  ASSERT_EQ(run_report({{dir.file("runs")}, dir.file("unrecorded"), {}, "fixture"}, out, err), 0) << err.str();
  EXPECT_EQ(read_file(dir.file("unrecorded/report.md")).find("Machines"), std::string::npos);

  for (const auto& [run, host] : {std::pair{"a1", "CPU A, 2 logical CPUs"}, std::pair{"a2", "CPU A, 2 logical CPUs"}}) {
    Json summary = parse_json(read_file(dir.file("runs/" + std::string(run) + "/summary.json")));
    summary["host"] = host;
    write_file_atomic(dir.file("runs/" + std::string(run) + "/summary.json"), dump_json(summary));
  }
  ASSERT_EQ(run_report({{dir.file("runs")}, dir.file("recorded"), {}, "fixture"}, out, err), 0) << err.str();
  const std::string md = read_file(dir.file("recorded/report.md"));
  EXPECT_NE(md.find("Machines (`host` in summary.json; wall-clock compares only within one): CPU A, 2 logical CPUs "
                    "(2 runs); not recorded (1 run).\n"),
            std::string::npos)
      << md;
}

// MUONLAB_PYTHON replaces Debian's python3 for the figures (a virtual environment's, say): one that
// does not exist fails the figures with its name in the message, after the tables were written.
TEST(Report, DrawsTheFiguresWithThePythonMuonlabPythonNames) {
  TempDir dir;
  const std::string base = write_tiny_gpt_config(dir);
  write_fixture_run(dir, base, "a1", 0.01, 1, {2.5});
  std::ostringstream out, err;
  const std::string missing_python = dir.file("no-such-python3");
  // The caller's own choice (a GPU machine's virtual environment) is put back for the tests after.
  const char* callers_python = std::getenv("MUONLAB_PYTHON");
  const std::optional<std::string> saved = callers_python ? std::optional<std::string>(callers_python) : std::nullopt;
  setenv("MUONLAB_PYTHON", missing_python.c_str(), 1);
  const int status = run_report({{dir.file("runs")}, dir.file("report"), {}, "fixture"}, out, err);
  if (saved) setenv("MUONLAB_PYTHON", saved->c_str(), 1);
  else unsetenv("MUONLAB_PYTHON");
  EXPECT_EQ(status, 1);
  EXPECT_NE(err.str().find(missing_python), std::string::npos) << err.str();
  EXPECT_TRUE(std::filesystem::exists(dir.file("report/report.md")));
  EXPECT_FALSE(std::filesystem::exists(dir.file("report/curves_step.png")));
}

// Runs at one learning rate per method (seeds of chosen rates): no learning-rate figure, neither
// drawn empty nor left over from an earlier report in the same folder.
TEST(Report, LeavesOutTheLearningRateFigureWhenNoMethodHasAGrid) {
  TempDir dir;
  const std::string base = write_tiny_gpt_config(dir);
  write_fixture_run(dir, base, "a1", 0.01, 1, {2.5});
  write_fixture_run(dir, base, "a2", 0.01, 2, {2.4});
  std::ostringstream out, err;
  std::filesystem::create_directories(dir.file("report"));
  write_file_atomic(dir.file("report/lr_grid.png"), "from an earlier report");
  ASSERT_EQ(run_report({{dir.file("runs")}, dir.file("report"), {}, "fixture"}, out, err), 0) << err.str();
  const std::string md = read_file(dir.file("report/report.md"));
  EXPECT_EQ(md.find("lr_grid"), std::string::npos) << md;
  EXPECT_NE(md.find("No learning-rate figure: every method ran at a single rate here."), std::string::npos) << md;
  EXPECT_FALSE(std::filesystem::exists(dir.file("report/lr_grid.png")));
  EXPECT_TRUE(std::filesystem::exists(dir.file("report/curves_step.png")));
}

// A block's grid over a key other than the learning rate and the seed (CacheMuon's threshold):
// each value is a method of its own, named by the label and the value as in the point's name.
TEST(Report, GridValuesOtherThanTheRateAndSeedNameTheirOwnMethods) {
  TempDir dir;
  const std::string base = write_tiny_gpt_config(dir);
  for (const auto& [name, gamma, losses] : std::vector<std::tuple<std::string, std::string, std::vector<double>>>{
           {"g1", "1.0", {2.0, 1.9}}, {"g3", "3.0", {2.0, 1.7}}}) {
    write_fixture_run(dir, base, name, 0.01, 1, losses);
    write_file_atomic(dir.file("runs/" + name + "/sweep_point.json"),
                      dump_json(Json::object(
                          {{"label", "m"}, {"grid", Json::object({{"optimizer.gamma", gamma}, {"seed", "1"}})}})));
  }
  std::ostringstream out, err;
  ASSERT_EQ(run_report({{dir.file("runs")}, dir.file("report"), {}, "fixture"}, out, err), 0) << err.str();
  const std::string csv = read_file(dir.file("report/report.csv"));
  const std::vector<std::string> header = csv_row(csv, "label,");
  const size_t headline = std::find(header.begin(), header.end(), "headline") - header.begin();
  for (const char* label : {"m-gamma1.0,0.01,", "m-gamma3.0,0.01,"}) {
    const std::vector<std::string> row = csv_row(csv, label);
    ASSERT_GT(row.size(), headline) << label << "\n" << csv;
    EXPECT_EQ(row[headline], "1") << label;
  }
}

TEST(Report, RefusesFoldersWithoutFinishedRunsAndBadTargets) {
  TempDir dir;
  std::ostringstream out, err;
  fs::create_directories(dir.file("empty"));
  EXPECT_THROW(run_report({{dir.file("empty")}, dir.file("report"), {}, "t"}, out, err), std::runtime_error);
  EXPECT_THROW(run_report({{dir.file("absent")}, dir.file("report"), {}, "t"}, out, err), std::runtime_error);
  const std::string base = write_tiny_gpt_config(dir);
  write_fixture_run(dir, base, "a", 0.01, 1, {2.0});
  EXPECT_THROW(run_report({{dir.file("runs")}, dir.file("report"), {"val_los=1"}, "t"}, out, err), std::runtime_error);
}

TEST(StudyReport, ClaimVerdictsComeFromTheHeadlineRows) {
  TempDir dir;
  const std::string base = write_tiny_gpt_config(dir);
  // Method "new": final losses 1.50 and 1.52 (crossing 1.8 at step 10); "old": 1.60 and 1.62 (at step 20).
  write_fixture_run(dir, base, "new1", 0.02, 1, {1.7, 1.50}, false, "new");
  write_fixture_run(dir, base, "new2", 0.02, 2, {1.75, 1.52}, false, "new");
  write_fixture_run(dir, base, "old1", 0.02, 1, {1.9, 1.60}, false, "old");
  write_fixture_run(dir, base, "old2", 0.02, 2, {1.85, 1.62}, false, "old");
  write_fixture_run(dir, base, "solo", 0.02, 1, {1.8, 1.4}, false, "solo");
  const std::string claims =
      "  - {claim: c1, source: s, section: a, check: {kind: better, method: new, baseline: old}}\n"
      "  - {claim: c2, source: s, section: a, check: {kind: better, method: old, baseline: new}}\n"
      "  - {claim: c3, source: s, section: a, check: {kind: no_worse, method: old, baseline: new, tolerance: 0.05}}\n"
      "  - {claim: c4, source: s, section: a, check: {kind: no_worse, method: old, baseline: new, tolerance: 0.2}}\n"
      "  - {claim: c5, source: s, section: a, check: {kind: fewer_steps, method: new, baseline: old, target: val_loss=1.8}}\n"
      "  - {claim: c6, source: s, section: a, check: {kind: cheaper, method: new, baseline: old, factor: 2}}\n"
      "  - {claim: c7, source: s, section: a, check: {kind: reaches, method: new, value: 1.55}}\n"
      "  - {claim: c8, source: s, section: b, check: {kind: reaches, method: new, value: 1.55}}\n"
      "  - {claim: c9, source: s, section: a, check: {kind: better, method: solo, baseline: old}}\n";
  const std::string study = dir.write("study.yaml", "title: T\nsections:\n  - {name: a, title: A, runs: [" + dir.file("runs") +
                                                        "]}\n  - {name: b, title: B, runs: [" + dir.file("none") +
                                                        "]}\nclaims:\n" + claims);
  std::ostringstream out, err;
  ASSERT_EQ(run_study_report(study, dir.file("study"), out, err), 0) << err.str();
  const std::string md = read_file(dir.file("study.md"));
  const auto verdict = [&](const std::string& claim) {
    const std::string prefix = "| " + claim + " | s | **";
    const size_t start = md.find(prefix);
    if (start == std::string::npos) return std::string("missing");
    return md.substr(start + prefix.size(), md.find("**", start + prefix.size()) - start - prefix.size());
  };
  EXPECT_EQ(verdict("c1"), "reproduced") << md;
  EXPECT_EQ(verdict("c2"), "contradicted");
  EXPECT_EQ(verdict("c3"), "not at this scale");  // worse by 0.1
  EXPECT_EQ(verdict("c4"), "reproduced");
  EXPECT_EQ(verdict("c5"), "reproduced");  // 10 steps against 20
  EXPECT_EQ(verdict("c6"), "contradicted");  // equal optimizer time: 1.00x, no speed-up at all
  EXPECT_EQ(verdict("c7"), "reproduced");  // 1.51 <= 1.55
  EXPECT_EQ(verdict("c8"), "not measured yet");
  EXPECT_EQ(verdict("c9"), "reproduced, provisional (one seed)");
  EXPECT_NE(md.find("new 1.5100 ± 0.0141 (n=2) vs old 1.6100 ± 0.0141 (n=2)"), std::string::npos) << md;
  EXPECT_NE(md.find("No finished runs yet"), std::string::npos);
  EXPECT_TRUE(fs::exists(dir.file("study/a/report.md")));
  EXPECT_NE(md.find("](study/a/curves_step.png)"), std::string::npos);

  const std::string bad = dir.write("bad.yaml", "title: T\nsections: []\nclaims:\n  - {claim: c, source: s, section: x, check: {kind: better, method: a, baseline: b}}\n");
  EXPECT_THROW(run_study_report(bad, dir.file("bad"), out, err), ConfigError);
}

TEST(Sample, GreedyIsDeterministicTopOneIsGreedyAndSeedsDiffer) {
  TempDir dir;
  TrainOptions options;
  options.out_dir = dir.file("run");
  options.quiet = true;
  train(load_config(write_tiny_gpt_config(dir)), options);
  SampleOptions greedy;
  greedy.prompt = "the ";
  greedy.tokens = 40;
  greedy.temperature = 0.0;
  const std::string text = sample_text(dir.file("run"), greedy);
  EXPECT_EQ(text.size(), 40u);
  EXPECT_EQ(text.find_first_not_of(kText), std::string::npos) << text;  // only characters of the vocabulary
  SampleOptions top_one = greedy;
  top_one.temperature = 1.0;
  top_one.top_k = 1;
  top_one.seed = 7;
  EXPECT_EQ(sample_text(dir.file("run"), top_one), text);
  SampleOptions random = greedy;
  random.temperature = 1.5;
  random.seed = 1;
  const std::string first = sample_text(dir.file("run"), random);
  EXPECT_EQ(sample_text(dir.file("run"), random), first);
  random.seed = 2;
  EXPECT_NE(sample_text(dir.file("run"), random), first);
  SampleOptions outside = greedy;
  outside.prompt = "Z";
  EXPECT_THROW(sample_text(dir.file("run"), outside), std::runtime_error);
  try {
    sample_text(dir.path(), greedy);
    ADD_FAILURE() << "a folder without a checkpoint was sampled";
  } catch (const std::runtime_error& error) {
    EXPECT_NE(std::string(error.what()).find("no checkpoint there"), std::string::npos) << error.what();
  }
}

}  // namespace
}  // namespace ml
