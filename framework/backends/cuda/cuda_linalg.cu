// Matrix products through cuBLAS (strided batched GEMM). cuBLAS is column-major: the row-major
// product C = A·B is computed as the column-major Cᵀ = Bᵀ·Aᵀ, which reads the same memory.
#include "framework/backends/cuda/cuda_backend_impl.cuh"
#include "framework/backends/cuda/cuda_common.cuh"
#include "framework/backends/gemm_layout.h"

namespace ml {
using namespace cuda_detail;

void CudaBackend::gemm(const Tensor& a, const Tensor& b, const Tensor& c, double alpha, double beta) {
  const int64_t batch = c.size(0), M = c.size(1), N = c.size(2), K = a.size(2);
  if (M == 0 || N == 0 || batch == 0) return;
  const BlasMatrix ma = blas_matrix(a, "a"), mb = blas_matrix(b, "b");
  // Row-major memory of a non-transposed operand is, column-major, its transpose: op N here.
  const cublasOperation_t op_b = mb.transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = ma.transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
  const bool is_double = c.dtype() == DType::Float64;
  const cudaDataType_t type = is_double ? CUDA_R_64F : CUDA_R_32F;
  const cublasComputeType_t compute =
      is_double ? CUBLAS_COMPUTE_64F : (tf32_enabled() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F);
  const float alpha_f = static_cast<float>(alpha), beta_f = static_cast<float>(beta);
  const void* alpha_p = is_double ? static_cast<const void*>(&alpha) : &alpha_f;
  const void* beta_p = is_double ? static_cast<const void*>(&beta) : &beta_f;
  ML_CUDA_CHECK(cublasGemmStridedBatchedEx(cublas(), op_b, op_a, static_cast<int>(N), static_cast<int>(M),
                                           static_cast<int>(K), alpha_p, b.raw_data(), type, static_cast<int>(mb.ld),
                                           mb.batch_stride, a.raw_data(), type, static_cast<int>(ma.ld), ma.batch_stride,
                                           beta_p, c.raw_data(), type, static_cast<int>(N), M * N,
                                           static_cast<int>(batch), compute, CUBLAS_GEMM_DEFAULT),
                "gemm");
}

}  // namespace ml
