// The MPI (and NCCL) communicators: compiled only in a build with MUONLAB_MPI (MUONLAB_WITH_MPI
// defined); communicator.h is the interface the rest of muonlab uses.
#pragma once
#ifdef MUONLAB_WITH_MPI
#include <chrono>
#include <memory>

#include "framework/distributed/communicator.h"

namespace ml {

// Over MPI_COMM_WORLD. CPU tensors go to MPI directly; CUDA tensors are staged through host
// memory (the NCCL communicator moves them on the device instead).
class MpiCommunicator : public Communicator {
 public:
  MpiCommunicator();  // MPI must be initialized
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce(Tensor& tensor, ReduceOp op = ReduceOp::Sum) override;
  void broadcast(Tensor& tensor, int root) override;
  void all_gather(const Tensor& local, Tensor& out, const std::vector<int64_t>& counts) override;
  std::string broadcast_text(const std::string& text, int root) override;
  void barrier() override;

 protected:
  // Runs `collective` and adds its payload and wall-clock to the stats.
  template <typename Collective>
  void timed(int64_t bytes, Collective&& collective) {
    const auto start = std::chrono::steady_clock::now();
    collective();
    stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    stats_.bytes += bytes;
  }

 private:
  int rank_ = 0;
  int size_ = 1;
};

// Initializes MPI (once per process) and returns the communicator over MPI_COMM_WORLD; with
// `cuda_device` in a build with NCCL, one that moves CUDA tensors over NCCL.
std::unique_ptr<Communicator> make_mpi_communicator(bool cuda_device);
// MPI_Finalize, when MPI was initialized and is not finalized yet.
void finalize_mpi();
// MPI_Abort over MPI_COMM_WORLD (does not return); returns when MPI is not running.
void abort_mpi_job(int exit_code);

#ifdef MUONLAB_WITH_NCCL
std::unique_ptr<Communicator> make_nccl_communicator();
#endif

}  // namespace ml
#endif
