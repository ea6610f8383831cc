// NCCL collectives for CUDA tensors (built with MUONLAB_MPI and CUDA when nccl.h is found). MPI
// starts the job, hands every rank NCCL's unique id and carries host data (text, CPU tensors);
// CUDA tensors go GPU to GPU. Rank r uses GPU (local rank mod GPUs on its node), chosen before
// the CUDA backend touches a device. Each collective waits for the backend's queued work first
// and for its own result after (no overlap with compute: simple, and enough for a CPU-scale lab).
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <stdexcept>
#include <string>

#include "framework/distributed/mpi_communicator.h"

namespace ml {
namespace {

void check_nccl(ncclResult_t result, const char* what) {
  if (result != ncclSuccess) throw std::runtime_error(std::string("nccl ") + what + ": " + ncclGetErrorString(result));
}

void check_cuda(cudaError_t result, const char* what) {
  if (result != cudaSuccess) throw std::runtime_error(std::string("nccl ") + what + ": " + cudaGetErrorString(result));
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::Float32: return ncclFloat32;
    case DType::Float64: return ncclFloat64;
    case DType::Int64: return ncclInt64;
  }
  throw std::invalid_argument("nccl: unsupported dtype");
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Max: return ncclMax;
    case ReduceOp::Min: return ncclMin;
    case ReduceOp::SumOfSquares: break;
  }
  throw std::invalid_argument("nccl: unsupported reduction");
}

class NcclCommunicator final : public MpiCommunicator {
 public:
  NcclCommunicator() {
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank(), MPI_INFO_NULL, &node);
    int local_rank = 0, devices = 0;
    MPI_Comm_rank(node, &local_rank);
    MPI_Comm_free(&node);
    check_cuda(cudaGetDeviceCount(&devices), "device count");
    if (devices == 0) throw std::runtime_error("nccl: no GPU on this node");
    check_cuda(cudaSetDevice(local_rank % devices), "set device");
    ncclUniqueId id;
    if (rank() == 0) check_nccl(ncclGetUniqueId(&id), "unique id");
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
    check_nccl(ncclCommInitRank(&comm_, size(), id, rank()), "init");
  }
  ~NcclCommunicator() override { ncclCommDestroy(comm_); }

  void all_reduce(Tensor& tensor, ReduceOp op) override {
    if (tensor.device().is_cpu()) return MpiCommunicator::all_reduce(tensor, op);
    on_device(tensor.numel() * static_cast<int64_t>(dtype_size(tensor.dtype())), [&] {
      return ncclAllReduce(tensor.raw_data(), tensor.raw_data(), static_cast<size_t>(tensor.numel()),
                           nccl_type(tensor.dtype()), nccl_op(op), comm_, nullptr);
    });
  }

  void broadcast(Tensor& tensor, int root) override {
    if (tensor.device().is_cpu()) return MpiCommunicator::broadcast(tensor, root);
    on_device(tensor.numel() * static_cast<int64_t>(dtype_size(tensor.dtype())), [&] {
      return ncclBroadcast(tensor.raw_data(), tensor.raw_data(), static_cast<size_t>(tensor.numel()),
                           nccl_type(tensor.dtype()), root, comm_, nullptr);
    });
  }

  // NCCL's all-gather takes equal parts: unequal ones are one broadcast per rank, grouped.
  void all_gather(const Tensor& local, Tensor& out, const std::vector<int64_t>& counts) override {
    if (local.device().is_cpu()) return MpiCommunicator::all_gather(local, out, counts);
    on_device(local.numel() * static_cast<int64_t>(dtype_size(local.dtype())), [&] {
      const size_t element = dtype_size(out.dtype());
      char* base = static_cast<char*>(out.raw_data());
      ncclResult_t result = ncclGroupStart();
      int64_t offset = 0;
      for (int r = 0; r < size() && result == ncclSuccess; ++r) {
        const int64_t count = counts[static_cast<size_t>(r)];
        const void* send = r == rank() ? local.raw_data() : nullptr;
        result = ncclBroadcast(send, base + offset * static_cast<int64_t>(element), static_cast<size_t>(count),
                               nccl_type(out.dtype()), r, comm_, nullptr);
        offset += count;
      }
      const ncclResult_t ended = ncclGroupEnd();
      return result != ncclSuccess ? result : ended;
    });
  }

 private:
  template <typename Collective>
  void on_device(int64_t bytes, Collective&& collective) {
    timed(bytes, [&] {
      backend_for(cuda()).synchronize();  // the backend computes on its own stream
      check_nccl(collective(), "collective");
      check_cuda(cudaStreamSynchronize(nullptr), "synchronize");
    });
  }

  ncclComm_t comm_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator() { return std::make_unique<NcclCommunicator>(); }

}  // namespace ml
