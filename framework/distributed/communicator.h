// The ranks of a data-parallel job and the few collectives training needs. One process per rank
// (llm.c's layout): `mpirun -np N muonlab train CFG` starts N copies that each hold the whole model
// and optimizer state, train on a slice of every global batch and exchange gradients and
// orthogonalized updates through this interface. Three implementations:
//   single process: rank 0 of 1, every collective a no-op (a run without mpirun);
//   MPI (OpenMPI): CPU tensors, built with MUONLAB_MPI;
//   NCCL: CUDA tensors over NCCL, bootstrapped and for host data falling back to MPI (built with
//         MUONLAB_MPI and CUDA when nccl.h is found).
// Every rank must call the same collectives in the same order with the same shapes: the callers
// derive the schedule from facts all ranks share (the step, the parameter list, agreed flags),
// never from rank-local ones.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "framework/backend.h"  // ReduceOp
#include "framework/tensor.h"

namespace ml {

// Totals since the communicator was made: the bytes this rank handed to collectives (its payload:
// the buffer of an all-reduce or broadcast, its own part of an all-gather) and the wall-clock
// seconds it spent inside them (waiting for slower ranks included).
struct CommStats {
  int64_t bytes = 0;
  double seconds = 0.0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In place on a contiguous tensor: every rank ends with the elementwise reduction over ranks.
  virtual void all_reduce(Tensor& tensor, ReduceOp op = ReduceOp::Sum) = 0;
  // In place on a contiguous tensor: every rank ends with `root`'s values.
  virtual void broadcast(Tensor& tensor, int root) = 0;
  // Concatenates the contiguous `local` of every rank, in rank order, into `out` (1-D, contiguous,
  // the same dtype and device); `counts[r]` is rank r's element count, known to every rank.
  virtual void all_gather(const Tensor& local, Tensor& out, const std::vector<int64_t>& counts) = 0;
  // `root`'s text on every rank.
  virtual std::string broadcast_text(const std::string& text, int root) = 0;
  virtual void barrier() = 0;

  const CommStats& stats() const { return stats_; }

 protected:
  CommStats stats_;
};

// Rank 0 of a job of one: what a run started without mpirun uses.
class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce(Tensor&, ReduceOp = ReduceOp::Sum) override {}
  void broadcast(Tensor&, int) override {}
  void all_gather(const Tensor& local, Tensor& out, const std::vector<int64_t>& counts) override;
  std::string broadcast_text(const std::string& text, int) override { return text; }
  void barrier() override {}
};

// The elementwise reduction over the ranks of a few host numbers (losses, counts, flags).
std::vector<double> all_reduce_values(Communicator& comm, const std::vector<double>& values,
                                      ReduceOp op = ReduceOp::Sum);

// Whether this process was started by an MPI launcher (mpirun / mpiexec set OMPI_COMM_WORLD_SIZE,
// PMI_SIZE or PMIX_RANK). A plain `muonlab train` never initializes MPI, so it runs exactly as a
// build without MPI does.
bool launched_by_mpi();

// The communicator of this process, made at the first call: MPI (NCCL for `cuda_device` true,
// where built) when launched by an MPI launcher, else SingleProcess. Throws when launched by
// mpirun in a build without MPI. It lives until finalize_communicator().
Communicator& process_communicator(bool cuda_device = false);
// Shuts MPI down (MPI_Finalize) if process_communicator() started it; every rank calls it once,
// after its last collective, at a normal exit.
void finalize_communicator();
// A rank failed with `exit_code`: under an MPI launcher this prints which rank and ends every rank
// of the job (MPI_Abort), so that no rank waits forever in a collective; alone, it just exits.
[[noreturn]] void abort_job(int exit_code);

}  // namespace ml
