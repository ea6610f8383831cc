// The run configuration: typed structs filled from a validated YAML file.
//
// Every key is checked against one declarative schema (experiments/config.cpp): its type, its
// range or choices, and the `kind`s of its section it applies to. Anything unexpected throws
// ConfigError naming the file and line (or the --set override), the full key path and what was
// expected. After loading, every field that applies to its section's kind holds either the
// value from the file or its documented default; fields that do not apply to the kind are left
// value-initialized (0, false, empty). The settings of the model and of the optimizer are
// declared beside each model (models/<name>.h) and optimizer (optimizers/<name>.h), and the
// `model:` and `optimizer:` schemas are built from them.
//
// Relative paths in a config (data.path, data.val_path) are NOT rewritten: the datasets open
// them relative to the current working directory of the process, not the config file's folder.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "framework/backend.h"
#include "framework/dtype.h"
#include "framework/settings.h"
#include "models/factory.h"
#include "optimizers/factory.h"

namespace ml {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class DataKind { Cifar10, FashionMnist, ImageFolder, TextChar, TextTokens, Synthetic };
// cifar10 | fashion_mnist | image_folder | text_char | text_tokens | synthetic
const EnumNames<DataKind>& data_kind_names();
bool is_image_data(DataKind kind);  // cifar10, fashion_mnist, image_folder
bool is_text_data(DataKind kind);   // text_char, text_tokens

struct DataConfig {
  DataKind kind = DataKind::Synthetic;
  std::string path;  // file or folder of the dataset (not used by synthetic)
  int64_t batch_size = 0;
  int64_t val_batch_size = 0;    // 0: same as batch_size
  int64_t limit_train = 0;       // 0: all; otherwise only the first N training examples
  int64_t limit_val = 0;         // 0: all; otherwise only the first N validation examples
  int64_t workers_prefetch = 0;  // batches prepared ahead on a background thread
  // Image kinds (cifar10, fashion_mnist, image_folder).
  bool flip = false;
  bool alternating_flip = false;  // with flip: each image's flip is drawn once and inverted every odd epoch (airbench)
  // Test-time augmentation: evaluation averages the logits of each image and its mirror image
  // (airbench's tta_level 1).
  bool eval_flip = false;
  // Test-time augmentation: evaluation also averages over the image shifted by one pixel up-left
  // and down-right (reflected border), half the weight on the unshifted views (airbench's
  // tta_level 2 together with eval_flip).
  bool eval_translate = false;
  int64_t crop_padding = 0;
  int64_t translate = 0;
  bool normalize = false;
  // image_folder and text_char: the fraction split off for validation when there is no
  // separate validation data (image_folder: no val_path).
  double val_fraction = 0.0;
  std::string val_path;  // image_folder, text_tokens: separate validation data ("" = none)
  int64_t image_size = 0;  // image_folder: images are resized to image_size x image_size
  // Text kinds (text_char, text_tokens).
  int64_t block_size = 0;
  bool byte_level = false;  // text_char: vocabulary of all 256 bytes instead of the characters seen
  // synthetic: a seeded random classification problem.
  int64_t num_features = 0;
  int64_t num_classes = 0;
  int64_t num_examples = 0;
};

const EnumNames<DeviceType>& device_type_names();              // cpu | cuda
const EnumNames<MatmulPrecision>& matmul_precision_names();   // float32 | tf32 | bf16

// How the learning rate falls after the warmup: not at all, linearly, or along a half cosine.
enum class LrDecay { None, Linear, Cosine };
const EnumNames<LrDecay>& lr_decay_names();  // none | linear | cosine

struct ScheduleConfig {
  int64_t warmup_steps = 0;
  LrDecay decay = LrDecay::None;
  double min_lr_ratio = 0.0;
};

struct TrainConfig {
  int64_t steps = 0;   // exactly one of steps and epochs is > 0; the other is 0
  int64_t epochs = 0;
  int64_t eval_every = 0;        // in steps; 0: only at the end
  int64_t eval_batches = 0;      // 0: the whole validation split
  int64_t log_every = 0;         // in steps; 0: no periodic log lines
  int64_t checkpoint_every = 0;  // in steps; 0: only by time and at the end
  double checkpoint_minutes = 0.0;  // also after this much wall-clock since the last checkpoint; 0: off
  int64_t keep_checkpoints = 0;     // the newest this many checkpoints are kept (older ones are a fallback)
  double grad_clip = 0.0;        // global gradient norm; 0: off
  int64_t grad_accum = 0;
  double label_smoothing = 0.0;
  // A step whose training loss exceeds this multiple of the run's first step's loss has diverged,
  // even when the loss is finite; 0: off.
  double max_loss_ratio = 0.0;
};

struct RunConfig {
  std::string name;
  int64_t seed = 0;
  DeviceType device = DeviceType::CPU;  // cpu | cuda
  int64_t threads = 0;  // 0: the OpenMP default; at most max_config_threads()
  // float32 | tf32 | bf16: the arithmetic of float32 matrix products on CUDA (exact, TF32 tensor
  // cores, or bf16 operands with float32 accumulation; convolutions use TF32 under both tf32 and
  // bf16). No effect on the CPU, which always computes exactly (like PyTorch's allow_tf32).
  MatmulPrecision matmul_precision = MatmulPrecision::Float32;
  // Whether CUDA scatter-style sums (embedding and index_add backward, scatter_add, max-pool
  // backward) add in a fixed order, so that two runs give the same bits; false lets them use
  // float atomics (faster, order-dependent). No effect on the CPU, which is always deterministic.
  bool deterministic = true;
  DataConfig data;
  ModelSettings model;  // the kind's settings struct (models/factory.h)
  OptimizerSettings optimizer;  // the kind's settings struct (optimizers/factory.h)
  ScheduleConfig schedule;
  TrainConfig train;
  // Where the config came from, for errors found after parsing (against the data, say): the file
  // (or the source name given to parse_config) and, for each key written in it or set by --set,
  // "<file>:<line>" or "--set <key>=<value>". Not part of the config: == and to_yaml ignore it.
  std::string source;
  std::map<std::string, std::string> key_origins;
};

// Compares every field the schema knows (which is every field above).
bool operator==(const RunConfig& a, const RunConfig& b);
inline bool operator!=(const RunConfig& a, const RunConfig& b) { return !(a == b); }

// Reads, overrides and validates a config file. `overrides` are `key.sub=value` strings (from
// --set); each value is parsed as YAML (`model.widths=[16,32]`) and replaces the key in the tree
// before validation, so it is checked exactly like a value from the file.
RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// The same for YAML text; `source_name` stands for the file name in error messages.
RunConfig parse_config(const std::string& yaml_text, const std::string& source_name,
                       const std::vector<std::string>& overrides = {});
// A run folder's config.yaml, written by this or an earlier muonlab: keys that an earlier version
// listed for a kind that never read them (dion2's momentum, say) are dropped instead of refused,
// so that old runs still report, resume, evaluate and count as done in a sweep.
RunConfig load_run_config(const std::string& path);

// The fully resolved config (every default filled in) as YAML; parse_config of it gives back an
// equal RunConfig. Written to runs/<dir>/config.yaml.
std::string to_yaml(const RunConfig& config);

// The first line where the resolved configs differ, as "'<line of a>' vs '<line of b>'"; "" when
// they are equal.
std::string first_difference(const RunConfig& a, const RunConfig& b);

// An error about `key` found after parsing, as a ConfigError like a parse error: "<where the key
// was set>: <key>: <message>" (the config's file alone when the key took its default).
[[noreturn]] void fail_config_key(const RunConfig& config, const std::string& key, const std::string& message);

// Every key whose resolved value differs, in schema order, as "<key path>: <value in a> vs <value
// in b>" (a key that only one kind has reads "absent" in the other).
std::vector<std::string> config_differences(const RunConfig& a, const RunConfig& b);

// The largest `threads:` a config may ask for: 4x the hardware threads of this machine. Far more
// threads than cores only slows a run down, and absurd counts make OpenBLAS hang while it
// starts them.
int64_t max_config_threads();

// The candidate nearest to `word` by edit distance when it is close enough to be a likely typo,
// otherwise "". Used for "did you mean" hints.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace ml
