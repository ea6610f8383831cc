// MPI collectives for the data-parallel trainer (OpenMPI; any MPI-3 implementation works).
#include "framework/distributed/mpi_communicator.h"

#include <mpi.h>

#include <climits>
#include <stdexcept>

#include "framework/ops.h"

namespace ml {
namespace {

MPI_Datatype mpi_type(DType dtype) {
  switch (dtype) {
    case DType::Float32: return MPI_FLOAT;
    case DType::Float64: return MPI_DOUBLE;
    case DType::Int64: return MPI_INT64_T;
  }
  throw std::invalid_argument("mpi: unsupported dtype");
}

int mpi_count(int64_t count) {
  if (count < 0 || count > INT_MAX)
    throw std::invalid_argument("mpi: " + std::to_string(count) + " elements do not fit one MPI call");
  return static_cast<int>(count);
}

void check_contiguous(const Tensor& tensor, const char* what) {
  if (!tensor.is_contiguous()) throw std::invalid_argument(std::string("mpi ") + what + ": the tensor must be contiguous");
}

// MPI reads and writes host memory: a CUDA tensor is copied to the host, `operation` runs on the
// copy and the result is copied back.
template <typename Operation>
void on_host(Tensor& tensor, Operation&& operation) {
  if (tensor.device().is_cpu()) {
    operation(tensor);
    return;
  }
  Tensor host = tensor.to(cpu());
  operation(host);
  copy_(tensor, host.to(tensor.device()));
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return MPI_SUM;
    case ReduceOp::Max: return MPI_MAX;
    case ReduceOp::Min: return MPI_MIN;
    case ReduceOp::SumOfSquares: break;
  }
  throw std::invalid_argument("mpi: unsupported reduction");
}

}  // namespace

MpiCommunicator::MpiCommunicator() {
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

void MpiCommunicator::all_reduce(Tensor& tensor, ReduceOp op) {
  check_contiguous(tensor, "all_reduce");
  const int64_t bytes = tensor.numel() * static_cast<int64_t>(dtype_size(tensor.dtype()));
  timed(bytes, [&] {
    on_host(tensor, [&](Tensor& host) {
      MPI_Allreduce(MPI_IN_PLACE, host.raw_data(), mpi_count(host.numel()), mpi_type(host.dtype()),
                    mpi_op(op), MPI_COMM_WORLD);
    });
  });
}

void MpiCommunicator::broadcast(Tensor& tensor, int root) {
  check_contiguous(tensor, "broadcast");
  const int64_t bytes = tensor.numel() * static_cast<int64_t>(dtype_size(tensor.dtype()));
  timed(bytes, [&] {
    on_host(tensor, [&](Tensor& host) {
      MPI_Bcast(host.raw_data(), mpi_count(host.numel()), mpi_type(host.dtype()), root, MPI_COMM_WORLD);
    });
  });
}

void MpiCommunicator::all_gather(const Tensor& local, Tensor& out, const std::vector<int64_t>& counts) {
  check_contiguous(local, "all_gather");
  check_contiguous(out, "all_gather");
  if (static_cast<int>(counts.size()) != size_ || counts[static_cast<size_t>(rank_)] != local.numel())
    throw std::invalid_argument("mpi all_gather: the counts do not match the ranks or this rank's part");
  std::vector<int> recv_counts, displacements;
  int64_t total = 0;
  for (const int64_t count : counts) {
    recv_counts.push_back(mpi_count(count));
    displacements.push_back(mpi_count(total));
    total += count;
  }
  if (out.numel() != total || out.dtype() != local.dtype())
    throw std::invalid_argument("mpi all_gather: the output must hold " + std::to_string(total) + " elements of the input's dtype");
  const int64_t bytes = local.numel() * static_cast<int64_t>(dtype_size(local.dtype()));
  timed(bytes, [&] {
    const Tensor local_host = local.device().is_cpu() ? local : local.to(cpu());
    on_host(out, [&](Tensor& host) {
      MPI_Allgatherv(local_host.raw_data(), mpi_count(local.numel()), mpi_type(local.dtype()), host.raw_data(),
                     recv_counts.data(), displacements.data(), mpi_type(local.dtype()), MPI_COMM_WORLD);
    });
  });
}

std::string MpiCommunicator::broadcast_text(const std::string& text, int root) {
  int64_t length = static_cast<int64_t>(text.size());
  MPI_Bcast(&length, 1, MPI_INT64_T, root, MPI_COMM_WORLD);
  std::string result = rank_ == root ? text : std::string(static_cast<size_t>(length), '\0');
  MPI_Bcast(result.data(), mpi_count(length), MPI_CHAR, root, MPI_COMM_WORLD);
  return result;
}

void MpiCommunicator::barrier() {
  timed(0, [] { MPI_Barrier(MPI_COMM_WORLD); });
}

std::unique_ptr<Communicator> make_mpi_communicator(bool cuda_device) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    // Only the training thread calls MPI; OpenMP workers and the prefetch thread never do.
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  }
#ifdef MUONLAB_WITH_NCCL
  if (cuda_device) return make_nccl_communicator();
#else
  (void)cuda_device;  // CUDA tensors are staged through the host
#endif
  return std::make_unique<MpiCommunicator>();
}

void finalize_mpi() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Finalize();
}

void abort_mpi_job(int exit_code) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return;
  MPI_Abort(MPI_COMM_WORLD, exit_code);
}

}  // namespace ml
