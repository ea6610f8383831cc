#include "experiments/evaluation.h"

#include <algorithm>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <vector>

#include "datasets/image_batcher.h"
#include "experiments/checkpoint.h"
#include "experiments/run_device.h"
#include "experiments/run_dir.h"
#include "framework/nn/serialize.h"
#include "framework/ops.h"
#include "models/factory.h"

namespace ml {
namespace fs = std::filesystem;
namespace {

// The images [B, C, H, W] mirrored left to right.
Tensor mirror_width(const Tensor& images) {
  const int64_t width = images.size(3);
  return index_select(images, 3, arange(static_cast<double>(width - 1), -1.0, -1.0, DType::Int64, images.device()));
}

// The images [B, C, H, W] with output(y, x) = input(y + shift, x + shift), borders reflected.
Tensor shift_diagonally(const Tensor& images, int64_t shift) {
  Tensor shifted = images;
  for (const int64_t dim : {2, 3}) {
    std::vector<int64_t> sources(static_cast<size_t>(images.size(dim)));
    for (int64_t i = 0; i < images.size(dim); ++i) sources[i] = reflect_index(i + shift, images.size(dim));
    shifted = index_select(shifted, dim, Tensor::from_vector(sources, {images.size(dim)}, images.device()));
  }
  return shifted;
}

Tensor mirror_averaged_logits(Model& model, const Tensor& images, bool mirror) {
  const Tensor logits = model.forward(images);
  return mirror ? (logits + model.forward(mirror_width(images))) * 0.5 : logits;
}

// airbench94_muon.py's infer_mirror_translate when both options are on.
Tensor test_time_augmented_logits(Model& model, const Tensor& images, const EvalOptions& options) {
  const Tensor centred = mirror_averaged_logits(model, images, options.mirror);
  if (!options.translate) return centred;
  const Tensor shifted = (mirror_averaged_logits(model, shift_diagonally(images, -1), options.mirror) +
                          mirror_averaged_logits(model, shift_diagonally(images, 1), options.mirror)) *
                         0.5;
  return (centred + shifted) * 0.5;
}

// Keys of the model and data sections that do not change what a checkpoint computes on the
// validation split: training-only settings, evaluation options and where the files are.
const std::vector<std::string> kKeysEvalMayChange{
    "model.dropout",                                                            // training only
    "data.flip", "data.alternating_flip", "data.crop_padding", "data.translate",  // training augmentation
    "data.batch_size", "data.workers_prefetch",                                 // training batches
    "data.val_batch_size", "data.limit_val", "data.eval_flip", "data.eval_translate",  // evaluation options
    "data.path", "data.val_path"};                                              // where the files are

// `muonlab eval` with a config whose model or data differ from the run's would load the weights
// into another model, or score other data, and print a wrong number: refuse it.
void check_eval_config(const RunConfig& given, const CheckpointRef& checkpoint) {
  const fs::path run_dir = fs::path(checkpoint.dir).lexically_normal().parent_path().parent_path();
  const std::string saved_path = (run_dir / kConfigFile).string();
  if (!fs::exists(saved_path)) return;  // a checkpoint folder outside a run: nothing to compare with
  std::string listed;
  for (const std::string& difference : config_differences(load_run_config(saved_path), given)) {
    const std::string key = difference.substr(0, difference.find(':'));
    const bool defining = key == "seed" || key.rfind("model.", 0) == 0 || key.rfind("data.", 0) == 0;
    if (defining && std::find(kKeysEvalMayChange.begin(), kKeysEvalMayChange.end(), key) == kKeysEvalMayChange.end())
      listed += "\n  " + difference;
  }
  if (!listed.empty())
    throw std::runtime_error("eval: the config differs from the run's " + saved_path +
                             " in keys that define the model or the data (run vs given):" + listed +
                             "\nevaluate with " + saved_path);
}

}  // namespace

EvalOptions eval_options(const RunConfig& config, const RunData& data) {
  return {config.train.eval_batches, !data.is_text, config.data.eval_flip, config.data.eval_translate};
}

EvalResult evaluate(Model& model, const Batcher& batcher, const EvalOptions& options, Device device,
                    Communicator* comm) {
  const bool was_training = model.is_training();
  model.eval();
  NoGradGuard no_grad;
  const int64_t available = batcher.num_val_batches();
  const int64_t batches = options.max_batches > 0 ? std::min(options.max_batches, available) : available;
  const bool classifier = options.classifier;
  double loss_sum = 0.0;
  int64_t correct = 0;
  EvalResult result;
  // The ranks of a job share the batches (rank r takes r, r + N, ...) and add up their sums.
  const int rank = comm ? comm->rank() : 0, ranks = comm ? comm->size() : 1;
  for (int64_t index = rank; index < batches; index += ranks) {
    const HostBatch batch = batcher.val_batch(index);
    const auto [inputs, targets] = batch_tensors(batch, device);
    const Tensor logits = test_time_augmented_logits(model, inputs, options);
    loss_sum += cross_entropy(logits, targets, -100, 0.0, Reduction::Sum).item();
    if (classifier) {
      const std::vector<int64_t> predicted = argmax(logits, -1).to_vector<int64_t>();
      for (size_t i = 0; i < predicted.size(); ++i) correct += predicted[i] == batch.targets[i];
    }
    result.targets += static_cast<int64_t>(batch.targets.size());
  }
  if (ranks > 1) {
    const std::vector<double> summed =
        all_reduce_values(*comm, {loss_sum, static_cast<double>(correct), static_cast<double>(result.targets)});
    loss_sum = summed[0];
    correct = static_cast<int64_t>(summed[1]);
    result.targets = static_cast<int64_t>(summed[2]);
  }
  model.train(was_training);
  result.batches = batches;
  result.loss = result.targets > 0 ? loss_sum / static_cast<double>(result.targets) : 0.0;
  if (classifier && result.targets > 0) result.accuracy = static_cast<double>(correct) / static_cast<double>(result.targets);
  return result;
}

Json evaluate_checkpoint(const RunConfig& config, const std::string& checkpoint_path) {
  const ThreadCountScope threads(config.threads);
  const Device device = run_device(config);
  const CheckpointRef checkpoint = resolve_checkpoint(checkpoint_path);
  verify_checkpoint(checkpoint);
  check_eval_config(config, checkpoint);
  const std::string& dir = checkpoint.dir;
  const std::string model_path = dir + "/" + kModelFile;
  if (!fs::exists(model_path)) throw std::runtime_error(checkpoint_path + ": no " + kModelFile + " in " + dir);
  // Every file of the checkpoint is read before the (long) evaluation, so that a damaged one fails at once.
  std::optional<int64_t> step;
  if (fs::exists(dir + "/" + kTrainerFile)) step = read_loop_state(dir + "/" + kTrainerFile).step;
  std::optional<CharVocab> stored_vocab;
  if (fs::exists(dir + "/" + kVocabFile)) stored_vocab = CharVocab::load(dir + "/" + kVocabFile);
  const RunData data = load_run_data(config, stored_vocab);
  const std::shared_ptr<Model> model = make_model(
      config.model, {data.example_shape, data.num_classes, data.vocab_size}, static_cast<uint64_t>(config.seed));
  load_weights(*model, model_path);
  model->to(device);
  const EvalResult result = evaluate(*model, *data.batcher, eval_options(config, data), device);
  Json json = Json::object({{"checkpoint", dir}});
  if (step) json["step"] = *step;
  json["val_loss"] = result.loss;
  if (result.accuracy) json["val_acc"] = *result.accuracy;
  json["targets"] = result.targets;
  json["batches"] = result.batches;
  return json;
}

}  // namespace ml
