#include "models/gpt.h"

#include <cmath>
#include <stdexcept>

#include "framework/ops.h"

namespace ml {
namespace {

// nanoGPT's initialization: every weight matrix and embedding ~ N(0, 0.02), biases zero, and
// the projections back into the residual stream scaled down by sqrt(2 * n_layer) so that the
// residual stream's variance does not grow with depth.
constexpr double kInitStd = 0.02;

void init_normal(const Tensor& weight, double stddev, Generator& gen) {
  NoGradGuard no_grad;
  Tensor target = weight;
  copy_(target, randn(weight.shape(), weight.dtype(), weight.device(), gen) * stddev);
}

void init_linear(const Linear& layer, double stddev, Generator& gen) {
  init_normal(layer.weight, stddev, gen);
  if (layer.bias.defined()) {
    NoGradGuard no_grad;
    Tensor bias = layer.bias;
    zero_(bias);
  }
}

}  // namespace

const SettingList<GptOptions>& GptOptions::settings() {
  using S = GptOptions;
  static const EnumNames<GptActivation> activations{{GptActivation::Gelu, "gelu"}, {GptActivation::Relu2, "relu2"}};
  static const EnumNames<NormKind> norms{{NormKind::LayerNorm, "layernorm"}, {NormKind::RmsNorm, "rmsnorm"}};
  static const EnumNames<PositionKind> positions{{PositionKind::Learned, "learned"}, {PositionKind::Rotary, "rotary"}};
  static const EnumNames<AttentionImpl> attentions{
      {AttentionImpl::Auto, "auto"}, {AttentionImpl::Composed, "composed"}, {AttentionImpl::Fused, "fused"}};
  static const SettingList<S> settings{
      dropout_setting<S>("on the embeddings and on each residual branch"),
      integer<S>("vocab_size", &S::vocab_size, at_least(0), 0, "token embeddings and logits; 0: the data's vocabulary"),
      integer<S>("block_size", &S::block_size, at_least(0), 0, "the longest sequence; 0: data.block_size"),
      integer<S>("n_layer", &S::n_layer, at_least(1), kRequired, "transformer blocks"),
      integer<S>("n_head", &S::n_head, at_least(1), kRequired, "attention heads per block"),
      integer<S>("n_embd", &S::n_embd, at_least(1), kRequired, "the width of the residual stream"),
      integer<S>("mlp_ratio", &S::mlp_ratio, at_least(1), 4, "the MLP's hidden width over n_embd"),
      choice<S>("activation", &S::activation, activations, GptActivation::Gelu, "the MLP's activation"),
      choice<S>("norm", &S::norm, norms, NormKind::LayerNorm, "LayerNorm or RMSNorm before each sublayer"),
      choice<S>("position", &S::position, positions, PositionKind::Learned, "how a token's position enters"),
      choice<S>("attention", &S::attention, attentions, AttentionImpl::Auto,
                "composed ops, the fused kernel, or auto: fused where the device runs it (framework/ops/nn_core.h)"),
      boolean<S>("tie_weights", &S::tie_weights, true, "the head multiplies by the token embeddings"),
      boolean<S>("bias", &S::bias, true, "biases in the linear layers and the LayerNorms"),
  };
  return settings;
}

std::shared_ptr<const RotaryTables> make_rotary_tables(int64_t block_size, int64_t head_dim) {
  const int64_t half = head_dim / 2;
  std::vector<float> cos_values(static_cast<size_t>(block_size * half)), sin_values(cos_values.size());
  for (int64_t t = 0; t < block_size; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double frequency = std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
      const double angle = static_cast<double>(t) * frequency;
      cos_values[t * half + i] = static_cast<float>(std::cos(angle));
      sin_values[t * half + i] = static_cast<float>(std::sin(angle));
    }
  auto tables = std::make_shared<RotaryTables>();
  tables->cos = Tensor::from_vector(cos_values, {block_size, half});
  tables->sin = Tensor::from_vector(sin_values, {block_size, half});
  return tables;
}

Tensor apply_rotary(const Tensor& x, const RotaryTables& tables) {
  const int64_t steps = x.size(2), half = x.size(3) / 2;
  const Tensor cos = tables.cos.narrow(0, 0, steps).to(x.device());
  const Tensor sin = tables.sin.narrow(0, 0, steps).to(x.device());
  const Tensor x1 = x.narrow(3, 0, half), x2 = x.narrow(3, half, half);
  return cat({x1 * cos - x2 * sin, x1 * sin + x2 * cos}, 3);
}

GptNorm::GptNorm(int64_t dim, bool rmsnorm, bool bias) : rmsnorm_(rmsnorm) {
  weight = register_parameter("weight", ones({dim}));
  if (bias && !rmsnorm) this->bias = register_parameter("bias", zeros({dim}));
}

Tensor GptNorm::forward(const Tensor& x) { return rmsnorm_ ? rms_norm(x, weight) : layer_norm(x, weight, bias); }

CausalSelfAttention::CausalSelfAttention(const GptOptions& options, Generator& gen,
                                         std::shared_ptr<const RotaryTables> rotary)
    : n_head_(options.n_head), attention_(options.attention), rotary_(std::move(rotary)) {
  qkv = register_module("qkv", std::make_shared<Linear>(options.n_embd, 3 * options.n_embd, options.bias, gen));
  proj = register_module("proj", std::make_shared<Linear>(options.n_embd, options.n_embd, options.bias, gen));
  init_linear(*qkv, kInitStd, gen);
  init_linear(*proj, kInitStd / std::sqrt(2.0 * static_cast<double>(options.n_layer)), gen);
}

Tensor CausalSelfAttention::forward(const Tensor& x) {
  const int64_t batch = x.size(0), steps = x.size(1), width = x.size(2), head_dim = width / n_head_;
  const Tensor packed = qkv->forward(x);
  // [B, T, C] -> [B, H, T, D], views of the packed projection: the fused attention reads them in
  // place and leaves its output as [B, T, H, D] in memory, so the merge below is a view too.
  const auto heads = [&](int64_t part) {
    return packed.narrow(2, part * width, width).reshape({batch, steps, n_head_, head_dim}).transpose(1, 2);
  };
  Tensor q = heads(0), k = heads(1);
  const Tensor v = heads(2);
  if (rotary_) {
    q = apply_rotary(q, *rotary_);
    k = apply_rotary(k, *rotary_);
  }
  const Tensor y = scaled_dot_product_attention(q, k, v, /*causal=*/true, attention_);
  return proj->forward(y.transpose(1, 2).reshape({batch, steps, width}));
}

GptMlp::GptMlp(const GptOptions& options, Generator& gen) : relu2_(options.activation == GptActivation::Relu2) {
  const int64_t hidden = options.mlp_ratio * options.n_embd;
  fc = register_module("fc", std::make_shared<Linear>(options.n_embd, hidden, options.bias, gen));
  proj = register_module("proj", std::make_shared<Linear>(hidden, options.n_embd, options.bias, gen));
  init_linear(*fc, kInitStd, gen);
  init_linear(*proj, kInitStd / std::sqrt(2.0 * static_cast<double>(options.n_layer)), gen);
}

Tensor GptMlp::forward(const Tensor& x) {
  const Tensor hidden = fc->forward(x);
  return proj->forward(relu2_ ? relu2(hidden) : gelu(hidden, GeluApprox::Tanh));
}

GptBlock::GptBlock(const GptOptions& options, Generator& gen, std::shared_ptr<const RotaryTables> rotary) {
  const bool rmsnorm = options.norm == NormKind::RmsNorm;
  norm1 = register_module("norm1", std::make_shared<GptNorm>(options.n_embd, rmsnorm, options.bias));
  attn = register_module("attn", std::make_shared<CausalSelfAttention>(options, gen, std::move(rotary)));
  norm2 = register_module("norm2", std::make_shared<GptNorm>(options.n_embd, rmsnorm, options.bias));
  mlp = register_module("mlp", std::make_shared<GptMlp>(options, gen));
  dropout_ = register_module("dropout", std::make_shared<Dropout>(options.dropout));
}

Tensor GptBlock::forward(const Tensor& x) {
  // Dropout on the residual branches only: the fused attention kernel has no dropout of the
  // attention weights.
  const Tensor h = x + dropout_->forward(attn->forward(norm1->forward(x)));
  return h + dropout_->forward(mlp->forward(norm2->forward(h)));
}

Gpt::Gpt(const GptOptions& options, Generator& gen) : options_(options) {
  if (options.vocab_size <= 0 || options.block_size <= 0 || options.n_layer <= 0 || options.n_head <= 0 ||
      options.n_embd <= 0 || options.mlp_ratio <= 0)
    throw std::invalid_argument("gpt: vocab_size, block_size, n_layer, n_head, n_embd and mlp_ratio must be positive");
  if (options.n_embd % options.n_head != 0)
    throw std::invalid_argument("gpt: n_embd " + std::to_string(options.n_embd) + " is not divisible by n_head " +
                                std::to_string(options.n_head));
  const int64_t head_dim = options.n_embd / options.n_head;
  const bool rotary_positions = options.position == PositionKind::Rotary;
  if (rotary_positions && head_dim % 2 != 0)
    throw std::invalid_argument("gpt: rotary embeddings need an even head size, got " + std::to_string(head_dim));

  wte = register_module("wte", std::make_shared<Embedding>(options.vocab_size, options.n_embd, gen));
  init_normal(wte->weight, kInitStd, gen);
  std::shared_ptr<const RotaryTables> rotary;
  if (rotary_positions) {
    rotary = make_rotary_tables(options.block_size, head_dim);
  } else {
    wpe = register_module("wpe", std::make_shared<Embedding>(options.block_size, options.n_embd, gen));
    init_normal(wpe->weight, kInitStd, gen);
  }
  dropout_ = register_module("dropout", std::make_shared<Dropout>(options.dropout));
  blocks = register_module("blocks", std::make_shared<Sequential>());
  for (int64_t i = 0; i < options.n_layer; ++i) blocks->push_back(std::make_shared<GptBlock>(options, gen, rotary));
  norm_f = register_module("norm_f", std::make_shared<GptNorm>(options.n_embd, options.norm == NormKind::RmsNorm,
                                                               options.bias));
  if (!options.tie_weights) {
    head = register_module("head", std::make_shared<Linear>(options.n_embd, options.vocab_size, false, gen));
    init_linear(*head, kInitStd, gen);
  }
}

Tensor Gpt::forward(const Tensor& ids) {
  if (ids.dim() != 2 || ids.dtype() != DType::Int64)
    throw std::invalid_argument("gpt: expected Int64 token ids [B, T], got " + ids.str());
  const int64_t steps = ids.size(1);
  if (steps > options_.block_size)
    throw std::invalid_argument("gpt: sequence length " + std::to_string(steps) + " exceeds block_size " +
                                std::to_string(options_.block_size));
  Tensor x = wte->forward(ids);
  if (wpe) x = x + wpe->forward(arange(0, static_cast<double>(steps), 1, DType::Int64, ids.device()));
  x = norm_f->forward(blocks->forward(dropout_->forward(x)));
  return head ? head->forward(x) : linear(x, wte->weight);
}

std::string Gpt::summary() const {
  return "gpt: " + std::to_string(options_.n_layer) + (options_.n_layer == 1 ? " layer, " : " layers, ") +
         std::to_string(options_.n_head) + (options_.n_head == 1 ? " head, width " : " heads, width ") +
         std::to_string(options_.n_embd) + ", vocab " + std::to_string(options_.vocab_size) + ", block " +
         std::to_string(options_.block_size) + ", " + (options_.position == PositionKind::Rotary ? "rotary" : "learned") +
         " positions, " + (options_.norm == NormKind::RmsNorm ? "RMSNorm" : "LayerNorm") + ", " +
         (options_.activation == GptActivation::Relu2 ? "ReLU^2" : "GELU") + " MLP" +
         (options_.tie_weights ? ", tied head" : "") +
         (options_.attention == AttentionImpl::Fused ? ", fused attention" : "") + ", " +
         format_count(num_parameters()) + " parameters";
}

}  // namespace ml
