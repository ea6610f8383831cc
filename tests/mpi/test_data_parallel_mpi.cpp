// The data-parallel suite (CTest label "mpi"), run as one program on two ranks:
//   mpirun -np 2 --oversubscribe build/bin/muonlab_mpi_tests
// Every test runs on both ranks in step; a test that needs one process alone (the reference run,
// a resume at N = 1) runs it on each rank with a SingleProcess communicator, or on rank 0 while
// rank 1 waits. Two ranks with the same global batch must train like one process: the gradient
// sum and the all-gathered orthogonalizations change only the order of floating-point sums.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "experiments/checkpoint.h"
#include "experiments/trainer.h"
#include "framework/autograd.h"
#include "framework/distributed/communicator.h"
#include "framework/distributed/data_parallel.h"
#include "framework/io/safetensors.h"
#include "framework/ops.h"
#include "optimizers/factory.h"
#include "tests/temp_dir.h"

#ifdef MUONLAB_WITH_NCCL
#include "framework/backends/cuda/cuda_runtime_probe.h"
#include "framework/distributed/mpi_communicator.h"
#endif

namespace ml {
namespace {

namespace fs = std::filesystem;

Communicator& world() { return process_communicator(); }

// A tiny classifier built from named tensors: three hidden matrices (two of one shape, so that
// the ranks' shares of Newton–Schulz work are grouped by shape), a bias and an output head that
// the Muon family hands to AdamW.
struct TinyNet {
  std::vector<NamedParam> params;

  explicit TinyNet(DType dtype) {
    const auto init = [&](const std::string& name, Shape shape, double phase) {
      int64_t count = 1;
      for (const int64_t d : shape) count *= d;
      std::vector<double> values(static_cast<size_t>(count));
      for (int64_t i = 0; i < count; ++i) values[i] = 0.4 * std::sin(1.3 * static_cast<double>(i) + phase);
      Tensor tensor = Tensor::from_vector(values, shape).to(dtype);
      tensor.requires_grad_();
      params.push_back({name, tensor});
    };
    init("fc1.weight", {16, 6}, 0.1);
    init("fc1.bias", {16}, 0.2);
    init("fc2.weight", {16, 16}, 0.3);
    init("fc3.weight", {16, 16}, 0.4);
    init("head.weight", {3, 16}, 0.5);
  }
  const Tensor& at(size_t i) const { return params[i].param; }

  Tensor loss(const Tensor& x, const Tensor& y) const {
    Tensor h = tanh(add(matmul(x, at(0).t()), at(1)));
    h = tanh(matmul(h, at(2).t()));
    h = tanh(matmul(h, at(3).t()));
    return cross_entropy(matmul(h, at(4).t()), y);
  }
};

constexpr int64_t kBatch = 8;

// Global batch `step`: the same for any number of ranks.
std::pair<Tensor, Tensor> global_batch(int64_t step, DType dtype) {
  std::vector<double> x(kBatch * 6);
  std::vector<int64_t> y(kBatch);
  for (int64_t i = 0; i < kBatch; ++i) {
    for (int64_t j = 0; j < 6; ++j) x[i * 6 + j] = std::sin(7.0 * step + 3.1 * i + 1.7 * j);
    y[i] = (i + step) % 3;
  }
  return {Tensor::from_vector(x, {kBatch, 6}).to(dtype), Tensor::from_vector(y, {kBatch})};
}

OptimizerSettings spec_of(const std::string& kind) {
  OptimizerSettings settings = default_optimizer_settings(kind);
  std::visit(
      [&](auto& s) {
        s.lr = kind == "adamw" ? 1e-2 : 0.02;
        s.weight_decay = 0.01;
      },
      settings);
  // SGD with Nesterov momentum, so that the momentum buffers are exercised too.
  if (auto* sgd = std::get_if<SgdSettings>(&settings)) {
    sgd->momentum = 0.95;
    sgd->nesterov = true;
  }
  return settings;
}

// Trains TinyNet for `steps` steps on `comm`'s part of every global batch, the way the trainer
// does: loss scaled by the part's share, gradients summed over the ranks, one optimizer step.
TinyNet train_tiny(const std::string& kind, DType dtype, Communicator& comm, int steps) {
  TinyNet net(dtype);
  std::unique_ptr<Optimizer> optimizer = make_optimizer(spec_of(kind), net.params);
  optimizer->set_communicator(&comm);
  std::vector<Tensor> tensors;
  for (const NamedParam& p : net.params) tensors.push_back(p.param);
  const int64_t part = kBatch / comm.size();
  for (int step = 0; step < steps; ++step) {
    optimizer->zero_grad();
    const auto [x, y] = global_batch(step, dtype);
    const Tensor loss = net.loss(x.narrow(0, comm.rank() * part, part), y.narrow(0, comm.rank() * part, part));
    (comm.size() > 1 ? loss * (1.0 / comm.size()) : loss).backward();
    reduce_gradients(comm, tensors);
    optimizer->step();
  }
  return net;
}

double max_relative_difference(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to(DType::Float64).to_vector<double>(), y = b.to(DType::Float64).to_vector<double>();
  double difference = 0.0, scale = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    difference = std::max(difference, std::abs(x[i] - y[i]));
    scale = std::max(scale, std::abs(y[i]));
  }
  return difference / std::max(scale, 1e-300);
}

// Whether `tensor` holds the same bits on every rank.
bool same_on_every_rank(const Tensor& tensor) {
  Tensor root = tensor.to(DType::Float64).contiguous().clone();
  world().broadcast(root, 0);
  return all_reduce_values(world(), {max_relative_difference(tensor, root)}, ReduceOp::Max).front() == 0.0;
}

struct Check {
  DType dtype;
  int steps;
  double tolerance;
};

// Float64: 20 steps to 1e-10 for every optimizer. Float32: the two sums of the gradient differ in
// the last bit (~1e-7), and Newton–Schulz amplifies such differences along the small singular
// values (by the product of its first coefficients: about 500 for Keller's quintic, 1000 for
// Polar Express, Dion2's default), compounding over the steps. Measured after 20 steps (largest
// relative difference of any parameter): SGD, AdamW 0, RMNP 1e-6, Turbo-Muon 7e-6 (AMD EPYC, OpenBLAS's
// Zen kernels) to 1.2e-5 (Intel Xeon, its Prescott kernels: this binary keeps OpenBLAS's own choice),
// Muon and NorMuon 3e-5, Dion2 1.5e-4 (already 9e-5 after one step). How much Newton–Schulz amplifies
// depends on the trajectory: since cross-entropy uses the vectorized exp (2026-12-03; values within
// 2e-7 of libm's), Muon reads 1.6e-5 after one step and 9.4e-5 after 20, NorMuon 1.3e-5 and 1.3e-4,
// hence 3e-4 for these three. (A real fault, such as gradients summed but not averaged, is off by
// O(1).) CacheMuon follows Muon until a hit test lands on the other side of gamma (here after step
// 10: then 3e-2): its float32 check stops at 10.
std::vector<Check> checks_of(const std::string& kind) {
  const bool amplifies = kind == "muon" || kind == "normuon" || kind == "turbo_muon";
  const Check float32 = kind == "dion2"        ? Check{DType::Float32, 20, 1e-3}
                        : kind == "cache_muon" ? Check{DType::Float32, 10, 1e-4}
                        : amplifies            ? Check{DType::Float32, 20, 3e-4}
                                               : Check{DType::Float32, 20, 1e-5};
  return {{DType::Float64, 20, 1e-10}, float32};
}

class TwoRanksMatchOneProcess : public ::testing::TestWithParam<std::string> {};

TEST_P(TwoRanksMatchOneProcess, AfterTwentySteps) {
  for (const auto& [dtype, steps, tolerance] : checks_of(GetParam())) {
    SingleProcess alone;
    const TinyNet reference = train_tiny(GetParam(), dtype, alone, steps);
    const TinyNet parallel = train_tiny(GetParam(), dtype, world(), steps);
    for (size_t i = 0; i < reference.params.size(); ++i) {
      EXPECT_LE(max_relative_difference(parallel.at(i), reference.at(i)), tolerance)
          << GetParam() << " " << dtype_name(dtype) << " " << reference.params[i].name;
      EXPECT_TRUE(same_on_every_rank(parallel.at(i))) << reference.params[i].name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Optimizers, TwoRanksMatchOneProcess,
                         ::testing::Values("sgd", "adamw", "lion", "muon", "turbo_muon", "dion2", "rmnp", "normuon",
                                           "cache_muon"));

TEST(DataParallel, ParameterWithoutGradientOnOneRankDoesNotHang) {
  TinyNet net(DType::Float64);
  std::unique_ptr<Optimizer> optimizer = make_optimizer(spec_of("muon"), net.params);
  optimizer->set_communicator(&world());
  std::vector<Tensor> tensors;
  for (const NamedParam& p : net.params) tensors.push_back(p.param);
  const Tensor fc3_before = net.at(3).clone();
  const auto [x, y] = global_batch(0, DType::Float64);
  // Rank 1 skips fc2 (and every rank skips fc3): fc2 has a gradient on rank 0 only.
  Tensor h = tanh(add(matmul(x, net.at(0).t()), net.at(1)));
  if (world().rank() == 0) h = tanh(matmul(h, net.at(2).t()));
  cross_entropy(matmul(h, net.at(4).t()), y).backward();
  ASSERT_EQ(net.at(2).grad().defined(), world().rank() == 0);
  reduce_gradients(world(), tensors);
  optimizer->step();

  EXPECT_TRUE(net.at(2).grad().defined()) << "fc2 gets rank 0's gradient on every rank";
  EXPECT_FALSE(net.at(3).grad().defined()) << "no rank had a gradient for fc3";
  EXPECT_EQ(max_relative_difference(net.at(3), fc3_before), 0.0);
  for (const NamedParam& p : net.params) EXPECT_TRUE(same_on_every_rank(p.param)) << p.name;
}

// ---------------------------------------------------------------- whole runs through train()

RunConfig mlp_config(const std::string& optimizer, int64_t steps) {
  return parse_config(R"(
name: mpi_test
seed: 5
threads: 1
data: {kind: synthetic, batch_size: 16, num_features: 8, num_classes: 3, num_examples: 256}
model: {kind: mlp, hidden: [16, 16], dropout: 0.0}
optimizer: {kind: )" + optimizer + R"(, lr: 0.02}
schedule: {warmup_steps: 2, decay: cosine}
train: {steps: )" + std::to_string(steps) + R"(, eval_every: 4, log_every: 2, checkpoint_every: 4}
)",
                      "mpi_test.yaml");
}

std::map<std::string, Tensor> tensors_of(const std::string& path) {
  std::map<std::string, Tensor> tensors;
  for (const auto& [name, tensor] : load_safetensors(path).tensors) tensors[name] = tensor;
  return tensors;
}

std::string final_checkpoint(const std::string& run_dir, const std::string& file) {
  const std::optional<CheckpointRef> checkpoint = latest_checkpoint(run_dir);
  return checkpoint ? checkpoint->file(file) : "";
}

TEST(DataParallelRun, ResumesBitExactlyAtTwoRanksAndMatchesAtOne) {
  TempDir own;
  const std::string root = world().broadcast_text(own.path(), 0);
  const RunConfig config = mlp_config("dion2", 8);
  TrainOptions options;
  options.quiet = true;
  options.communicator = &world();

  options.out_dir = root + "/straight";
  const TrainResult straight = train(config, options);
  EXPECT_TRUE(straight.completed);

  options.out_dir = root + "/resumed";
  options.max_session_steps = 4;
  EXPECT_FALSE(train(config, options).completed);
  if (world().rank() == 0) fs::copy(root + "/resumed", root + "/at_one", fs::copy_options::recursive);
  world().barrier();
  options.out_dir.clear();
  options.resume_dir = root + "/resumed";
  options.max_session_steps = 0;
  EXPECT_TRUE(train(config, options).completed);

  if (world().rank() == 0) {
    // The step-4 checkpoint of two ranks, continued by one process.
    TrainOptions alone;
    alone.quiet = true;
    alone.resume_dir = root + "/at_one";
    EXPECT_TRUE(train(config, alone).completed);

    for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
      const auto expected = tensors_of(final_checkpoint(root + "/straight", file));
      const auto resumed = tensors_of(final_checkpoint(root + "/resumed", file));
      const auto at_one = tensors_of(final_checkpoint(root + "/at_one", file));
      ASSERT_EQ(expected.size(), resumed.size());
      for (const auto& [name, tensor] : expected) {
        EXPECT_EQ(max_relative_difference(resumed.at(name), tensor), 0.0) << file << " " << name;
        if (is_floating(tensor.dtype())) {
          EXPECT_LE(max_relative_difference(at_one.at(name), tensor), 1e-5) << file << " " << name;
        }
      }
    }
    // Rank 0 logged what the ranks exchanged.
    std::ifstream metrics(root + "/straight/metrics.jsonl");
    const std::string first((std::istreambuf_iterator<char>(metrics)), std::istreambuf_iterator<char>());
    EXPECT_NE(first.find("comm_bytes_per_step"), std::string::npos);
    EXPECT_NE(first.find("comm_s_per_step"), std::string::npos);
  }
  world().barrier();
}

TEST(DataParallelRun, BatchSizeMustDivideByTheRanks) {
  RunConfig config = mlp_config("adamw", 2);
  config.data.batch_size = 15;
  TrainOptions options;
  options.quiet = true;
  options.communicator = &world();
  try {
    train(config, options);
    FAIL() << "expected a config error";
  } catch (const ConfigError& error) {
    EXPECT_NE(std::string(error.what()).find("data.batch_size"), std::string::npos) << error.what();
  }
}

// The NCCL communicator moves CUDA tensors GPU to GPU; NCCL wants one GPU per rank.
TEST(Nccl, CollectivesOfCudaTensors) {
#ifndef MUONLAB_WITH_NCCL
  GTEST_SKIP() << "built without NCCL (it needs the CUDA backend and MPI)";
#else
  if (cuda_device_count() < world().size())
    GTEST_SKIP() << "NCCL needs a GPU per rank: " << cuda_device_count() << " GPU(s) for " << world().size() << " ranks";
  const std::unique_ptr<Communicator> nccl = make_nccl_communicator();
  const int rank = nccl->rank();
  Tensor sums = Tensor::from_vector(std::vector<float>{static_cast<float>(rank + 1), 2.0f}, {2}).to(cuda());
  nccl->all_reduce(sums);
  EXPECT_EQ(sums.to(cpu()).to_vector<float>(), (std::vector<float>{3.0f, 4.0f}));
  Tensor largest = Tensor::from_vector(std::vector<double>{static_cast<double>(rank)}, {1}).to(cuda());
  nccl->all_reduce(largest, ReduceOp::Max);
  EXPECT_EQ(largest.item(), 1.0);
  // Unequal parts: rank r contributes r + 1 copies of r + 1.
  const Tensor local = full({rank + 1}, rank + 1.0, DType::Float32, cuda());
  Tensor gathered = zeros({3}, DType::Float32, cuda());
  nccl->all_gather(local, gathered, {1, 2});
  EXPECT_EQ(gathered.to(cpu()).to_vector<float>(), (std::vector<float>{1.0f, 2.0f, 2.0f}));
  Tensor shared = full({4}, static_cast<double>(rank), DType::Float32, cuda());
  nccl->broadcast(shared, 1);
  EXPECT_EQ(shared.to(cpu()).to_vector<float>(), std::vector<float>(4, 1.0f));
  EXPECT_GT(nccl->stats().bytes, 0);
#endif
}

}  // namespace
}  // namespace ml

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ml::Communicator& world = ml::process_communicator();
  if (world.size() != 2) {
    std::cerr << "muonlab_mpi_tests runs on two ranks: mpirun -np 2 --oversubscribe " << argv[0] << "\n";
    return 1;
  }
  const int result = RUN_ALL_TESTS();
  // A failure on either rank fails the test.
  const double failed = ml::all_reduce_values(world, {result != 0 ? 1.0 : 0.0}, ml::ReduceOp::Max).front();
  ml::finalize_communicator();
  return failed != 0.0 ? 1 : 0;
}
