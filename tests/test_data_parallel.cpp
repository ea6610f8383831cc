// Data-parallel training pieces that need no second process (batch parts, the owner plan, the
// single-process communicator), and `mpirun ... muonlab train` end to end (label "fault": a rank
// that fails must end the job with its error, never leave the others waiting). The two-rank
// numerics are in tests/mpi/ (label "mpi").
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "datasets/batch.h"
#include "framework/distributed/communicator.h"
#include "framework/io/atomic_file.h"
#include "framework/io/json.h"
#include "framework/ops.h"
#include "optimizers/matrix_optimizer.h"
#include "tests/temp_dir.h"

namespace ml {
namespace {

TEST(DataParallel, BatchPartsCoverTheGlobalBatchInOrder) {
  HostBatch batch;
  batch.input_shape = {5, 2};
  batch.target_shape = {5};
  for (int64_t i = 0; i < 10; ++i) batch.input_ids.push_back(i);
  for (int64_t i = 0; i < 5; ++i) batch.targets.push_back(100 + i);
  const HostBatch first = batch_part(batch, 0, 2), second = batch_part(batch, 1, 2);
  EXPECT_EQ(first.input_ids, (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(first.targets, (std::vector<int64_t>{100, 101}));
  EXPECT_EQ(second.input_ids, (std::vector<int64_t>{4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(second.input_shape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(second.targets, (std::vector<int64_t>{102, 103, 104}));
  EXPECT_EQ(batch_part(batch, 0, 1).targets, batch.targets);
  EXPECT_THROW(batch_part(batch, 2, 2), std::invalid_argument);
}

TEST(DataParallel, OwnersShareTheWorkByShapeAndAreTheSameForEveryCall) {
  const std::vector<Shape> shapes{{16, 16}, {64, 16}, {16, 16}, {16, 64}, {8, 8}};
  const std::vector<int> owners = assign_matrix_owners(shapes, 2);
  EXPECT_EQ(owners, assign_matrix_owners(shapes, 2));
  // The two 16x64 / 64x16 matrices (the costliest) go to different ranks, then the 16x16 pair.
  EXPECT_NE(owners[1], owners[3]);
  EXPECT_NE(owners[0], owners[2]);
  EXPECT_EQ(assign_matrix_owners(shapes, 1), std::vector<int>(5, 0));
  // More ranks than matrices: each matrix has an owner of its own.
  const std::vector<int> spread = assign_matrix_owners({{4, 4}, {4, 4}}, 3);
  EXPECT_NE(spread[0], spread[1]);
}

TEST(DataParallel, SingleProcessIsRankZeroOfOne) {
  SingleProcess alone;
  EXPECT_EQ(alone.rank(), 0);
  EXPECT_EQ(alone.size(), 1);
  Tensor values = Tensor::from_vector(std::vector<float>{1, 2, 3}, {3});
  alone.all_reduce(values);
  EXPECT_EQ(values.to_vector<float>(), (std::vector<float>{1, 2, 3}));
  Tensor gathered = zeros({3});
  alone.all_gather(values, gathered, {3});
  EXPECT_EQ(gathered.to_vector<float>(), (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(alone.broadcast_text("run", 0), "run");
  EXPECT_EQ(alone.stats().bytes, 0);
}

#ifdef MUONLAB_MPIEXEC
// `command` under mpirun (as root in CI) with its output in `log`; its exit code (124: timeout).
int run_mpi(const std::string& arguments, const std::string& log) {
  const std::string command = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE "
                              "timeout 120 " MUONLAB_MPIEXEC " --oversubscribe " + arguments + " > " + log + " 2>&1";
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

constexpr const char* kMuonlab = MUONLAB_BINARY_DIR "/bin/muonlab";

std::string mlp_yaml(int64_t batch_size) {
  return "name: mpi_fault\nseed: 1\nthreads: 1\n"
         "data: {kind: synthetic, batch_size: " + std::to_string(batch_size) +
         ", num_features: 8, num_classes: 3, num_examples: 128}\n"
         "model: {kind: mlp, hidden: [16, 16]}\noptimizer: {kind: muon, lr: 0.02}\n"
         "schedule: {warmup_steps: 1, decay: cosine}\ntrain: {steps: 6, eval_every: 3, log_every: 2}\n";
}

TEST(FaultMpi, TwoRanksTrainAndRankZeroWritesTheRun) {
  TempDir dir;
  const std::string config = dir.write("ok.yaml", mlp_yaml(16));
  const std::string run = dir.file("run");
  ASSERT_EQ(run_mpi("-np 2 " + std::string(kMuonlab) + " train " + config + " --quiet --out " + run, dir.file("log")), 0)
      << read_file(dir.file("log"));
  const Json summary = parse_json(read_file(run + "/summary.json"));
  EXPECT_EQ(summary.at("ranks").get<int64_t>(), 2);
  EXPECT_GT(summary.at("comm_bytes").get<double>(), 0.0);
  EXPECT_NE(read_file(run + "/metrics.jsonl").find("comm_bytes_per_step"), std::string::npos);
}

TEST(FaultMpi, ARankThatFailsEndsTheJobWithItsError) {
  TempDir dir;
  const std::string good = dir.write("good.yaml", mlp_yaml(16));
  // Rank 1 alone (mpirun's MPMD form) gets a config whose data cannot be read; rank 0 would wait
  // for it forever.
  const std::string broken = dir.write("broken.yaml", "name: mpi_fault\nseed: 1\nthreads: 1\n"
                                                      "data: {kind: text_char, path: /nonexistent/input.txt, "
                                                      "block_size: 8, batch_size: 16}\nmodel: {kind: gpt, n_layer: 1, "
                                                      "n_head: 1, n_embd: 8}\noptimizer: {kind: muon, lr: 0.02}\n"
                                                      "train: {steps: 6}\n");
  const std::string arguments = "-np 1 " + std::string(kMuonlab) + " train " + good + " --quiet --out " + dir.file("run") +
                                " : -np 1 " + kMuonlab + " train " + broken + " --quiet --out " + dir.file("run");
  const int code = run_mpi(arguments, dir.file("log"));
  const std::string log = read_file(dir.file("log"));
  EXPECT_NE(code, 0) << log;
  EXPECT_NE(code, 124) << "the job hung: " << log;
  EXPECT_NE(log.find("/nonexistent/input.txt"), std::string::npos) << log;
  EXPECT_NE(log.find("rank 1 of 2 failed"), std::string::npos) << log;
}

TEST(FaultMpi, GlobalBatchNotAMultipleOfTheRanksIsAConfigError) {
  TempDir dir;
  const std::string config = dir.write("odd.yaml", mlp_yaml(15));
  const int code = run_mpi("-np 2 " + std::string(kMuonlab) + " train " + config + " --quiet --out " + dir.file("run"),
                           dir.file("log"));
  const std::string log = read_file(dir.file("log"));
  EXPECT_EQ(code, 2) << log;
  EXPECT_NE(log.find("data.batch_size"), std::string::npos) << log;
}
#else
TEST(FaultMpi, SkippedWithoutMpi) { GTEST_SKIP() << "built without MPI (MUONLAB_MPI=OFF or no MPI found)"; }
#endif

}  // namespace
}  // namespace ml
