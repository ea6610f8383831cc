// A nanoGPT-style decoder-only transformer: token embeddings (plus learned positions, or rotary
// embeddings applied to queries and keys), pre-norm blocks of causal multi-head attention and an
// MLP, a final norm and a linear head, optionally tied to the token embeddings.
//
// Parameter names follow nanoGPT so the optimizers can group them: "wte" (tokens), "wpe"
// (positions), "blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc,mlp.proj}", "norm_f", "head".
// With tied weights there is no "head" parameter: the head multiplies by wte.weight.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "framework/nn/layers.h"
#include "framework/ops/nn_core.h"
#include "models/model.h"

namespace ml {

enum class GptActivation { Gelu, Relu2 };  // the MLP's: GELU (tanh approximation) or ReLU^2
enum class NormKind { LayerNorm, RmsNorm };
enum class PositionKind { Learned, Rotary };  // learned position embeddings, or rotary ones

// The settings of `model: {kind: gpt}`. Members start at zero; the defaults are the table's
// (with_defaults(GptOptions::settings())).
struct GptOptions {
  static constexpr const char* kind = "gpt";
  static const SettingList<GptOptions>& settings();
  double dropout{};
  int64_t vocab_size{};  // 0 in a config: the data's (make_model fills it in)
  int64_t block_size{};  // longest sequence (size of the position table / rotary cache); 0: the data's
  int64_t n_layer{};
  int64_t n_head{};
  int64_t n_embd{};
  int64_t mlp_ratio{};
  GptActivation activation{};
  NormKind norm{};
  PositionKind position{};
  AttentionImpl attention{};
  bool tie_weights{};
  bool bias{};
};

// LayerNorm (weight, optional bias) or RMSNorm (weight) over the last dimension.
class GptNorm : public UnaryModule {
 public:
  GptNorm(int64_t dim, bool rmsnorm, bool bias);
  Tensor forward(const Tensor& x) override;

  Tensor weight;
  Tensor bias;  // undefined for RMSNorm or without bias

 private:
  bool rmsnorm_;
};

// Rotary position embedding tables: rotates channel pairs (i, i + D/2) of each head by the angle
// t * 10000^(-2i/D) at position t.
struct RotaryTables {
  Tensor cos;  // [block_size, head_dim / 2]
  Tensor sin;
};
std::shared_ptr<const RotaryTables> make_rotary_tables(int64_t block_size, int64_t head_dim);
// Rotates x [B, H, T, D] (T <= block_size): (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos) for
// the halves of D, so that the dot product of a rotated query and key depends only on their
// distance.
Tensor apply_rotary(const Tensor& x, const RotaryTables& tables);

class CausalSelfAttention : public UnaryModule {
 public:
  CausalSelfAttention(const GptOptions& options, Generator& gen, std::shared_ptr<const RotaryTables> rotary);
  Tensor forward(const Tensor& x) override;  // [B, T, C] -> [B, T, C]

  std::shared_ptr<Linear> qkv;
  std::shared_ptr<Linear> proj;

 private:
  int64_t n_head_;
  AttentionImpl attention_;
  std::shared_ptr<const RotaryTables> rotary_;  // null with learned positions
};

class GptMlp : public UnaryModule {
 public:
  GptMlp(const GptOptions& options, Generator& gen);
  Tensor forward(const Tensor& x) override;

  std::shared_ptr<Linear> fc;
  std::shared_ptr<Linear> proj;

 private:
  bool relu2_;
};

class GptBlock : public UnaryModule {
 public:
  GptBlock(const GptOptions& options, Generator& gen, std::shared_ptr<const RotaryTables> rotary);
  Tensor forward(const Tensor& x) override;

  std::shared_ptr<GptNorm> norm1;
  std::shared_ptr<CausalSelfAttention> attn;
  std::shared_ptr<GptNorm> norm2;
  std::shared_ptr<GptMlp> mlp;

 private:
  std::shared_ptr<Dropout> dropout_;
};

class Gpt : public Model {
 public:
  Gpt(const GptOptions& options, Generator& gen);
  // Int64 ids [B, T] with T <= block_size -> logits [B, T, vocab_size].
  Tensor forward(const Tensor& ids) override;
  std::string summary() const override;

  const GptOptions& options() const { return options_; }

  std::shared_ptr<Embedding> wte;
  std::shared_ptr<Embedding> wpe;  // null with rotary embeddings
  std::shared_ptr<Sequential> blocks;  // of GptBlock, named "0", "1", ...
  std::shared_ptr<GptNorm> norm_f;
  std::shared_ptr<Linear> head;  // null with tied weights

 private:
  GptOptions options_;
  std::shared_ptr<Dropout> dropout_;
};

}  // namespace ml
