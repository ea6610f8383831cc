// Our modules against PyTorch: three small networks whose weights, inputs, loss and gradients were
// recorded by tests/reference/make_reference.py (see its docstring to regenerate). Each test
// rebuilds the network from our modules, loads the recorded weights, runs forward and backward in
// float32 and compares the loss and every gradient.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>

#include "framework/io/safetensors.h"
#include "framework/nn/layers.h"
#include "framework/nn/module.h"
#include "framework/ops.h"

namespace ml {
namespace {

constexpr double kTolerance = 1e-4;

SafetensorsFile load_reference(const std::string& name) {
  return load_safetensors(std::string(MUONLAB_SOURCE_DIR) + "/tests/reference/" + name + ".safetensors");
}

// ||actual - expected|| / ||expected||: one number per tensor, insensitive to the tiny absolute
// errors of near-zero elements that an elementwise relative error would blow up.
double relative_error(const Tensor& actual, const Tensor& expected) {
  const std::vector<double> a = actual.to_vector<double>(), e = expected.to_vector<double>();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < e.size(); ++i) {
    diff += (a[i] - e[i]) * (a[i] - e[i]);
    norm += e[i] * e[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
}

void expect_close(const Tensor& actual, const Tensor& expected, const std::string& what) {
  ASSERT_TRUE(actual.defined()) << what << " was not computed";
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  EXPECT_LT(relative_error(actual, expected), kTolerance) << what;
}

// Copies the recorded weights into the module by state_dict name (the file also holds inputs
// and gradients, so it is not a weights file for load_weights).
void load_recorded_weights(Module& module, const SafetensorsFile& ref) {
  NoGradGuard no_grad;
  for (auto& [name, tensor] : module.state_dict()) {
    const Tensor& recorded = ref.at(name);
    ASSERT_EQ(recorded.shape(), tensor.shape()) << name;
    copy_(tensor, recorded);
  }
}

// Runs forward and backward from the recorded input and checks the loss, the input gradient and
// the gradient of every parameter (the file must hold exactly one per parameter).
template <typename LossFn>
void check_against_reference(Module& model, const SafetensorsFile& ref, LossFn loss_of_input) {
  load_recorded_weights(model, ref);
  Tensor input = ref.at("input").clone();
  input.requires_grad_();
  const Tensor loss = loss_of_input(input);
  loss.backward();
  EXPECT_NEAR(loss.item(), ref.at("loss").item(), kTolerance * std::abs(ref.at("loss").item())) << "loss";
  expect_close(input.grad(), ref.at("grad.input"), "grad.input");

  std::set<std::string> recorded_grads;
  for (const auto& [name, tensor] : ref.tensors)
    if (name.rfind("grad.", 0) == 0 && name != "grad.input") recorded_grads.insert(name.substr(5));
  std::set<std::string> our_params;
  for (const auto& [name, param] : model.named_parameters()) {
    our_params.insert(name);
    if (recorded_grads.count(name)) expect_close(param.grad(), ref.at("grad." + name), "grad." + name);
  }
  EXPECT_EQ(our_params, recorded_grads);
}

TEST(TorchReference, MlpWithCrossEntropy) {
  const SafetensorsFile ref = load_reference("mlp");
  Sequential mlp{std::make_shared<Linear>(20, 32), std::make_shared<ReLU>(), std::make_shared<Linear>(32, 32),
                 std::make_shared<GELU>(), std::make_shared<Linear>(32, 5)};
  check_against_reference(mlp, ref, [&](const Tensor& x) { return cross_entropy(mlp(x), ref.at("labels")); });
}

struct ConvNet : UnaryModule {
  std::shared_ptr<Conv2d> conv1 =
      register_module("conv1", std::make_shared<Conv2d>(3, 8, 3, /*stride=*/1, /*padding=*/1, /*bias=*/false));
  std::shared_ptr<BatchNorm2d> bn1 = register_module("bn1", std::make_shared<BatchNorm2d>(8));
  std::shared_ptr<Conv2d> conv2 = register_module("conv2", std::make_shared<Conv2d>(8, 16, 3, /*stride=*/2, /*padding=*/1));
  std::shared_ptr<BatchNorm2d> bn2 = register_module("bn2", std::make_shared<BatchNorm2d>(16));
  std::shared_ptr<Linear> head = register_module("head", std::make_shared<Linear>(16, 10));

  Tensor forward(const Tensor& x) override {
    const Tensor h = max_pool2d(gelu(bn1->forward(conv1->forward(x))), 2);
    return head->forward(global_max_pool2d(bn2->forward(gelu(conv2->forward(h)))));
  }
};

TEST(TorchReference, ConvNetWithBatchNormAndLabelSmoothing) {
  const SafetensorsFile ref = load_reference("convnet");
  ConvNet net;
  ASSERT_TRUE(net.is_training());
  check_against_reference(net, ref, [&](const Tensor& x) {
    return cross_entropy(net(x), ref.at("labels"), /*ignore_index=*/-100, /*label_smoothing=*/0.1);
  });
  // Training mode also updated the running statistics, as PyTorch did.
  for (const auto& [name, buffer] : net.named_buffers()) expect_close(buffer, ref.at("after." + name), name);
}

struct CausalSelfAttention : UnaryModule {
  CausalSelfAttention(int64_t dim, int64_t heads)
      : heads(heads),
        qkv(register_module("qkv", std::make_shared<Linear>(dim, 3 * dim))),
        proj(register_module("proj", std::make_shared<Linear>(dim, dim))) {}
  int64_t heads;
  std::shared_ptr<Linear> qkv, proj;

  Tensor forward(const Tensor& x) override {
    const int64_t B = x.size(0), T = x.size(1), C = x.size(2);
    std::vector<Tensor> qkv_parts = chunk(qkv->forward(x), 3, 2);
    for (Tensor& part : qkv_parts) part = part.reshape({B, T, heads, C / heads}).transpose(1, 2);
    const Tensor y = scaled_dot_product_attention(qkv_parts[0], qkv_parts[1], qkv_parts[2], /*causal=*/true);
    return proj->forward(y.transpose(1, 2).reshape({B, T, C}));
  }
};

struct Block : UnaryModule {
  std::shared_ptr<LayerNorm> ln1 = register_module("ln1", std::make_shared<LayerNorm>(32));
  std::shared_ptr<CausalSelfAttention> attn = register_module("attn", std::make_shared<CausalSelfAttention>(32, 4));
  std::shared_ptr<LayerNorm> ln2 = register_module("ln2", std::make_shared<LayerNorm>(32));
  std::shared_ptr<Sequential> mlp = register_module(
      "mlp", std::make_shared<Sequential>(std::initializer_list<std::shared_ptr<UnaryModule>>{
                 std::make_shared<Linear>(32, 128), std::make_shared<GELU>(GeluApprox::Tanh),
                 std::make_shared<Linear>(128, 32)}));

  Tensor forward(const Tensor& x) override {
    const Tensor h = add(x, attn->forward(ln1->forward(x)));
    return add(h, mlp->forward(ln2->forward(h)));
  }
};

TEST(TorchReference, CausalAttentionBlock) {
  const SafetensorsFile ref = load_reference("attention_block");
  Block block;
  check_against_reference(block, ref, [&](const Tensor& x) { return mean(pow(sub(block(x), ref.at("target")), 2.0)); });
}

}  // namespace
}  // namespace ml
