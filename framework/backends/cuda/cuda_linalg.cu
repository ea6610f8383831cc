// Matrix products through cuBLAS (strided batched GEMM). cuBLAS is column-major: the row-major
// product C = A·B is computed as the column-major Cᵀ = Bᵀ·Aᵀ, which reads the same memory.
//
// float32 products follow the matmul precision (cuda_backend.h): exact float32, TF32 tensor cores,
// or bf16 operands. Bf16 packs each float32 operand into a bf16 copy (one small kernel each) and
// multiplies those with float32 accumulation and a float32 result, so C, alpha and beta keep
// their float32 meaning and only the operands lose mantissa bits.
#include <cuda_bf16.h>

#include <algorithm>

#include "framework/backends/bfloat16.h"
#include "framework/backends/cuda/cuda_backend.h"
#include "framework/backends/cuda/cuda_backend_impl.cuh"
#include "framework/backends/cuda/cuda_common.cuh"
#include "framework/backends/gemm_layout.h"

namespace ml {
using namespace cuda_detail;

namespace {

// One operand as cuBLAS reads it.
struct GemmOperand {
  const void* data;
  cudaDataType_t type;
  BlasMatrix layout;
};

// Copies `count` float32 matrices of rows x cols, element (r, c) of matrix i at
// i * batch_stride + r * ld + c, to contiguous bf16 (total = count * rows * cols elements).
__global__ void pack_bf16_kernel(const float* src, int64_t batch_stride, int64_t ld, int64_t rows, int64_t cols,
                                 int64_t total, __nv_bfloat16* dst) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = i % cols, row = i / cols % rows, matrix = i / (cols * rows);
    __nv_bfloat16_raw rounded;
    rounded.x = bfloat16_bits(src[matrix * batch_stride + row * ld + col]);
    dst[i] = rounded;
  }
}

// A bf16 copy of a float32 operand and how cuBLAS reads it; `storage` must outlive the call that
// reads it (freed blocks are reused only by later work on the same stream, so a scope suffices).
struct Bf16Operand {
  Tensor storage;
  GemmOperand operand;
};

// Each matrix keeps the orientation its memory has (a transposed view stays a transposed
// operand), so the packing kernel reads and writes along memory rows; the copy is contiguous. A
// broadcast operand (batch stride 0) is converted once and stays broadcast.
Bf16Operand pack_bf16(const Tensor& t, const BlasMatrix& layout, int64_t batch) {
  const int64_t rows = layout.transposed ? t.size(2) : t.size(1);  // as memory holds the matrix
  const int64_t cols = layout.transposed ? t.size(1) : t.size(2);
  const int64_t count = layout.batch_stride == 0 ? 1 : batch;
  const int64_t total = count * rows * cols;
  Tensor storage = workspace(static_cast<size_t>(total) * sizeof(__nv_bfloat16), t.device());
  if (total > 0) {
    pack_bf16_kernel<<<blocks_for(total), kThreads, 0, stream()>>>(
        ptr<const float>(t), layout.batch_stride, layout.ld, rows, cols, total, ptr<__nv_bfloat16>(storage));
    ML_CUDA_LAUNCHED("gemm (bf16 operands)");
  }
  const BlasMatrix packed{layout.transposed, std::max<int64_t>(cols, 1), layout.batch_stride == 0 ? 0 : rows * cols};
  const void* data = storage.raw_data();
  return {std::move(storage), {data, CUDA_R_16BF, packed}};
}

// c (contiguous [batch, M, N], float32 or float64 like alpha and beta) = alpha * a·b + beta * c.
void strided_batched_gemm(const GemmOperand& a, const GemmOperand& b, const Tensor& c, int64_t K, double alpha,
                          double beta, cublasComputeType_t compute) {
  const int64_t batch = c.size(0), M = c.size(1), N = c.size(2);
  const bool is_double = c.dtype() == DType::Float64;
  // Row-major memory of a non-transposed operand is, column-major, its transpose: op N here.
  const auto op = [](const GemmOperand& x) { return x.layout.transposed ? CUBLAS_OP_T : CUBLAS_OP_N; };
  const float alpha_f = static_cast<float>(alpha), beta_f = static_cast<float>(beta);
  const void* alpha_p = is_double ? static_cast<const void*>(&alpha) : &alpha_f;
  const void* beta_p = is_double ? static_cast<const void*>(&beta) : &beta_f;
  const int n = checked_int(N, "N", "gemm"), m = checked_int(M, "M", "gemm"), k = checked_int(K, "K", "gemm");
  const int ldb = checked_int(b.layout.ld, "ld of b", "gemm"), lda = checked_int(a.layout.ld, "ld of a", "gemm");
  const int count = checked_int(batch, "batch", "gemm");
  ML_CUDA_CHECK(cublasGemmStridedBatchedEx(cublas(), op(b), op(a), n, m, k, alpha_p, b.data, b.type, ldb,
                                           b.layout.batch_stride, a.data, a.type, lda, a.layout.batch_stride, beta_p,
                                           c.raw_data(), is_double ? CUDA_R_64F : CUDA_R_32F, n, M * N, count,
                                           compute, CUBLAS_GEMM_DEFAULT),
                "gemm");
}

}  // namespace

void CudaBackend::gemm(const Tensor& a, const Tensor& b, const Tensor& c, double alpha, double beta, GemmMath math) {
  const int64_t batch = c.size(0), M = c.size(1), N = c.size(2), K = a.size(2);
  if (M == 0 || N == 0 || batch == 0) return;
  if (K == 0) {  // an empty sum: c = beta * c, as on the CPU (cuBLAS rejects the leading dimension 0)
    if (beta == 0.0) fill(c, 0.0);
    else unary(UnaryOp::MulScalar, c, c, UnaryParams{beta, 0.0});
    return;
  }
  const BlasMatrix ma = blas_matrix(a, "a"), mb = blas_matrix(b, "b");
  if (c.dtype() == DType::Float64) {
    strided_batched_gemm({a.raw_data(), CUDA_R_64F, ma}, {b.raw_data(), CUDA_R_64F, mb}, c, K, alpha, beta,
                         CUBLAS_COMPUTE_64F);
    return;
  }
  const MatmulPrecision precision = math == GemmMath::Exact ? MatmulPrecision::Float32 : cuda_matmul_precision();
  if (precision == MatmulPrecision::Bf16) {
    const Bf16Operand a16 = pack_bf16(a, ma, batch), b16 = pack_bf16(b, mb, batch);
    strided_batched_gemm(a16.operand, b16.operand, c, K, alpha, beta, CUBLAS_COMPUTE_32F);
    return;
  }
  strided_batched_gemm({a.raw_data(), CUDA_R_32F, ma}, {b.raw_data(), CUDA_R_32F, mb}, c, K, alpha, beta,
                       precision == MatmulPrecision::Tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F);
}

}  // namespace ml
