#include "framework/distributed/communicator.h"

#include <cstdlib>
#include <iostream>
#include <stdexcept>

#include "framework/ops.h"
#include "framework/distributed/mpi_communicator.h"

namespace ml {

void SingleProcess::all_gather(const Tensor& local, Tensor& out, const std::vector<int64_t>& counts) {
  if (counts.size() != 1 || counts[0] != local.numel() || out.numel() != local.numel())
    throw std::invalid_argument("all_gather: one rank contributes its " + std::to_string(local.numel()) + " elements");
  if (!out.is_same(local)) copy_(out, local.reshape({local.numel()}));
}

std::vector<double> all_reduce_values(Communicator& comm, const std::vector<double>& values, ReduceOp op) {
  if (comm.size() == 1) return values;
  Tensor reduced = Tensor::from_vector(values, {static_cast<int64_t>(values.size())});
  comm.all_reduce(reduced, op);
  return reduced.to_vector<double>();
}

bool launched_by_mpi() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK");
}

namespace {
// "rank r of N" as the launcher told this process (OpenMPI, else MPICH's PMI), also before MPI starts.
std::string launch_rank_text() {
  const char* rank = std::getenv("OMPI_COMM_WORLD_RANK") ? std::getenv("OMPI_COMM_WORLD_RANK") : std::getenv("PMI_RANK");
  const char* size = std::getenv("OMPI_COMM_WORLD_SIZE") ? std::getenv("OMPI_COMM_WORLD_SIZE") : std::getenv("PMI_SIZE");
  return std::string("rank ") + (rank ? rank : "?") + " of " + (size ? size : "?");
}
}  // namespace

namespace {
std::unique_ptr<Communicator>& process_communicator_slot() {
  static std::unique_ptr<Communicator> communicator;
  return communicator;
}
}  // namespace

Communicator& process_communicator(bool cuda_device) {
  std::unique_ptr<Communicator>& slot = process_communicator_slot();
  if (slot) return *slot;
  if (!launched_by_mpi()) {
    slot = std::make_unique<SingleProcess>();
  } else {
#ifdef MUONLAB_WITH_MPI
    slot = make_mpi_communicator(cuda_device);
#else
    (void)cuda_device;
    throw std::runtime_error(
        "started by mpirun, but this muonlab was built without MPI: install libopenmpi-dev "
        "(scripts/setup-deps.sh) and configure with -DMUONLAB_MPI=ON");
#endif
  }
  return *slot;
}

void finalize_communicator() {
  process_communicator_slot().reset();
#ifdef MUONLAB_WITH_MPI
  finalize_mpi();
#endif
}

void abort_job(int exit_code) {
  if (launched_by_mpi()) {
    std::cerr << "muonlab: " << launch_rank_text() << " failed (exit code " << exit_code
              << "); ending every rank of the job" << std::endl;
#ifdef MUONLAB_WITH_MPI
    abort_mpi_job(exit_code);  // MPI_Abort, when MPI is running: the launcher ends the others
#endif
  }
  // Before MPI started, or alone: the launcher sees this rank exit with an error and ends the job.
  std::exit(exit_code);
}

}  // namespace ml
