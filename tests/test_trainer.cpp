// Tests of the trainer: a smoke run per model kind that lowers the loss, exact resume, atomic
// checkpoints, non-finite loss handling, errors before any file is written, checkpoint
// evaluation, the schedule, progress output and the demo's configs. Data are tiny generated
// files in a temp dir.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "datasets/image_batcher.h"
#include "experiments/checkpoint.h"
#include "experiments/demo.h"
#include "experiments/evaluation.h"
#include "experiments/progress.h"
#include "experiments/run_data.h"
#include "experiments/run_dir.h"
#include "experiments/trainer.h"
#include "framework/backends/cpu/cpu_backend.h"
#include "framework/io/atomic_file.h"
#include "framework/io/json.h"
#include "framework/io/safetensors.h"
#include "framework/nn/serialize.h"
#include "framework/ops.h"
#include "framework/parallel.h"
#include "models/cnn.h"
#include "models/model.h"
#include "models/patch_whitening.h"
#include "tests/signal_at_step.h"
#include "tests/temp_dir.h"
#include "tests/training_data.h"

namespace ml {
namespace {

namespace fs = std::filesystem;

std::vector<Json> read_metrics(const std::string& run_dir) {
  std::vector<Json> lines;
  std::istringstream text(read_file(run_dir + "/metrics.jsonl"));
  for (std::string line; std::getline(text, line);) lines.push_back(parse_json(line));
  return lines;
}

std::vector<double> values_of(const std::vector<Json>& lines, const std::string& key) {
  std::vector<double> values;
  for (const Json& line : lines)
    if (line.contains(key)) values.push_back(line.at(key).get<double>());
  return values;
}

RunConfig mlp_config(const std::vector<std::string>& overrides = {}) {
  return parse_config(R"(
name: mlp_test
seed: 3
data: {kind: synthetic, batch_size: 16, num_features: 8, num_classes: 3, num_examples: 192}
model: {kind: mlp, hidden: [32], dropout: 0.1}
optimizer: {kind: adamw, lr: 0.01}
schedule: {warmup_steps: 3, decay: cosine}
train: {steps: 20, eval_every: 5, log_every: 1, grad_clip: 1.0, grad_accum: 2}
)",
                      "mlp_test.yaml", overrides);
}

RunConfig cnn_config(const std::string& data_path, const std::vector<std::string>& overrides = {}) {
  return parse_config(R"(
name: cnn_test
seed: 1
data: {kind: fashion_mnist, path: ")" + data_path + R"(", batch_size: 32, flip: true, translate: 1}
model: {kind: cnn, stem_width: 8, widths: [8, 16], logit_divisor: 2}
optimizer: {kind: sgd, lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4}
train: {steps: 20, eval_every: 10, log_every: 1, label_smoothing: 0.1}
)",
                      "cnn_test.yaml", overrides);
}

// The airbench94_muon pieces on the grey test images: a whitening stem (2 x 1 x 2 x 2 = 8 channels)
// whose bias trains for the first epoch (16 steps of 16: after the resume tests' split at 10),
// frozen norm scales, dirac init, Muon with renormalization and SGD on the rest.
RunConfig whitened_cnn_config(const std::string& data_path) {
  return cnn_config(data_path,
                    {"data.batch_size=16", "data.alternating_flip=true",
                     "model={kind: cnn, stem_width: 8, widths: [8, 16], logit_divisor: 2, whiten: true, "
                     "whiten_examples: 100, whiten_bias_epochs: 1, bn_freeze_weight: true, dirac_init: true}",
                     "optimizer={kind: muon, lr: 0.1, momentum: 0.6, ns_steps: 3, renormalize: true, "
                     "non_matrix: {kind: sgd, lr: 0.05, momentum: 0.85, weight_decay: 5.0e-4}}"});
}

RunConfig gpt_config(const std::string& text_path, const std::vector<std::string>& overrides = {}) {
  return parse_config(R"(
name: gpt_test
seed: 2
data: {kind: text_char, path: ")" + text_path + R"(", batch_size: 8, block_size: 16}
model: {kind: gpt, n_layer: 1, n_head: 2, n_embd: 32, dropout: 0.1}
optimizer: {kind: adamw, lr: 3.0e-3, betas: [0.9, 0.99]}
schedule: {warmup_steps: 2, decay: linear, min_lr_ratio: 0.1}
train: {steps: 20, eval_every: 10, eval_batches: 4, log_every: 1, grad_clip: 1.0}
)",
                      "gpt_test.yaml", overrides);
}

TrainResult run_quietly(const RunConfig& config, const std::string& out_dir, int64_t max_session_steps = 0,
                        const std::string& resume_dir = "") {
  TrainOptions options;
  options.out_dir = out_dir;
  options.resume_dir = resume_dir;
  options.quiet = true;
  std::ostringstream sink;
  options.progress = &sink;
  options.max_session_steps = max_session_steps;
  return train(config, options);
}

// ------------------------------------------------------------------ schedule

TEST(TrainerSchedule, LinearWarmupThenDecayToTheFloor) {
  ScheduleConfig schedule;
  schedule.warmup_steps = 4;
  schedule.decay = LrDecay::None;
  EXPECT_DOUBLE_EQ(lr_scale_at(schedule, 0, 100), 0.25);
  EXPECT_DOUBLE_EQ(lr_scale_at(schedule, 3, 100), 1.0);
  EXPECT_DOUBLE_EQ(lr_scale_at(schedule, 99, 100), 1.0);
  schedule.decay = LrDecay::Linear;
  schedule.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(lr_scale_at(schedule, 4, 104), 1.0);
  EXPECT_DOUBLE_EQ(lr_scale_at(schedule, 54, 104), 0.55);
  EXPECT_NEAR(lr_scale_at(schedule, 103, 104), 0.1 + 0.9 / 100, 1e-12);
  schedule.decay = LrDecay::Cosine;
  EXPECT_DOUBLE_EQ(lr_scale_at(schedule, 4, 104), 1.0);
  EXPECT_NEAR(lr_scale_at(schedule, 54, 104), 0.55, 1e-12);  // halfway: the midpoint
  EXPECT_GT(lr_scale_at(schedule, 20, 104), lr_scale_at(schedule, 4 + 80, 104));
}

// ------------------------------------------------------------------ smoke runs

void expect_run_lowers_the_loss(const RunConfig& config, const TempDir& dir) {
  const TrainResult result = run_quietly(config, dir.file("run"));
  ASSERT_TRUE(result.completed);
  for (const char* file : {"config.yaml", "metrics.jsonl", "summary.json", "checkpoint.json"})
    EXPECT_TRUE(fs::exists(result.run_dir + "/" + file)) << file;
  EXPECT_EQ(load_config(result.run_dir + "/config.yaml"), config);

  const std::vector<Json> metrics = read_metrics(result.run_dir);
  const std::vector<double> train_losses = values_of(metrics, "train_loss");
  ASSERT_EQ(train_losses.size(), 20u);  // log_every 1
  const double first = (train_losses[0] + train_losses[1]) / 2, last = (train_losses[18] + train_losses[19]) / 2;
  EXPECT_LT(last, 0.8 * first) << kind_of(config.model);
  for (const char* key : {"step", "epoch", "train_loss", "lr", "elapsed_s", "optimizer_s", "samples_per_s"})
    EXPECT_TRUE(metrics.front().contains(key)) << key;

  const Json summary = parse_json(read_file(result.run_dir + "/summary.json"));
  EXPECT_EQ(summary, result.summary);
  EXPECT_EQ(summary.at("steps").get<int64_t>(), 20);
  EXPECT_LT(summary.at("val_loss").get<double>(), std::log(static_cast<double>(std::holds_alternative<GptOptions>(config.model) ? 20 : 3)));
  EXPECT_GT(summary.at("optimizer_s").get<double>(), 0.0);
  EXPECT_LE(summary.at("optimizer_s").get<double>(), summary.at("total_s").get<double>());
  EXPECT_GT(summary.at("peak_rss_mb").get<double>(), 0.0);
  EXPECT_NE(summary.at("host").get<std::string>().find(" logical CPUs"), std::string::npos) << summary.at("host");
  EXPECT_EQ(values_of(metrics, "val_loss").back(), summary.at("val_loss").get<double>());
}

TEST(TrainerSmoke, MlpOnSyntheticDataLowersTheLoss) {
  TempDir dir;
  expect_run_lowers_the_loss(mlp_config(), dir);
}

TEST(TrainerSmoke, TheConfiguredThreadCountAppliesForTheRunOnly) {
  TempDir dir;
  const int before = num_threads();
  RunConfig config = mlp_config();
  config.threads = before + 1;
  const TrainResult result = run_quietly(config, dir.file("run"));
  EXPECT_EQ(result.summary.at("threads").get<int64_t>(), before + 1);
  EXPECT_EQ(num_threads(), before);
}

// A run's peak memory is its own (a sweep trains its points in one process): neither the process's
// earlier peak nor the blocks an earlier run left in the CPU backend's cache count.
TEST(TrainerSmoke, PeakMemoryIsTheRunsOwn) {
  TempDir dir;
  constexpr size_t kBytes = size_t{1} << 30;
  auto* block = static_cast<char*>(cpu_host_allocate(kBytes));
  for (size_t i = 0; i < kBytes; i += 4096) block[i] = 1;  // resident
  cpu_host_release(block, kBytes);                         // kept by the cache (but under ASan)
  const TrainResult result = run_quietly(mlp_config(), dir.file("run"));
  EXPECT_LT(result.summary.at("peak_rss_mb").get<double>(), 1024.0);
}

TEST(TrainerSmoke, CnnOnImagesLowersTheLoss) {
  TempDir dir;
  const RunConfig config = cnn_config(write_idx_dataset(dir));
  expect_run_lowers_the_loss(config, dir);
  const Json summary = parse_json(read_file(dir.file("run/summary.json")));
  EXPECT_GT(summary.at("val_acc").get<double>(), 0.5);  // four classes: chance is 0.25
}

TEST(TrainerSmoke, GptOnTextLowersTheLoss) {
  TempDir dir;
  const RunConfig config = gpt_config(write_text(dir));
  expect_run_lowers_the_loss(config, dir);
  EXPECT_TRUE(fs::exists(dir.file("run/checkpoints/step-000020/vocab.txt")));
}

TEST(TrainerSmoke, GptWithFusedAttentionFollowsTheComposedLosses) {
  // The same seed, data, dropout masks and updates: only float32 rounding inside attention differs.
  TempDir dir;
  const std::string text = write_text(dir);
  // 40 positions: more than one of the fused kernels' 32-key tiles.
  const TrainResult composed = run_quietly(gpt_config(text, {"data.block_size=40"}), dir.file("composed"));
  const TrainResult fused =
      run_quietly(gpt_config(text, {"data.block_size=40", "model.attention=fused"}), dir.file("fused"));
  const std::vector<Json> composed_metrics = read_metrics(composed.run_dir), fused_metrics = read_metrics(fused.run_dir);
  for (const char* key : {"train_loss", "val_loss"}) {
    const std::vector<double> want = values_of(composed_metrics, key), got = values_of(fused_metrics, key);
    ASSERT_EQ(got.size(), want.size()) << key;
    ASSERT_FALSE(want.empty()) << key;
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-4 * want[i]) << key << " " << i;
  }
}

TEST(TrainerSmoke, ShippedTinyConfigsTrainOnTheRealData) {
  // Shipped configs name their data relative to the repo root.
  for (const char* name : {"tiny_mlp_smoke", "tiny_gpt_smoke", "tiny_cnn_smoke"}) {
    SCOPED_TRACE(name);
    RunConfig config = load_config(MUONLAB_SOURCE_DIR "/configs/" + std::string(name) + ".yaml");
    if (config.data.kind != DataKind::Synthetic) {
      config.data.path = MUONLAB_SOURCE_DIR "/" + config.data.path;
      if (!fs::exists(config.data.path)) {
        std::cout << "skipping " << name << ": no " << config.data.path << "\n";
        continue;
      }
    }
    config.threads = 1;  // tiny matrices: a second thread only adds synchronization
    TempDir dir;
    const TrainResult result = run_quietly(config, dir.file("run"));
    const std::vector<double> losses = values_of(read_metrics(result.run_dir), "train_loss");
    ASSERT_GE(losses.size(), 2u);
    EXPECT_LT(losses.back(), losses.front());
    EXPECT_TRUE(result.summary.at("val_loss").is_number());
  }
}

// The model saved in the latest checkpoint of `run_dir`.
std::shared_ptr<Cnn> saved_cnn(const RunConfig& config, const RunData& data, const std::string& run_dir) {
  const auto model = std::dynamic_pointer_cast<Cnn>(
      make_model(config.model, {data.example_shape, data.num_classes, data.vocab_size}, 0));
  load_weights(*model, latest_checkpoint(run_dir)->file("model.safetensors"));
  return model;
}

TEST(TrainerWhitening, StemFiltersComeFromTheDataAndNeverTrainWhileItsBiasTrainsForItsEpochsOnly) {
  TempDir dir;
  const RunConfig config = whitened_cnn_config(write_idx_dataset(dir));
  const RunData data = load_run_data(config);
  const HostBatch sample = dynamic_cast<const ImageBatcher&>(*data.batcher).train_examples(100);
  const std::vector<float> filters =
      patch_whitening_filters(Tensor::from_vector(sample.inputs, sample.input_shape), 2, std::get<CnnOptions>(config.model).whiten_eps)
          .to_vector<float>();
  const auto initial = std::dynamic_pointer_cast<Cnn>(
      make_model(config.model, {data.example_shape, data.num_classes, data.vocab_size}, config.seed));

  // Sessions ending at step 15 (the last with the bias trained), 16 and 20.
  const std::string run_dir = run_quietly(config, dir.file("run"), 15).run_dir;
  const auto at_15 = saved_cnn(config, data, run_dir);
  run_quietly(config, "", 1, run_dir);
  const auto at_16 = saved_cnn(config, data, run_dir);
  ASSERT_TRUE(run_quietly(config, "", 0, run_dir).completed);
  const auto at_20 = saved_cnn(config, data, run_dir);

  for (const auto& model : {at_15, at_16, at_20}) {
    EXPECT_EQ(model->stem->weight.to_vector<float>(), filters);
    for (size_t g = 0; g < model->groups->size(); ++g) {
      const auto group = std::dynamic_pointer_cast<ConvGroup>((*model->groups)[g]);
      for (const auto& norm : {group->norm1, group->norm2})
        EXPECT_EQ(norm->weight.to_vector<float>(), std::vector<float>(static_cast<size_t>(norm->weight.numel()), 1.0f));
    }
  }
  EXPECT_NE(at_15->stem->bias.to_vector<float>(), initial->stem->bias.to_vector<float>());
  EXPECT_NE(at_16->stem->bias.to_vector<float>(), at_15->stem->bias.to_vector<float>());
  EXPECT_EQ(at_20->stem->bias.to_vector<float>(), at_16->stem->bias.to_vector<float>());
  EXPECT_NE(at_20->head->weight.to_vector<float>(), at_16->head->weight.to_vector<float>());
  // The frozen filters have no optimizer state.
  for (const auto& [key, tensor] : load_safetensors(latest_checkpoint(run_dir)->file("optimizer.safetensors")).tensors)
    EXPECT_EQ(key.find("stem.weight"), std::string::npos) << key;
}

TEST(TrainerSmoke, Airbench94MuonRecipeInMiniatureTrainsOnCifar10) {
  // The shipped recipe at a sixteenth of its width on 400 images: 12 steps of 100, whitening bias
  // frozen after the first epoch, SGD lr and decay rescaled to the batch (see the config's notes).
  RunConfig config = load_config(MUONLAB_SOURCE_DIR "/configs/study/cifar10_airbench94_muon.yaml",
                                 {"data.limit_train=400", "data.limit_val=200", "data.batch_size=100",
                                  "model.widths=[16, 16, 16]", "model.whiten_examples=200", "model.whiten_bias_epochs=1",
                                  "optimizer.non_matrix.lr=5.3", "optimizer.non_matrix.weight_decay=7.5471698e-4",
                                  "train.epochs=3", "train.log_every=1", "threads=1"});
  config.data.path = MUONLAB_SOURCE_DIR "/" + config.data.path;
  if (!fs::exists(config.data.path)) GTEST_SKIP() << "no " << config.data.path;
  TempDir dir;
  const TrainResult result = run_quietly(config, dir.file("run"));
  const std::vector<double> losses = values_of(read_metrics(result.run_dir), "train_loss");
  ASSERT_EQ(losses.size(), 12u);
  EXPECT_LT(losses[10] + losses[11], losses[0] + losses[1]);
  EXPECT_GT(result.summary.at("val_acc").get<double>(), 0.15);  // ten classes: chance is 0.1
}

// ------------------------------------------------------------------ resume

// 20 steps straight, against 10 steps, a crash that leaves stray metrics lines, and a resume.
void expect_exact_resume(const RunConfig& config, const TempDir& dir) {
  const TrainResult straight = run_quietly(config, dir.file("straight"));
  const TrainResult first_half = run_quietly(config, dir.file("split"), 10);
  ASSERT_FALSE(first_half.completed);
  ASSERT_EQ(latest_checkpoint(first_half.run_dir)->step, 10);
  {
    std::ofstream metrics(first_half.run_dir + "/metrics.jsonl", std::ios::app);
    metrics << "{\"step\":11,\"train_loss\":123}\n{\"step\":12,\"tra";
  }
  const TrainResult resumed = run_quietly(config, "", 0, first_half.run_dir);
  ASSERT_TRUE(resumed.completed);

  const std::vector<Json> a = read_metrics(straight.run_dir), b = read_metrics(resumed.run_dir);
  ASSERT_EQ(a.size(), b.size()) << config.name;
  for (const char* key : {"step", "train_loss", "lr", "val_loss", "val_acc", "epoch"})
    EXPECT_EQ(values_of(a, key), values_of(b, key)) << config.name << ": " << key;
  EXPECT_EQ(read_file(straight.run_dir + "/checkpoints/step-000020/model.safetensors"),
            read_file(resumed.run_dir + "/checkpoints/step-000020/model.safetensors"))
      << config.name;
  EXPECT_EQ(read_file(straight.run_dir + "/checkpoints/step-000020/optimizer.safetensors"),
            read_file(resumed.run_dir + "/checkpoints/step-000020/optimizer.safetensors"))
      << config.name;
}

TEST(TrainerResume, MlpWithDropoutAccumulationAndClippingMatchesAnUninterruptedRun) {
  TempDir dir;
  expect_exact_resume(mlp_config(), dir);
}

TEST(TrainerResume, CnnWithBatchNormAndAugmentationMatchesAnUninterruptedRun) {
  TempDir dir;
  expect_exact_resume(cnn_config(write_idx_dataset(dir)), dir);
}

TEST(TrainerResume, WhitenedCnnMatchesAnUninterruptedRun) {
  TempDir dir;
  expect_exact_resume(whitened_cnn_config(write_idx_dataset(dir)), dir);
}

TEST(TrainerResume, GptWithDropoutMatchesAnUninterruptedRun) {
  TempDir dir;
  expect_exact_resume(gpt_config(write_text(dir)), dir);
}

TEST(TrainerResume, ALongerRunMayContinueButADifferentConfigIsRefused) {
  TempDir dir;
  const RunConfig config = mlp_config();
  const TrainResult first = run_quietly(config, dir.file("run"));
  const std::string metrics_before = read_file(first.run_dir + "/metrics.jsonl");

  RunConfig changed = config;
  ml::set_learning_rate(changed.optimizer, 0.02);
  try {
    run_quietly(changed, "", 0, first.run_dir);
    FAIL() << "a resume with another learning rate was accepted";
  } catch (const std::runtime_error& error) {
    EXPECT_NE(std::string(error.what()).find("differs"), std::string::npos) << error.what();
    EXPECT_NE(std::string(error.what()).find("lr: 0.02"), std::string::npos) << error.what();
  }
  EXPECT_EQ(read_file(first.run_dir + "/metrics.jsonl"), metrics_before);

  RunConfig longer = config;
  longer.train.steps = 25;
  const TrainResult continued = run_quietly(longer, "", 0, first.run_dir);
  EXPECT_EQ(continued.summary.at("steps").get<int64_t>(), 25);
  EXPECT_EQ(values_of(read_metrics(first.run_dir), "train_loss").size(), 25u);
}

TEST(TrainerResume, RefusesARunWithoutACheckpoint) {
  TempDir dir;
  fs::create_directories(dir.file("empty"));
  write_file_atomic(dir.file("empty/config.yaml"), to_yaml(mlp_config()));
  EXPECT_THROW(run_quietly(mlp_config(), "", 0, dir.file("empty")), std::runtime_error);
}

// ------------------------------------------------------------------ checkpoints

std::vector<std::string> checkpoint_folders(const std::string& run_dir) {
  std::vector<std::string> folders;
  for (const auto& entry : fs::directory_iterator(run_dir + "/checkpoints")) folders.push_back(entry.path().filename().string());
  std::sort(folders.begin(), folders.end());
  return folders;
}

TEST(TrainerCheckpoint, TheNewestKeepCheckpointsAreKept) {
  TempDir dir;
  const TrainResult result = run_quietly(mlp_config({"train.checkpoint_every=5"}), dir.file("run"));
  EXPECT_EQ(checkpoint_folders(result.run_dir), (std::vector<std::string>{"step-000015", "step-000020"}));
  const std::vector<CheckpointRef> listed = listed_checkpoints(result.run_dir);
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0].step, 20);
  EXPECT_EQ(listed[1].step, 15);
  for (const char* file : {"model.safetensors", "optimizer.safetensors", "trainer.json"}) {
    EXPECT_TRUE(fs::exists(listed[0].file(file))) << file;
    EXPECT_EQ(listed[0].crc32.count(file), 1u) << file;
  }
  const TrainResult one = run_quietly(mlp_config({"train.checkpoint_every=5", "train.keep_checkpoints=1"}), dir.file("one"));
  EXPECT_EQ(checkpoint_folders(one.run_dir), std::vector<std::string>{"step-000020"});
}

TEST(TrainerCheckpoint, ResumeSkipsACorruptNewestCheckpointAndSaysWhich) {
  TempDir dir;
  const RunConfig config = mlp_config({"train.checkpoint_every=5"});
  const TrainResult straight = run_quietly(config, dir.file("straight"));
  const TrainResult first = run_quietly(config, dir.file("run"), 10);
  flip_middle_byte(first.run_dir + "/checkpoints/step-000010/model.safetensors");

  TrainOptions options;
  options.resume_dir = first.run_dir;
  options.quiet = true;
  std::ostringstream output;
  options.progress = &output;
  ASSERT_TRUE(train(config, options).completed);
  EXPECT_NE(output.str().find("step-000010/model.safetensors: corrupt"), std::string::npos) << output.str();
  EXPECT_NE(output.str().find("resuming from the newest valid one, " + first.run_dir + "/checkpoints/step-000005"),
            std::string::npos)
      << output.str();
  // Steps 6-10 are trained again, exactly as the first time.
  EXPECT_EQ(values_of(read_metrics(first.run_dir), "train_loss"), values_of(read_metrics(straight.run_dir), "train_loss"));
  EXPECT_EQ(read_file(first.run_dir + "/checkpoints/step-000020/model.safetensors"),
            read_file(straight.run_dir + "/checkpoints/step-000020/model.safetensors"));
}

TEST(TrainerCheckpoint, ARunCheckpointedBeforeChecksumsResumesAndKeepsItsCheckpoint) {
  TempDir dir;
  const RunConfig config = mlp_config();
  const TrainResult first = run_quietly(config, dir.file("run"), 10);
  // The manifest as muonlab wrote it before checksums.
  write_file_atomic(first.run_dir + "/checkpoint.json",
                    R"({"format":"muonlab-checkpoint","version":1,"step":10,"dir":"checkpoints/step-000010",)"
                    R"("files":["model.safetensors","optimizer.safetensors","trainer.json"]})");
  ASSERT_TRUE(run_quietly(config, "", 0, first.run_dir).completed);
  const std::vector<CheckpointRef> listed = listed_checkpoints(first.run_dir);
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[1].step, 10);
  EXPECT_TRUE(listed[1].crc32.empty());
  EXPECT_EQ(listed[1].files.size(), 3u);
}

// trainer.json holds the dropout generator's 64-bit seed and offset as exact JSON integers; checkpoints
// written before JSON numbers held them exactly have them as decimal strings, and resume the same.
TEST(TrainerCheckpoint, ATrainerStateWithTheGeneratorStateAsStringsResumesExactly) {
  TempDir dir;
  const RunConfig config = mlp_config();  // with dropout: a wrong generator state changes the losses
  const TrainResult first = run_quietly(config, dir.file("run"), 10);
  const std::string state_path = first.run_dir + "/checkpoints/step-000010/trainer.json";
  Json state = parse_json(read_file(state_path));
  Json& generator = state.at("dropout_rng");
  for (const char* key : {"seed", "offset"}) {
    ASSERT_TRUE(generator.at(key).is_number_unsigned()) << key;
    generator[key] = std::to_string(generator.at(key).get<uint64_t>());
  }
  write_file_atomic(state_path, dump_json(state) + "\n");
  // Listed as before checksums, so that the edited file is not refused as corrupt.
  write_file_atomic(first.run_dir + "/checkpoint.json",
                    R"({"format":"muonlab-checkpoint","version":1,"step":10,"dir":"checkpoints/step-000010",)"
                    R"("files":["model.safetensors","optimizer.safetensors","trainer.json"]})");
  const TrainResult resumed = run_quietly(config, "", 0, first.run_dir);
  const TrainResult straight = run_quietly(config, dir.file("straight"));
  EXPECT_EQ(values_of(read_metrics(resumed.run_dir), "train_loss"), values_of(read_metrics(straight.run_dir), "train_loss"));
}

// A checkpoint listed without checksums (written before them) whose trainer.json or vocab.txt is
// damaged: resume and eval name that file.
TEST(TrainerCheckpoint, ADamagedTrainerStateOrVocabularyIsReportedAsThatFile) {
  TempDir dir;
  const RunConfig config = gpt_config(write_text(dir), {"train.steps=4"});
  const TrainResult first = run_quietly(config, dir.file("run"), 2);
  const std::string checkpoint = first.run_dir + "/checkpoints/step-000002";
  write_file_atomic(first.run_dir + "/checkpoint.json",
                    R"({"format":"muonlab-checkpoint","version":1,"step":2,"dir":"checkpoints/step-000002",)"
                    R"("files":["model.safetensors","optimizer.safetensors","trainer.json","vocab.txt"]})");
  const std::string trainer_state = read_file(checkpoint + "/trainer.json");
  const std::string vocab = read_file(checkpoint + "/vocab.txt");
  const auto error_of = [&](const std::function<void()>& action) {
    try {
      action();
    } catch (const std::runtime_error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  const auto resume = [&] { run_quietly(config, "", 0, first.run_dir); };
  const auto eval = [&] { evaluate_checkpoint(config, first.run_dir); };

  write_file_atomic(checkpoint + "/trainer.json", trainer_state.substr(0, trainer_state.size() / 2));
  for (const auto& action : {std::function<void()>(resume), std::function<void()>(eval)})
    EXPECT_EQ(error_of(action).rfind(checkpoint + "/trainer.json: not a valid trainer state: ", 0), 0u)
        << error_of(action);
  write_file_atomic(checkpoint + "/trainer.json", "{\"step\": 2}");
  EXPECT_EQ(error_of(resume).rfind(checkpoint + "/trainer.json: not a valid trainer state: ", 0), 0u) << error_of(resume);
  write_file_atomic(checkpoint + "/trainer.json", trainer_state);

  // The vocabulary loses the letter 'a' (byte 97): the text no longer fits it.
  std::string damaged = vocab;
  damaged.erase(damaged.find("\n97\n"), 3);
  write_file_atomic(checkpoint + "/vocab.txt", damaged);
  for (const auto& action : {std::function<void()>(resume), std::function<void()>(eval)})
    EXPECT_NE(error_of(action).find("is not in the character vocabulary " + checkpoint + "/vocab.txt"),
              std::string::npos)
        << error_of(action);
  write_file_atomic(checkpoint + "/vocab.txt", "muonlab-char-vocab 1\n97\nnot a byte\n");
  EXPECT_NE(error_of(eval).find(checkpoint + "/vocab.txt holds something other than byte values"), std::string::npos)
      << error_of(eval);
}

TEST(TrainerCheckpoint, ResumeWithEveryCheckpointCorruptFailsNamingTheFiles) {
  TempDir dir;
  const RunConfig config = mlp_config({"train.checkpoint_every=5"});
  const TrainResult first = run_quietly(config, dir.file("run"), 10);
  flip_middle_byte(first.run_dir + "/checkpoints/step-000010/optimizer.safetensors");
  flip_middle_byte(first.run_dir + "/checkpoints/step-000005/trainer.json");
  try {
    run_quietly(config, "", 0, first.run_dir);
    FAIL() << "resumed from corrupt checkpoints";
  } catch (const std::runtime_error& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("no valid checkpoint"), std::string::npos) << message;
    EXPECT_NE(message.find("step-000010/optimizer.safetensors: corrupt"), std::string::npos) << message;
    EXPECT_NE(message.find("step-000005/trainer.json: corrupt"), std::string::npos) << message;
  }
}

TEST(TrainerCheckpoint, AFailureMidWriteLeavesThePreviousCheckpointLoadable) {
  TempDir dir;
  const RunConfig config = mlp_config();
  const TrainResult first = run_quietly(config, dir.file("run"), 10);
  const CheckpointRef before = *latest_checkpoint(first.run_dir);
  const std::string model_bytes = read_file(before.file("model.safetensors"));

  // The next checkpoint's first file is written, then the second fails halfway.
  const std::vector<CheckpointFile> failing{
      {"model.safetensors", [](const std::string& path) { write_file_atomic(path, std::string("new weights")); }},
      {"optimizer.safetensors", [](const std::string& path) {
         write_file_atomic(path, [](std::ostream& out) {
           out << "half of the optimizer state";
           throw std::runtime_error("disk full");
         });
       }}};
  EXPECT_THROW(write_checkpoint(first.run_dir, 15, failing), std::runtime_error);

  const CheckpointRef after = *latest_checkpoint(first.run_dir);
  EXPECT_EQ(after.step, 10);
  EXPECT_EQ(read_file(after.file("model.safetensors")), model_bytes);
  // And the run resumes from it to the same result as an uninterrupted run.
  const TrainResult resumed = run_quietly(config, "", 0, first.run_dir);
  const TrainResult straight = run_quietly(config, dir.file("straight"));
  EXPECT_EQ(values_of(read_metrics(resumed.run_dir), "train_loss"), values_of(read_metrics(straight.run_dir), "train_loss"));
}

TEST(TrainerCheckpoint, AManifestThatPointsOutsideTheRunIsRefusedNamingIt) {
  TempDir dir;
  const std::string manifest = dir.file("checkpoint.json");
  const auto error_of = [&](const std::string& entry) {
    write_file_atomic(manifest, R"({"format":"muonlab-checkpoint","version":2,"checkpoints":[)" + entry + "]}");
    try {
      listed_checkpoints(dir.path());
    } catch (const std::runtime_error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(error_of(R"({"step":1,"dir":"../../etc","crc32":{}})"),
            manifest + ": checkpoint folder \"../../etc\" is not a folder of checkpoints/");
  EXPECT_EQ(error_of(R"({"step":1,"dir":"checkpoints/..","crc32":{}})"),
            manifest + ": checkpoint folder \"checkpoints/..\" is not a folder of checkpoints/");
  EXPECT_EQ(error_of(R"({"step":1,"dir":"checkpoints/step-000001","crc32":{"../model.safetensors":"00000000"}})"),
            manifest + ": \"../model.safetensors\" is not a plain file name");
  EXPECT_EQ(error_of(R"({"step":1,"dir":"checkpoints/step-000001","crc32":{"model.safetensors":"xyz"}})"),
            manifest + ": crc32 \"xyz\" is not 8 hexadecimal digits");
  EXPECT_EQ(error_of(R"({"step":1,"dir":"checkpoints/step-000001","crc32":{"model.safetensors":"0badf00d"}})"),
            "no error");
}

TEST(TrainerCheckpoint, ResolvesRunFoldersCheckpointFoldersAndFiles) {
  TempDir dir;
  const TrainResult result = run_quietly(mlp_config(), dir.file("run"));
  const CheckpointRef latest = *latest_checkpoint(result.run_dir);
  for (const std::string& path : {result.run_dir, latest.dir, latest.dir + "/model.safetensors",
                                  result.run_dir + "/checkpoint.json"}) {
    const CheckpointRef resolved = resolve_checkpoint(path);
    EXPECT_EQ(resolved.dir, latest.dir) << path;
    EXPECT_EQ(resolved.crc32, latest.crc32) << path;  // so that it can be verified
  }
  EXPECT_THROW(resolve_checkpoint(dir.file("missing")), std::runtime_error);
}

// ------------------------------------------------------------------ failures

TEST(TrainerDiverged, NonFiniteLossStopsNamingTheStepAndKeepsTheLastGoodCheckpoint) {
  TempDir dir;
  const RunConfig config = parse_config(R"(
name: diverging
data: {kind: synthetic, batch_size: 16, num_features: 8, num_classes: 3, num_examples: 192}
model: {kind: mlp, hidden: [32]}
optimizer: {kind: sgd, lr: 1.0e+12}
train: {steps: 50, checkpoint_every: 1, log_every: 1, max_loss_ratio: 0}
)",
                                        "diverging.yaml");
  try {
    run_quietly(config, dir.file("run"));
    FAIL() << "training with lr 1e12 did not diverge";
  } catch (const TrainingDiverged& error) {
    const std::string message = error.what();
    const CheckpointRef last = *latest_checkpoint(dir.file("run"));
    EXPECT_NE(message.find("non-finite"), std::string::npos) << message;
    EXPECT_NE(message.find("at step " + std::to_string(last.step + 1)), std::string::npos) << message;
    EXPECT_NE(message.find(last.dir), std::string::npos) << message;
    EXPECT_FALSE(fs::exists(dir.file("run/summary.json")));
    // The checkpoint is complete and its weights are finite.
    for (const auto& [name, tensor] : load_safetensors(last.file("model.safetensors")).tensors)
      for (float value : tensor.to_vector<float>()) ASSERT_TRUE(std::isfinite(value)) << name;
  }
}

// Every tensor of every checkpoint the run kept.
void expect_checkpoints_finite(const std::string& run_dir) {
  for (const auto& folder : fs::directory_iterator(run_dir + "/checkpoints"))
    for (const char* file : {"model.safetensors", "optimizer.safetensors"})
      for (const auto& [name, tensor] : load_safetensors(folder.path().string() + "/" + file).tensors) {
        if (!is_floating(tensor.dtype())) continue;
        for (double value : tensor.to(DType::Float64).to_vector<double>())
          ASSERT_TRUE(std::isfinite(value)) << folder.path() << " " << file << " " << name;
      }
}

TEST(TrainerDiverged, InfiniteBatchNormStatisticsStopTheRunNamingTheTensor) {
  // SGD at lr 1e6 keeps the training loss finite (BatchNorm normalizes the exploding activations)
  // while the running variances overflow.
  TempDir dir;
  RunConfig config = cnn_config(write_idx_dataset(dir));
  ml::set_learning_rate(config.optimizer, 1e6);
  config.train.checkpoint_every = 1;
  config.train.max_loss_ratio = 0;  // the point is the buffers, whatever the loss does
  try {
    run_quietly(config, dir.file("run"));
    FAIL() << "training with lr 1e6 completed";
  } catch (const TrainingDiverged& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("NaN or infinity in the model tensor"), std::string::npos) << message;
    EXPECT_NE(message.find("running_"), std::string::npos) << message;
    EXPECT_NE(message.find("at step "), std::string::npos) << message;
  }
  EXPECT_FALSE(fs::exists(dir.file("run/summary.json")));
  expect_checkpoints_finite(dir.file("run"));
}

TEST(TrainerDiverged, AHugeFiniteLossIsDivergenceUnlessTheBoundIsOff) {
  TempDir dir;
  RunConfig config = mlp_config({"optimizer.lr=1.0e+6", "train.grad_clip=0", "schedule.warmup_steps=0"});
  try {
    run_quietly(config, dir.file("run"));
    FAIL() << "AdamW at lr 1e6 completed";
  } catch (const TrainingDiverged& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("more than train.max_loss_ratio (100) times the first step's loss"), std::string::npos)
        << message;
  }
  EXPECT_FALSE(fs::exists(dir.file("run/summary.json")));
  config.train.max_loss_ratio = 0;
  EXPECT_TRUE(run_quietly(config, dir.file("unbounded")).completed);
}

TEST(TrainerConfigErrors, MissingDataFailsBeforeTheRunDirectoryIsCreated) {
  TempDir dir;
  EXPECT_THROW(run_quietly(gpt_config(dir.file("no_such_file.txt")), dir.file("run")), std::runtime_error);
  EXPECT_FALSE(fs::exists(dir.file("run")));
  RunConfig unfit = mlp_config();
  unfit.data.batch_size = 1000;  // more than the 192 examples
  EXPECT_THROW(run_quietly(unfit, dir.file("run")), std::runtime_error);
  EXPECT_FALSE(fs::exists(dir.file("run")));
}

TEST(TrainerConfigErrors, ErrorsFoundAgainstTheDataNameTheFileTheLineAndTheKey) {
  TempDir dir;
  const std::string text = write_text(dir);
  const std::string file = dir.write("gpt.yaml", "name: gpt\n"
                                                  "data:\n"
                                                  "  kind: text_char\n"
                                                  "  path: " + text + "\n"
                                                  "  batch_size: 8\n"
                                                  "  block_size: 16\n"
                                                  "model: {kind: gpt, n_layer: 1, n_head: 2, n_embd: 16}\n"
                                                  "optimizer: {kind: adamw, lr: 1.0e-3}\n"
                                                  "schedule: {warmup_steps: 5}\n"
                                                  "train: {steps: 10}\n");
  const auto error_of = [&](const std::vector<std::string>& overrides) {
    try {
      run_quietly(load_config(file, overrides), dir.file("run"));
    } catch (const ConfigError& error) {
      return std::string(error.what());
    }
    return std::string("no ConfigError");
  };
  EXPECT_EQ(error_of({"data.block_size=100000"}),
            "--set data.block_size=100000: data.block_size: 100000 needs more than 100000 training tokens, but " +
                text + " gives 8280");
  EXPECT_EQ(error_of({"train.steps=3"}),
            file + ":9: schedule.warmup_steps: 5 is longer than the run's 3 steps: the learning rate would never reach "
                   "optimizer.lr");
  fs::remove(text);
  EXPECT_EQ(error_of({}), file + ":4: data.path: " + text + ": no such file or folder");
  EXPECT_FALSE(fs::exists(dir.file("run")));
  const RunConfig unfit = mlp_config({"data.batch_size=1000"});  // more than the 192 examples
  EXPECT_THROW(run_quietly(unfit, dir.file("run")), ConfigError);
}

// The ConfigError that training `config` throws, or "no ConfigError".
std::string config_error_of(const RunConfig& config, const TempDir& dir) {
  try {
    run_quietly(config, dir.file("run"));
  } catch (const ConfigError& error) {
    return error.what();
  }
  return "no ConfigError";
}

TEST(TrainerConfigErrors, ATextTooShortToValidateOrOfOneSymbolIsRefused) {
  TempDir dir;
  // 200 characters: the last 20 validate, too few for one window of 24 + 1 (val_loss would be null).
  const std::string short_text = dir.write("short.txt", std::string(100, 'a') + std::string(100, 'b'));
  EXPECT_EQ(config_error_of(gpt_config(short_text, {"data.block_size=24"}), dir),
            "--set data.block_size=24: data.block_size: the validation split of " + short_text +
                " has 20 tokens, too few for one validation window of data.block_size + 1 = 25 (a longer text, a "
                "larger data.val_fraction or a smaller data.block_size)");
  EXPECT_EQ(config_error_of(gpt_config(write_text(dir), {"data.limit_val=10"}), dir).substr(0, 43),
            "--set data.limit_val=10: data.limit_val: th");
  // A file of zero bytes (or of any one repeated symbol) would train to a loss of exactly 0.
  const std::string zeros = dir.write("zeros.txt", std::string(2000, '\0'));
  const std::string one_symbol = "gpt_test.yaml:4: data.path: " + zeros +
                                 ": its 1800 training tokens are all byte 0x00: there is nothing to learn (the loss "
                                 "would fall to 0)";
  EXPECT_EQ(config_error_of(gpt_config(zeros), dir), one_symbol);
  EXPECT_EQ(config_error_of(gpt_config(zeros, {"data.byte_level=true"}), dir), one_symbol);
  EXPECT_FALSE(fs::exists(dir.file("run")));
}

TEST(TrainerConfigErrors, AModelWithFewerOutputsThanTheDataIsRefused) {
  TempDir dir;
  EXPECT_EQ(config_error_of(mlp_config({"model.num_classes=2"}), dir),
            "--set model.num_classes=2: model.num_classes: 2 is fewer than the 3 classes of the synthetic data");
  const std::string text = write_text(dir);
  const std::string message = config_error_of(gpt_config(text, {"model.vocab_size=5"}), dir);
  EXPECT_EQ(message.rfind("--set model.vocab_size=5: model.vocab_size: 5 is smaller than the vocabulary of ", 0), 0u)
      << message;
  EXPECT_NE(message.find(" tokens of " + text), std::string::npos) << message;
}

TEST(TrainerConfigErrors, AnOutputFolderHoldingARunIsNotOverwritten) {
  TempDir dir;
  const TrainResult first = run_quietly(mlp_config(), dir.file("run"));
  const std::string metrics = read_file(first.run_dir + "/metrics.jsonl");
  EXPECT_THROW(run_quietly(mlp_config(), dir.file("run")), std::runtime_error);
  EXPECT_EQ(read_file(first.run_dir + "/metrics.jsonl"), metrics);
}

// ------------------------------------------------------------------ interruption

TEST(TrainerInterrupt, ASignalFinishesTheStepCheckpointsMarksTheSummaryAndTheRunResumesExactly) {
  TempDir dir;
  const RunConfig config = mlp_config();
  const TrainResult straight = run_quietly(config, dir.file("straight"));
  for (const int signal_number : {SIGINT, SIGTERM}) {
    const std::string run_dir = dir.file(signal_number == SIGINT ? "int" : "term");
    SignalAtStep buffer(7, signal_number);
    std::ostream progress(&buffer);
    TrainOptions options;
    options.out_dir = run_dir;
    options.progress = &progress;
    try {
      train(config, options);
      FAIL() << "the run went on after signal " << signal_number;
    } catch (const TrainingInterrupted& error) {
      EXPECT_EQ(error.signal_number(), signal_number);
      EXPECT_NE(std::string(error.what()).find("at step 7 of 20"), std::string::npos) << error.what();
    }
    struct sigaction disposition {};
    sigaction(signal_number, nullptr, &disposition);
    EXPECT_EQ(disposition.sa_handler, SIG_DFL) << "the handler outlived the run";
    EXPECT_EQ(latest_checkpoint(run_dir)->step, 7);
    const Json summary = parse_json(read_file(run_dir + "/summary.json"));
    EXPECT_EQ(summary.at("status").get<std::string>(), "interrupted");
    EXPECT_EQ(summary.at("steps").get<int64_t>(), 7);
    EXPECT_FALSE(run_completed(run_dir));

    ASSERT_TRUE(run_quietly(config, "", 0, run_dir).completed);
    EXPECT_TRUE(run_completed(run_dir));
    EXPECT_EQ(values_of(read_metrics(run_dir), "train_loss"), values_of(read_metrics(straight.run_dir), "train_loss"));
    EXPECT_EQ(values_of(read_metrics(run_dir), "val_loss"), values_of(read_metrics(straight.run_dir), "val_loss"));
  }
}

TEST(TrainerCheckpoint, PeriodicCheckpointsByTimeAreOnByDefault) {
  TempDir dir;
  // A zero-minute interval is "off"; the smallest positive one checkpoints after every step.
  const TrainResult result =
      run_quietly(mlp_config({"train.checkpoint_minutes=1.0e-9", "train.keep_checkpoints=20"}), dir.file("run"));
  EXPECT_EQ(listed_checkpoints(result.run_dir).size(), 20u);
  EXPECT_GT(mlp_config().train.checkpoint_minutes, 0.0);
}

// ------------------------------------------------------------------ one writer per run

TEST(TrainerLock, ASecondWriterOfARunFailsAtOnceAndTheLockGoesWithTheRun) {
  TempDir dir;
  const RunConfig config = mlp_config();
  const TrainResult first = run_quietly(config, dir.file("run"), 10);
  const std::string metrics = read_file(first.run_dir + "/metrics.jsonl");
  {
    // What another process training there holds.
    const int fd = ::open(first.run_dir.c_str(), O_RDONLY | O_DIRECTORY);
    ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
    for (const auto& [out, resume] : {std::pair<std::string, std::string>{"", first.run_dir}, {first.run_dir, ""}}) {
      try {
        run_quietly(config, out, 0, resume);
        ADD_FAILURE() << "a second writer was let in (out '" << out << "', resume '" << resume << "')";
      } catch (const std::runtime_error& error) {
        EXPECT_NE(std::string(error.what()).find("another muonlab process is training in this run directory"),
                  std::string::npos)
            << error.what();
      }
    }
    ::close(fd);
  }
  EXPECT_EQ(read_file(first.run_dir + "/metrics.jsonl"), metrics);
  // The lock is released when train() returns or throws: the next session goes ahead in-process.
  EXPECT_TRUE(run_quietly(config, "", 0, first.run_dir).completed);
}

// ------------------------------------------------------------------ evaluation

TEST(TrainerEval, CheckpointEvaluationReproducesTheRunsFinalEvaluation) {
  TempDir dir;
  const RunConfig config = cnn_config(write_idx_dataset(dir));
  const TrainResult result = run_quietly(config, dir.file("run"));
  for (const std::string& path : {result.run_dir, result.run_dir + "/checkpoints/step-000020/model.safetensors"}) {
    const Json json = evaluate_checkpoint(config, path);
    EXPECT_EQ(json.at("step").get<int64_t>(), 20);
    EXPECT_EQ(json.at("val_loss").get<double>(), result.summary.at("val_loss").get<double>());
    EXPECT_EQ(json.at("val_acc").get<double>(), result.summary.at("val_acc").get<double>());
    EXPECT_EQ(json.at("targets").get<int64_t>(), 64);
    EXPECT_EQ(parse_json(dump_json(json)), json);
  }
  // A checkpoint of another architecture is refused by name.
  RunConfig other = config;
  std::get<CnnOptions>(other.model).widths = {8, 8};
  EXPECT_THROW(evaluate_checkpoint(other, result.run_dir), std::runtime_error);
}

TEST(TrainerEval, ACorruptCheckpointFailsNamingTheFile) {
  TempDir dir;
  const RunConfig config = mlp_config();
  const TrainResult result = run_quietly(config, dir.file("run"));
  const std::string model = result.run_dir + "/checkpoints/step-000020/model.safetensors";
  flip_middle_byte(model);
  for (const std::string& path : {result.run_dir, result.run_dir + "/checkpoints/step-000020"}) {
    try {
      evaluate_checkpoint(config, path);
      FAIL() << "evaluated a corrupt checkpoint: " << path;
    } catch (const std::runtime_error& error) {
      EXPECT_NE(std::string(error.what()).find(model + ": corrupt"), std::string::npos) << error.what();
    }
  }
}

TEST(TrainerEval, AConfigWithAnotherModelOrDataIsRefusedListingTheKeys) {
  TempDir dir;
  const RunConfig config = gpt_config(write_text(dir));
  const TrainResult result = run_quietly(config, dir.file("run"));
  RunConfig changed = config;
  std::get<GptOptions>(changed.model).n_head = 4;
  std::get<GptOptions>(changed.model).activation = GptActivation::Relu2;
  changed.data.val_fraction = 0.2;
  try {
    evaluate_checkpoint(changed, result.run_dir);
    FAIL() << "evaluated with another n_head, activation and validation split";
  } catch (const std::runtime_error& error) {
    const std::string message = error.what();
    for (const char* listed : {"model.n_head: 2 vs 4", "model.activation: gelu vs relu2", "data.val_fraction: 0.1 vs 0.2"})
      EXPECT_NE(message.find(listed), std::string::npos) << message;
  }
  // What only training or the evaluation itself uses may differ.
  RunConfig evaluation = config;
  ml::set_learning_rate(evaluation.optimizer, 1);
  std::get<GptOptions>(evaluation.model).dropout = 0;
  evaluation.data.val_batch_size = 4;
  EXPECT_NO_THROW(evaluate_checkpoint(evaluation, result.run_dir));
}

// One test-time view of an image [C, H, W]: output(y, x) = input(y + shift, x' + shift) with
// x' = W-1-x when mirrored, else x, and the border reflected (the edge pixel not repeated).
struct EvalView {
  double weight;
  bool mirror;
  int64_t shift;
};

// The validation loss and accuracy of the run's final model with the logits of each image
// averaged over `views` built on the host pixel by pixel.
std::pair<double, double> host_view_evaluation(const RunConfig& config, const std::string& run_dir,
                                               const std::vector<EvalView>& views) {
  const RunData data = load_run_data(config);
  const std::shared_ptr<Model> model =
      make_model(config.model, {data.example_shape, data.num_classes, data.vocab_size}, 0);
  load_weights(*model, run_dir + "/checkpoints/step-000020/model.safetensors");
  model->eval();
  NoGradGuard no_grad;
  const auto reflect = [](int64_t i, int64_t n) { return i < 0 ? -i : i >= n ? 2 * (n - 1) - i : i; };
  double loss_sum = 0.0;
  int64_t correct = 0, count = 0;
  for (int64_t index = 0; index < data.batcher->num_val_batches(); ++index) {
    const HostBatch batch = data.batcher->val_batch(index);
    const int64_t height = batch.input_shape[2], width = batch.input_shape[3];
    Tensor logits = zeros({batch.size(), data.num_classes});
    for (const EvalView& view : views) {
      std::vector<float> pixels(batch.inputs.size());
      for (size_t plane = 0; plane < batch.inputs.size() / (height * width); ++plane)
        for (int64_t y = 0; y < height; ++y)
          for (int64_t x = 0; x < width; ++x) {
            const int64_t source_y = reflect(y + view.shift, height);
            const int64_t source_x = reflect((view.mirror ? width - 1 - x : x) + view.shift, width);
            pixels[(plane * height + y) * width + x] = batch.inputs[(plane * height + source_y) * width + source_x];
          }
      logits = logits + model->forward(Tensor::from_vector(pixels, batch.input_shape)) * view.weight;
    }
    const Tensor targets = Tensor::from_vector(batch.targets, batch.target_shape);
    loss_sum += cross_entropy(logits, targets, -100, 0.0, Reduction::Sum).item();
    const std::vector<int64_t> predicted = argmax(logits, -1).to_vector<int64_t>();
    for (size_t i = 0; i < predicted.size(); ++i) correct += predicted[i] == batch.targets[i];
    count += batch.size();
  }
  return {loss_sum / static_cast<double>(count), static_cast<double>(correct) / static_cast<double>(count)};
}

TEST(TrainerEval, MirrorAndTranslateEvaluationsAverageTheLogitsOfTheirViews) {
  TempDir dir;
  const RunConfig trained = cnn_config(write_idx_dataset(dir));
  const TrainResult result = run_quietly(trained, dir.file("run"));
  struct Case {
    bool eval_flip, eval_translate;
    std::vector<EvalView> views;
  };
  const std::vector<Case> cases{
      {true, false, {{0.5, false, 0}, {0.5, true, 0}}},
      {false, true, {{0.5, false, 0}, {0.25, false, -1}, {0.25, false, 1}}},
      // airbench94_muon.py's tta_level 2: 6 views.
      {true, true,
       {{0.25, false, 0}, {0.25, true, 0}, {0.125, false, -1}, {0.125, true, -1}, {0.125, false, 1}, {0.125, true, 1}}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::to_string(c.eval_flip) + " " + std::to_string(c.eval_translate));
    RunConfig config = trained;
    config.data.eval_flip = c.eval_flip;
    config.data.eval_translate = c.eval_translate;
    const Json evaluated = evaluate_checkpoint(config, result.run_dir);
    const auto [loss, accuracy] = host_view_evaluation(config, result.run_dir, c.views);
    EXPECT_NEAR(evaluated.at("val_loss").get<double>(), loss, 1e-6);
    EXPECT_NEAR(evaluated.at("val_acc").get<double>(), accuracy, 1.5 / 64);  // a near-tie may round either way
    EXPECT_NE(evaluated.at("val_loss").get<double>(), result.summary.at("val_loss").get<double>());
  }
}

TEST(TrainerEval, LanguageModelsReportLossButNoAccuracy) {
  TempDir dir;
  const RunConfig config = gpt_config(write_text(dir));
  const TrainResult result = run_quietly(config, dir.file("run"));
  const Json json = evaluate_checkpoint(config, result.run_dir);
  EXPECT_FALSE(json.contains("val_acc"));
  EXPECT_EQ(json.at("val_loss").get<double>(), result.summary.at("val_loss").get<double>());
  EXPECT_EQ(json.at("targets").get<int64_t>(), 4 * 8 * 16);  // eval_batches x batch x block
}

// ------------------------------------------------------------------ progress and demo

TEST(TrainerProgress, PlainLinesEveryLogIntervalAndNotesInQuietModeAreDropped) {
  std::ostringstream lines;
  ProgressReporter reporter(lines, ProgressStyle::Lines, 0, 20, 10);
  for (int64_t step = 1; step <= 20; ++step) reporter.step({step, 1.5, 0.01, 100});
  reporter.note("step 20: val_loss 1.0");
  reporter.finish();
  const std::string text = lines.str();
  EXPECT_NE(text.find("step 10/20  loss 1.5000"), std::string::npos) << text;
  EXPECT_NE(text.find("step 20/20"), std::string::npos) << text;
  EXPECT_EQ(text.find("step 5/20"), std::string::npos) << text;
  EXPECT_NE(text.find("val_loss 1.0\n"), std::string::npos) << text;

  std::ostringstream quiet;
  ProgressReporter silent(quiet, ProgressStyle::Quiet, 0, 20, 1);
  silent.step({1, 1.0, 0.1, 1});
  silent.note("hidden");
  EXPECT_EQ(quiet.str(), "");

  std::ostringstream bar;
  ProgressReporter drawn(bar, ProgressStyle::Bar, 0, 4, 0);
  drawn.step({4, 0.5, 0.1, 1});
  drawn.finish();
  EXPECT_NE(bar.str().find("[########################] 4/4"), std::string::npos) << bar.str();
  EXPECT_EQ(format_duration(3725), "1h02m");
  EXPECT_EQ(format_duration(187), "3m07s");
  EXPECT_EQ(format_duration(-1), "?");
}

TEST(TrainerDemo, ComparesAdamWWithMuonOnFashionMnist) {
  const std::vector<RunConfig> configs = demo_configs(true, "/some/idx/folder");
  ASSERT_EQ(configs.size(), 2u);
  EXPECT_EQ(ml::kind_of(configs[0].optimizer), "adamw");
  EXPECT_EQ(ml::kind_of(configs[1].optimizer), "muon");
  for (const RunConfig& config : configs) {
    EXPECT_EQ(config.data.kind, DataKind::FashionMnist);
    EXPECT_EQ(config.data.path, "/some/idx/folder");
  }
  EXPECT_EQ(demo_configs(false)[0].data.limit_train, 0);  // the full run trains on all 60000 images
  EXPECT_GT(configs[0].data.limit_train, 0);
}

TEST(LongTrainerDemo, QuickDemoTrainsBothOptimizersAndPrintsTheTable) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist")) GTEST_SKIP() << "Fashion-MNIST is not installed";
  TempDir dir;
  std::ostringstream out, progress;
  ASSERT_EQ(run_demo(DemoArgs{true}, out, progress, dir.file("runs")), 0) << out.str();
  const std::string table = out.str();
  EXPECT_NE(table.find("optimizer   val_acc"), std::string::npos) << table;
  EXPECT_NE(table.find("\nadamw"), std::string::npos) << table;
  EXPECT_NE(table.find("\nmuon"), std::string::npos) << table;
}

}  // namespace
}  // namespace ml
