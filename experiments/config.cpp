#include "experiments/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <regex>
#include <sstream>
#include <thread>
#include <type_traits>
#include <utility>

#include "experiments/config_schema.h"
#include "experiments/yaml_file_reader.h"

namespace ml {
namespace {

using namespace schema;

const Kinds kImageKinds{"cifar10", "fashion_mnist", "image_folder"};
const Kinds kTextKinds{"text_char", "text_tokens"};

// Keys that these kinds once accepted although nothing read them (issue 10, item 11). A config
// that sets one is now refused, with `why`; but the config.yaml an earlier muonlab wrote into a
// run folder lists them with their resolved values, and load_run_config drops them there: they
// never changed what the run computed.
const std::vector<RetiredKey>& retired_keys() {
  static const std::string dion2_momentum =
      "Dion2 has no momentum coefficient: it adds each gradient to its buffer (M <- M + G) and decays only the "
      "selected slices, by optimizer.ef_decay";
  static const std::string rmnp_newton_schulz = "RMNP normalizes rows instead of running Newton-Schulz";
  static const std::string eval_batches =
      "text and synthetic data evaluate in batches of data.batch_size; only image data has a separate one";
  static const std::vector<RetiredKey> keys{
      {"optimizer", "momentum", {"dion2"}, dion2_momentum},
      {"optimizer", "nesterov", {"dion2"}, dion2_momentum},
      {"optimizer", "ns_steps", {"rmnp"}, rmnp_newton_schulz},
      {"optimizer", "ns_coefficients", {"rmnp"}, rmnp_newton_schulz},
      {"data", "val_batch_size", {"text_char", "text_tokens", "synthetic"}, eval_batches},
  };
  return keys;
}

// ------------------------------------------------------------------ the schema
// Adding a key of data, schedule, train or the top level: a member in config.h and one row here.
// A model's or an optimizer's key is a row of its own table (models/<name>.cpp, optimizers/<name>.cpp).

// nanoGPT's 90/10 split.
constexpr double kDefaultValFraction = 0.1;

const Section<DataConfig>& data_schema() {
  using D = DataConfig;
  static const Section<D> schema{
      [](const D& data) { return name_of(data_kind_names(), data.kind); },
      {
          choice("kind", &D::kind, data_kind_names(), kRequired),
          only_for({"cifar10", "image_folder", "text_char", "text_tokens"}, path("path", &D::path, kRequired)),
          only_for({"fashion_mnist"}, path("path", &D::path, "/usr/share/datasets/fashion-mnist")),
          integer("batch_size", &D::batch_size, at_least(1), kRequired),
          only_for(kImageKinds, integer("val_batch_size", &D::val_batch_size, at_least(0), 0)),
          integer("limit_train", &D::limit_train, at_least(0), 0),
          integer("limit_val", &D::limit_val, at_least(0), 0),
          integer("workers_prefetch", &D::workers_prefetch, at_least(0), 2),
          only_for(kImageKinds, boolean("flip", &D::flip, false)),
          only_for(kImageKinds, boolean("alternating_flip", &D::alternating_flip, false)),
          only_for(kImageKinds, boolean("eval_flip", &D::eval_flip, false)),
          only_for(kImageKinds, boolean("eval_translate", &D::eval_translate, false)),
          only_for(kImageKinds, integer("crop_padding", &D::crop_padding, at_least(0), 0)),
          only_for(kImageKinds, integer("translate", &D::translate, at_least(0), 0)),
          only_for(kImageKinds, boolean("normalize", &D::normalize, true)),
          only_for({"image_folder", "text_tokens"}, optional_path("val_path", &D::val_path)),
          only_for({"image_folder", "text_char"}, number("val_fraction", &D::val_fraction, closed_open(0, 1), kDefaultValFraction)),
          only_for({"image_folder"}, integer("image_size", &D::image_size, at_least(1), 32)),
          only_for(kTextKinds, integer("block_size", &D::block_size, at_least(1), kRequired)),
          only_for({"text_char"}, boolean("byte_level", &D::byte_level, false)),
          only_for({"synthetic"}, integer("num_features", &D::num_features, at_least(1), 16)),
          only_for({"synthetic"}, integer("num_classes", &D::num_classes, at_least(2), 4)),
          only_for({"synthetic"}, integer("num_examples", &D::num_examples, at_least(1), 512)),
      },
      [](const D& data, const SectionSites& sites) {
        if (data.alternating_flip && !data.flip)
          sites.at("alternating_flip").fail("chooses how data.flip flips; set data.flip: true as well");
        // With a separate validation folder nothing is split off: another fraction would be unused.
        if (data.kind == DataKind::ImageFolder && !data.val_path.empty() && data.val_fraction != kDefaultValFraction)
          sites.at("val_fraction").fail("is not used when data.val_path gives the validation images; remove one of them");
      }};
  return schema;
}

// Every model's own table.
const Section<ModelSettings>& model_schema() {
  static const Section<ModelSettings> schema{
      kind_of<ModelSettings>,
      kind_fields<ModelSettings>(
          true, [](auto kind) { return decltype(kind)::type::settings(); },
          [](auto, auto) { return std::vector<Field<ModelSettings>>{}; }),
      [](const ModelSettings& model, const SectionSites& sites) {
        // Defaults pass (the resolved config lists them); another value would be silently unused.
        const CnnOptions* cnn = std::get_if<CnnOptions>(&model);
        if (cnn && !cnn->whiten) {
          const std::pair<const char*, bool> whitening_keys[] = {
              {"whiten_examples", cnn->whiten_examples != kDefaultWhitenExamples},
              {"whiten_eps", cnn->whiten_eps != kDefaultWhitenEps},
              {"whiten_bias_epochs", cnn->whiten_bias_epochs != 0}};
          for (const auto& [key, changed] : whitening_keys)
            if (changed) sites.at(key).fail("only applies with model.whiten: true");
        }
        const GptOptions* gpt = std::get_if<GptOptions>(&model);
        if (!gpt) return;
        if (gpt->n_embd % gpt->n_head != 0)
          sites.at("n_embd").fail("must be divisible by model.n_head (" + std::to_string(gpt->n_embd) + " % " +
                                  std::to_string(gpt->n_head) + " = " + std::to_string(gpt->n_embd % gpt->n_head) +
                                  ")");
        // Rotary embeddings rotate pairs of channels within each head.
        if (gpt->position == PositionKind::Rotary && (gpt->n_embd / gpt->n_head) % 2 != 0)
          sites.at("position").fail("rotary needs an even head size, but n_embd / n_head = " +
                                    std::to_string(gpt->n_embd / gpt->n_head));
      }};
  return schema;
}

// The non-matrix optimizer of the Muon family, with that role's defaults.
const Section<NonMatrixSettings>& non_matrix_schema() {
  static const Section<NonMatrixSettings> schema{
      kind_of<NonMatrixSettings>,
      kind_fields<NonMatrixSettings>(
          false, [](auto kind) { return non_matrix_settings<typename decltype(kind)::type>(); },
          [](auto, auto) { return std::vector<Field<NonMatrixSettings>>{}; }),
      nullptr};
  return schema;
}

// Every optimizer's own table; the Muon family's kinds add the non_matrix section.
const Section<OptimizerSettings>& optimizer_schema() {
  static const Section<OptimizerSettings> schema{
      kind_of<OptimizerSettings>,
      kind_fields<OptimizerSettings>(
          true, [](auto kind) { return decltype(kind)::type::settings(); },
          [](auto kind, auto access) {
            using S = typename decltype(kind)::type;
            std::vector<Field<OptimizerSettings>> rows;
            if constexpr (std::is_base_of_v<MatrixOptimizerSettings, S>)
              rows.push_back(section<OptimizerSettings, NonMatrixSettings>(
                  "non_matrix",
                  [access](auto& settings) {
                    const auto matrix_settings = access(settings);
                    return matrix_settings ? &matrix_settings->non_matrix : nullptr;
                  },
                  non_matrix_schema(), false));
            return rows;
          }),
      [](const OptimizerSettings& optimizer, const SectionSites& sites) {
        // The renormalization fixes the norm every step: a decay before it would have no effect.
        const MuonSettings* muon = std::get_if<MuonSettings>(&optimizer);
        if (muon && muon->renormalize && muon->weight_decay > 0)
          sites.at("renormalize").fail("replaces weight decay; set optimizer.weight_decay to 0 (it is " +
                                       format_number(muon->weight_decay) + ")");
      }};
  return schema;
}

const Section<ScheduleConfig>& schedule_schema() {
  using S = ScheduleConfig;
  static const Section<S> schema{nullptr,
                                 {
                                     integer("warmup_steps", &S::warmup_steps, at_least(0), 0),
                                     choice("decay", &S::decay, lr_decay_names(), LrDecay::None),
                                     number("min_lr_ratio", &S::min_lr_ratio, closed(0, 1), 0.0),
                                 },
                                 [](const S& schedule, const SectionSites& sites) {
                                   // Without a decay the rate never falls toward the floor.
                                   if (schedule.decay == LrDecay::None && schedule.min_lr_ratio != 0)
                                     sites.at("min_lr_ratio")
                                         .fail("only applies with schedule.decay linear or cosine (it is none)");
                                 }};
  return schema;
}

const Section<TrainConfig>& train_schema() {
  using T = TrainConfig;
  // For steps and epochs 0 means "not given" (so the resolved config can say so); the check
  // below wants exactly one of them.
  static const Section<T> schema{
      nullptr,
      {
          integer("steps", &T::steps, at_least(0), 0),
          integer("epochs", &T::epochs, at_least(0), 0),
          integer("eval_every", &T::eval_every, at_least(0), 0),
          integer("eval_batches", &T::eval_batches, at_least(0), 0),
          integer("log_every", &T::log_every, at_least(0), 10),
          integer("checkpoint_every", &T::checkpoint_every, at_least(0), 0),
          number("checkpoint_minutes", &T::checkpoint_minutes, at_least(0), 10.0),
          integer("keep_checkpoints", &T::keep_checkpoints, at_least(1), 2),
          number("grad_clip", &T::grad_clip, at_least(0), 0.0),
          integer("grad_accum", &T::grad_accum, at_least(1), 1),
          number("label_smoothing", &T::label_smoothing, closed_open(0, 1), 0.0),
          number("max_loss_ratio", &T::max_loss_ratio, at_least(0), 100.0),
      },
      [](const T& train, const SectionSites& sites) {
        if (train.steps > 0 && train.epochs > 0)
          sites.at("epochs").fail("give either train.steps or train.epochs, not both");
        if (train.steps == 0 && train.epochs == 0)
          sites.section.fail("needs train.steps or train.epochs (an integer >= 1: the length of the run)");
      }};
  return schema;
}

// GCC 12 at -O3 warns that the empty std::optional<std::string> of `kRequired` in the name row
// "may be used uninitialized" when it is destroyed: a false positive (the optional is disengaged,
// its destructor touches no string) that GCC's -Wmaybe-uninitialized is known for with
// std::optional after inlining.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
const Section<RunConfig>& run_schema() {
  using R = RunConfig;
  static const Section<R> schema{
      nullptr,
      {
          text("name", &R::name, "[A-Za-z0-9_.-]+", "a name of letters, digits, '_', '.' and '-'", kRequired),
          integer("seed", &R::seed, at_least(0), 0),
          choice("device", &R::device, device_type_names(), DeviceType::CPU),
          integer("threads", &R::threads, at_least(0), 0),
          choice("matmul_precision", &R::matmul_precision, matmul_precision_names(), MatmulPrecision::Float32),
          boolean("deterministic", &R::deterministic, true),
          section("data", &R::data, data_schema(), true),
          section("model", &R::model, model_schema(), true),
          section("optimizer", &R::optimizer, optimizer_schema(), true),
          section("schedule", &R::schedule, schedule_schema(), false),
          section("train", &R::train, train_schema(), true),
      },
      [](const R& run, const SectionSites& sites) {
        if (run.threads > max_config_threads())
          sites.at("threads").fail(std::to_string(run.threads) + " is more than 4x the " +
                                   std::to_string(max_config_threads() / 4) +
                                   " hardware threads of this machine (at most " +
                                   std::to_string(max_config_threads()) + "; 0: the OpenMP default)");
        const bool text_data = is_text_data(run.data.kind);
        const bool image_data = is_image_data(run.data.kind);
        const bool fits = std::holds_alternative<GptOptions>(run.model)   ? text_data
                          : std::holds_alternative<CnnOptions>(run.model) ? image_data
                                                                          : !text_data;
        if (!fits)
          sites.at("model").fail("kind " + kind_of(run.model) + " cannot be trained on data.kind " + name_of(data_kind_names(), run.data.kind) +
                                 " (gpt needs text data, cnn image data, mlp image or synthetic data)");
      }};
  return schema;
}
#pragma GCC diagnostic pop

// ------------------------------------------------------------------ overrides

Override parse_override(const std::string& text) {
  const size_t equals = text.find('=');
  if (equals == std::string::npos) throw ConfigError("--set " + text + ": expected key.sub=value");
  Override result{split_path(text.substr(0, equals)), text};
  static const std::regex key_pattern("[A-Za-z0-9_]+");
  const bool well_formed =
      !result.path.empty() && text[equals - 1] != '.' &&
      std::all_of(result.path.begin(), result.path.end(),
                  [](const std::string& part) { return std::regex_match(part, key_pattern); });
  if (!well_formed)
    throw ConfigError("--set " + text + ": the key must be names joined by dots, like optimizer.lr");
  return result;
}

// Replaces (or adds) the key at `path` in `mapping`, creating missing sections on the way.
void assign(YAML::Node mapping, const Override& override_, size_t depth, const YAML::Node& value) {
  const std::string& key = override_.path[depth];
  if (depth + 1 == override_.path.size()) {
    mapping[key] = value;
    return;
  }
  const YAML::Node existing = mapping[key];
  if (existing.IsDefined() && !existing.IsNull() && !existing.IsMap()) {
    std::string prefix;
    for (size_t i = 0; i <= depth; ++i) prefix = join_path(prefix, override_.path[i]);
    throw ConfigError("--set " + override_.text + ": " + prefix + " is " + describe(existing) +
                      ", not a section with keys");
  }
  if (!existing.IsDefined() || existing.IsNull()) mapping[key] = YAML::Node(YAML::NodeType::Map);
  assign(mapping[key], override_, depth + 1, value);
}

// Where each key of the tree (the file with the overrides applied) was set.
void record_origins(const YAML::Node& mapping, const std::string& path, const Source& source,
                    std::map<std::string, std::string>& origins) {
  for (auto it = mapping.begin(); it != mapping.end(); ++it) {
    const std::string key_path = join_path(path, it->first.Scalar());
    origins[key_path] = source.origin(key_path, it->first.Mark());
    if (it->second.IsMap()) record_origins(it->second, key_path, source, origins);
  }
}

// A config.yaml of a run folder may list keys an earlier muonlab wrote for its kind (see
// RetiredKey): they go before validation.
void drop_retired_keys(const YAML::Node& root) {
  if (!root.IsMap()) return;
  for (const RetiredKey& retired : retired_keys()) {
    // Looked up through the const root: a non-const lookup of a missing key would add it.
    YAML::Node section = root[retired.section];
    if (!section.IsDefined() || !section.IsMap()) continue;
    const YAML::Node kind = std::as_const(section)["kind"];
    if (kind.IsDefined() && kind.IsScalar() && contains(retired.kinds, kind.Scalar())) section.remove(retired.key);
  }
}

enum class ConfigOrigin { User, RunFolder };

RunConfig read_config(const std::string& yaml_text, const std::string& source_name,
                      const std::vector<std::string>& overrides, ConfigOrigin origin) {
  std::vector<Override> parsed;
  std::vector<YAML::Node> values;
  for (const std::string& text : overrides) {
    parsed.push_back(parse_override(text));
    try {
      values.push_back(YAML::Load(text.substr(text.find('=') + 1)));
    } catch (const YAML::ParserException& error) {
      throw ConfigError("--set " + text + ": malformed YAML value: " + error.msg);
    }
  }
  const Source source(source_name, parsed, retired_keys());

  YAML::Node root = YamlFileReader(source_name).load(yaml_text);
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) fail_expected({source, "", root.Mark()}, "a mapping of keys at the top level", root);
  if (origin == ConfigOrigin::RunFolder) drop_retired_keys(root);
  for (size_t i = 0; i < parsed.size(); ++i) assign(root, parsed[i], 0, values[i]);

  RunConfig config;
  run_schema().read(config, root, {source, "", root.Mark()});
  config.source = source.name();
  record_origins(root, "", source, config.key_origins);
  return config;
}

std::string read_config_file(const std::string& path) {
  std::error_code error;
  if (std::filesystem::is_directory(path, error))
    throw ConfigError(path + ": cannot read the config file: it is a directory");
  // A device or a pipe (/dev/zero, say) might never end.
  if (std::filesystem::exists(path, error) && !std::filesystem::is_regular_file(path, error))
    throw ConfigError(path + ": cannot read the config file: it is not a regular file");
  std::ifstream file(path, std::ios::binary);
  if (!file) throw ConfigError(path + ": cannot read the config file: " + std::strerror(errno));
  std::ostringstream contents;
  contents << file.rdbuf();
  if (file.bad()) throw ConfigError(path + ": cannot read the config file: " + std::strerror(errno));
  return contents.str();
}

}  // namespace

const EnumNames<DataKind>& data_kind_names() {
  static const EnumNames<DataKind> names{{DataKind::Cifar10, "cifar10"},     {DataKind::FashionMnist, "fashion_mnist"},
                                         {DataKind::ImageFolder, "image_folder"}, {DataKind::TextChar, "text_char"},
                                         {DataKind::TextTokens, "text_tokens"}, {DataKind::Synthetic, "synthetic"}};
  return names;
}

bool is_image_data(DataKind kind) {
  return kind == DataKind::Cifar10 || kind == DataKind::FashionMnist || kind == DataKind::ImageFolder;
}

bool is_text_data(DataKind kind) { return kind == DataKind::TextChar || kind == DataKind::TextTokens; }

const EnumNames<DeviceType>& device_type_names() {
  static const EnumNames<DeviceType> names{{DeviceType::CPU, "cpu"}, {DeviceType::CUDA, "cuda"}};
  return names;
}

const EnumNames<MatmulPrecision>& matmul_precision_names() {
  static const EnumNames<MatmulPrecision> names{
      {MatmulPrecision::Float32, "float32"}, {MatmulPrecision::Tf32, "tf32"}, {MatmulPrecision::Bf16, "bf16"}};
  return names;
}

const EnumNames<LrDecay>& lr_decay_names() {
  static const EnumNames<LrDecay> names{{LrDecay::None, "none"}, {LrDecay::Linear, "linear"}, {LrDecay::Cosine, "cosine"}};
  return names;
}

int64_t max_config_threads() { return 4 * static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency())); }

std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
  // Optimal string alignment distance: edits plus swaps of neighbouring characters.
  const auto distance = [](const std::string& a, const std::string& b) {
    std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
    for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
    for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
    for (size_t i = 1; i <= a.size(); ++i)
      for (size_t j = 1; j <= b.size(); ++j) {
        d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])});
        if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
          d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    return d[a.size()][b.size()];
  };
  const size_t tolerance = std::max<size_t>(1, word.size() / 3);
  std::string best;
  size_t best_distance = tolerance + 1;
  for (const std::string& candidate : candidates) {
    const size_t d = distance(word, candidate);
    if (d < best_distance) {
      best_distance = d;
      best = candidate;
    }
  }
  return best;
}

bool operator==(const RunConfig& a, const RunConfig& b) { return run_schema().equal(a, b); }

std::string first_difference(const RunConfig& a, const RunConfig& b) {
  if (a == b) return "";
  std::istringstream a_lines(to_yaml(a)), b_lines(to_yaml(b));
  std::string a_line, b_line;
  while (std::getline(a_lines, a_line) && std::getline(b_lines, b_line))
    if (a_line != b_line) break;
  return "'" + a_line + "' vs '" + b_line + "'";
}

namespace {

// The resolved config's values by key path ("model.n_head" -> "2"), in schema order.
void flatten(const YAML::Node& node, const std::string& path, std::vector<std::pair<std::string, std::string>>& out) {
  if (node.IsMap()) {
    for (const auto& entry : node) flatten(entry.second, join_path(path, entry.first.Scalar()), out);
    return;
  }
  YAML::Emitter text;
  text << YAML::Flow << node;
  out.emplace_back(path, text.c_str());
}

std::vector<std::pair<std::string, std::string>> flattened(const RunConfig& config) {
  std::vector<std::pair<std::string, std::string>> values;
  flatten(YAML::Load(to_yaml(config)), "", values);
  return values;
}

}  // namespace

void fail_config_key(const RunConfig& config, const std::string& key, const std::string& message) {
  const auto origin = config.key_origins.find(key);
  throw ConfigError((origin == config.key_origins.end() ? config.source : origin->second) + ": " + key + ": " + message);
}

std::vector<std::string> config_differences(const RunConfig& a, const RunConfig& b) {
  const auto a_values = flattened(a), b_values = flattened(b);
  const auto value_in = [](const std::vector<std::pair<std::string, std::string>>& values, const std::string& key) {
    const auto found = std::find_if(values.begin(), values.end(), [&](const auto& entry) { return entry.first == key; });
    return found == values.end() ? std::string("absent") : found->second;
  };
  std::vector<std::string> differences;
  for (const auto& [key, value] : a_values)
    if (value_in(b_values, key) != value) differences.push_back(key + ": " + value + " vs " + value_in(b_values, key));
  for (const auto& [key, value] : b_values)
    if (value_in(a_values, key) == "absent") differences.push_back(key + ": absent vs " + value);
  return differences;
}

RunConfig parse_config(const std::string& yaml_text, const std::string& source_name,
                       const std::vector<std::string>& overrides) {
  return read_config(yaml_text, source_name, overrides, ConfigOrigin::User);
}

RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  return read_config(read_config_file(path), path, overrides, ConfigOrigin::User);
}

RunConfig load_run_config(const std::string& path) {
  return read_config(read_config_file(path), path, {}, ConfigOrigin::RunFolder);
}

std::string to_yaml(const RunConfig& config) {
  YAML::Emitter out;
  out << YAML::Comment("muonlab run config, fully resolved (every default filled in)") << YAML::Newline;
  run_schema().write(config, out);
  return std::string(out.c_str()) + "\n";
}

}  // namespace ml

