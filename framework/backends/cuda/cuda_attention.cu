// Fused attention on CUDA: the FlashAttention forward (Dao et al. 2022, "FlashAttention: Fast and
// Memory-Efficient Exact Attention with IO-Awareness", Algorithm 1) and a backward in the shape of
// its Algorithm 2. The loops, formulas and notation are those of backends/cpu/cpu_attention.cpp,
// the reference these kernels follow; float32 only, head sizes up to kMaxHeadDim.
//
// Work split, with W = kWarps warps (rows) per block and tiles of 32 rows, one per lane:
// - forward: a block per (head, W query rows), one warp per query row. Keys and values go through
//   shared memory a tile at a time; each lane computes its key's score, the warp reduces the
//   tile's max and sum with shuffles, then each lane accumulates its own output columns
//   (lane, lane + 32, ...) over the tile's keys. Running max, sum and output stay in registers.
// - backward, three kernels: D_i = g_i . o_i (a warp per row); grad_q in the forward's layout (a
//   warp per query row, key tiles through shared memory); grad_k and grad_v in the transposed
//   layout (a warp per key row, query tiles through shared memory). Each output row is written by
//   one warp only: no atomics, no zero-filling, deterministic sums; the price is recomputing every
//   probability in both gradient passes (as the CPU reference does).
// Causal attention skips whole tiles that no row of the block can see.
#include <climits>
#include <string>

#include "framework/backends/cuda/cuda_backend_impl.cuh"
#include "framework/backends/cuda/cuda_common.cuh"

namespace ml {
using namespace cuda_detail;

namespace {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarps = 8;  // rows per block, one per warp
constexpr int kBlockThreads = kWarps * kWarpSize;
constexpr int kTile = kWarpSize;  // rows staged per step: one per lane
constexpr int kMaxHeadDim = 128;
constexpr int kColumnsPerLane = kMaxHeadDim / kWarpSize;
// Row stride of the staged tiles: lane l reading column c of row l hits bank (l + c) % 32, so the
// lanes' per-row dot products do not conflict.
constexpr int kPaddedDim = kMaxHeadDim + 1;
// Shared memory per block: two padded tiles and two per-warp row sets, under the 48 KiB that
// static shared memory allows.
static_assert(sizeof(float) * (2 * kTile * kPaddedDim + 2 * kWarps * kMaxHeadDim + 2 * kTile) <= 48 * 1024,
              "attention tiles exceed static shared memory");

// Blocks per head along its rows (queries or keys), kWarps rows per block.
__host__ __device__ int row_blocks(int rows) { return (rows + kWarps - 1) / kWarps; }

struct AttentionParams {
  int64_t batch_heads;
  int queries, keys, head_dim, value_dim;
  bool causal;
  float scale;
};

__device__ float warp_sum(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ float warp_max(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

__device__ float dot(const float* a, const float* b, int n) {
  float s = 0.f;
  for (int c = 0; c < n; ++c) s += a[c] * b[c];
  return s;
}

// Copies `count` contiguous rows of `width` floats from global memory into shared rows `stride`
// apart, with all the block's threads (consecutive threads read consecutive addresses).
__device__ void stage_rows(const float* src, int count, int width, float* dst, int stride) {
  for (int e = threadIdx.x; e < count * width; e += blockDim.x) dst[(e / width) * stride + e % width] = src[e];
}

// p_ij and ds_ij = p_ij (dp_ij - D_i), recomputed from the forward's log-sum-exp.
struct PairGrad {
  float p;
  float ds;
};
__device__ PairGrad pair_grad(const float* q_i, const float* k_j, const float* g_i, const float* v_j, float lse_i,
                              float row_dot_i, const AttentionParams& p) {
  const float prob = expf(p.scale * dot(q_i, k_j, p.head_dim) - lse_i);
  const float dp = dot(g_i, v_j, p.value_dim);
  return {prob, prob * (dp - row_dot_i)};
}

// Keys [0, key_end) are seen by some query of the block whose last query is last_query.
__device__ int key_end_for(const AttentionParams& p, int last_query) {
  return p.causal ? min(p.keys, last_query + 1) : p.keys;
}

// The rows (queries or keys) a block owns: kWarps consecutive rows of one head, a warp per row.
// The last block of a head may hold fewer rows; its idle warps still stage tiles and reach every
// barrier.
struct BlockRows {
  int warp, lane;
  int64_t head;
  int first, count;  // rows [first, first + count) of the head
  int row;           // this warp's row: first + warp
  bool active;       // this warp has a row
};

__device__ BlockRows block_rows(int rows_per_head) {
  BlockRows b;
  b.warp = threadIdx.x / kWarpSize;
  b.lane = threadIdx.x % kWarpSize;
  const int blocks_per_head = row_blocks(rows_per_head);
  b.head = blockIdx.x / blocks_per_head;
  b.first = static_cast<int>(blockIdx.x % blocks_per_head) * kWarps;
  b.count = min(kWarps, rows_per_head - b.first);
  b.row = b.first + b.warp;
  b.active = b.warp < b.count;
  return b;
}

// acc[t] += weight * row[c] for this lane's columns c = lane + 32 t below width.
__device__ void accumulate_columns(float (&acc)[kColumnsPerLane], float weight, const float* row, int lane, int width) {
#pragma unroll
  for (int t = 0; t < kColumnsPerLane; ++t) {
    const int c = lane + t * kWarpSize;
    if (c < width) acc[t] += weight * row[c];
  }
}

// dst[c] = scale * acc[t] for this lane's columns c = lane + 32 t below width.
__device__ void store_columns(float* dst, const float (&acc)[kColumnsPerLane], float scale, int lane, int width) {
#pragma unroll
  for (int t = 0; t < kColumnsPerLane; ++t) {
    const int c = lane + t * kWarpSize;
    if (c < width) dst[c] = scale * acc[t];
  }
}

__global__ void __launch_bounds__(kBlockThreads)
    attention_forward_kernel(const float* q, const float* k, const float* v, AttentionParams p, float* out,
                             float* lse) {
  __shared__ float key_tile[kTile][kPaddedDim];
  __shared__ float value_tile[kTile][kPaddedDim];
  __shared__ float query_rows[kWarps][kMaxHeadDim];
  const BlockRows b = block_rows(p.queries);
  const int warp = b.warp, lane = b.lane, first_query = b.first, block_queries = b.count, i = b.row;
  const int64_t head = b.head;
  const bool active = b.active;
  const float* k_head = k + head * p.keys * p.head_dim;
  const float* v_head = v + head * p.keys * p.value_dim;
  stage_rows(q + (head * p.queries + first_query) * p.head_dim, block_queries, p.head_dim, &query_rows[0][0],
             kMaxHeadDim);

  float running_max = -INFINITY, running_sum = 0.f;
  float acc[kColumnsPerLane] = {};  // output columns lane, lane + 32, ...
  const int key_end = key_end_for(p, first_query + block_queries - 1);
  for (int j0 = 0; j0 < key_end; j0 += kTile) {
    const int tile_keys = min(kTile, p.keys - j0);
    __syncthreads();  // the previous tile is no longer read (first pass: nothing to wait for)
    stage_rows(k_head + int64_t(j0) * p.head_dim, tile_keys, p.head_dim, &key_tile[0][0], kPaddedDim);
    stage_rows(v_head + int64_t(j0) * p.value_dim, tile_keys, p.value_dim, &value_tile[0][0], kPaddedDim);
    __syncthreads();  // the tile (and, on the first pass, query_rows) is staged
    if (!active) continue;
    const bool visible = lane < tile_keys && (!p.causal || j0 + lane <= i);
    const float score = visible ? p.scale * dot(key_tile[lane], query_rows[warp], p.head_dim) : -INFINITY;
    const float tile_max = warp_max(score);
    if (tile_max == -INFINITY) continue;  // row i sees no key of this tile (same for the whole warp)
    const float new_max = fmaxf(running_max, tile_max);
    const float rescale = expf(running_max - new_max);  // 0 on the first visible tile: exp(-inf)
    const float prob = visible ? expf(score - new_max) : 0.f;
    running_sum = running_sum * rescale + warp_sum(prob);
#pragma unroll
    for (int t = 0; t < kColumnsPerLane; ++t) acc[t] *= rescale;
    for (int jj = 0; jj < tile_keys; ++jj) {
      accumulate_columns(acc, __shfl_sync(kFullMask, prob, jj), value_tile[jj], lane, p.value_dim);
    }
    running_max = new_max;
  }
  if (!active) return;
  // A row that saw no key (no keys at all) gets zeros and lse -inf, as on the CPU.
  const float inv_sum = running_sum > 0.f ? 1.f / running_sum : 0.f;
  store_columns(out + (head * p.queries + i) * p.value_dim, acc, inv_sum, lane, p.value_dim);
  if (lane == 0) lse[head * p.queries + i] = running_sum > 0.f ? running_max + logf(running_sum) : -INFINITY;
}

// D_i = g_i . o_i, a warp per row.
__global__ void __launch_bounds__(kBlockThreads)
    attention_row_dots_kernel(const float* grad_out, const float* out, int64_t rows, int value_dim,
                              float* row_dots) {
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= rows) return;  // the whole warp leaves together, before any shuffle
  float s = 0.f;
  for (int c = lane; c < value_dim; c += kWarpSize) s += grad_out[row * value_dim + c] * out[row * value_dim + c];
  s = warp_sum(s);
  if (lane == 0) row_dots[row] = s;
}

// dq_i = scale sum_j ds_ij k_j: the forward's layout, a warp per query row.
__global__ void __launch_bounds__(kBlockThreads)
    attention_grad_q_kernel(const float* q, const float* k, const float* v, const float* grad_out, const float* lse,
                            const float* row_dots, AttentionParams p, float* grad_q) {
  __shared__ float key_tile[kTile][kPaddedDim];
  __shared__ float value_tile[kTile][kPaddedDim];
  __shared__ float query_rows[kWarps][kMaxHeadDim];
  __shared__ float grad_rows[kWarps][kMaxHeadDim];
  const BlockRows b = block_rows(p.queries);
  const int warp = b.warp, lane = b.lane, first_query = b.first, block_queries = b.count, i = b.row;
  const int64_t head = b.head;
  const bool active = b.active;
  const int64_t row_i = head * p.queries + i;  // this warp's row in lse and row_dots
  const float* k_head = k + head * p.keys * p.head_dim;
  const float* v_head = v + head * p.keys * p.value_dim;
  stage_rows(q + (head * p.queries + first_query) * p.head_dim, block_queries, p.head_dim, &query_rows[0][0],
             kMaxHeadDim);
  stage_rows(grad_out + (head * p.queries + first_query) * p.value_dim, block_queries, p.value_dim,
             &grad_rows[0][0], kMaxHeadDim);
  const float lse_i = active ? lse[row_i] : 0.f, row_dot_i = active ? row_dots[row_i] : 0.f;

  float acc[kColumnsPerLane] = {};  // grad_q columns lane, lane + 32, ...
  const int key_end = key_end_for(p, first_query + block_queries - 1);
  for (int j0 = 0; j0 < key_end; j0 += kTile) {
    const int tile_keys = min(kTile, p.keys - j0);
    __syncthreads();
    stage_rows(k_head + int64_t(j0) * p.head_dim, tile_keys, p.head_dim, &key_tile[0][0], kPaddedDim);
    stage_rows(v_head + int64_t(j0) * p.value_dim, tile_keys, p.value_dim, &value_tile[0][0], kPaddedDim);
    __syncthreads();
    if (!active) continue;
    const bool visible = lane < tile_keys && (!p.causal || j0 + lane <= i);
    const float ds = visible ? pair_grad(query_rows[warp], key_tile[lane], grad_rows[warp], value_tile[lane], lse_i,
                                         row_dot_i, p)
                                   .ds
                             : 0.f;
    for (int jj = 0; jj < tile_keys; ++jj) {
      accumulate_columns(acc, __shfl_sync(kFullMask, ds, jj), key_tile[jj], lane, p.head_dim);
    }
  }
  if (!active) return;
  store_columns(grad_q + row_i * p.head_dim, acc, p.scale, lane, p.head_dim);
}

// dk_j = scale sum_i ds_ij q_i and dv_j = sum_i p_ij g_i: the transposed layout, a warp per key
// row, query tiles (with their lse and D) through shared memory.
__global__ void __launch_bounds__(kBlockThreads)
    attention_grad_kv_kernel(const float* q, const float* k, const float* v, const float* grad_out, const float* lse,
                             const float* row_dots, AttentionParams p, float* grad_k, float* grad_v) {
  __shared__ float query_tile[kTile][kPaddedDim];
  __shared__ float grad_tile[kTile][kPaddedDim];
  __shared__ float lse_tile[kTile];
  __shared__ float row_dot_tile[kTile];
  __shared__ float key_rows[kWarps][kMaxHeadDim];
  __shared__ float value_rows[kWarps][kMaxHeadDim];
  const BlockRows b = block_rows(p.keys);
  const int warp = b.warp, lane = b.lane, first_key = b.first, block_keys = b.count, j = b.row;
  const int64_t head = b.head;
  const bool active = b.active;
  const float* q_head = q + head * p.queries * p.head_dim;
  const float* g_head = grad_out + head * p.queries * p.value_dim;
  const float* lse_head = lse + head * p.queries;
  const float* row_dots_head = row_dots + head * p.queries;
  stage_rows(k + (head * p.keys + first_key) * p.head_dim, block_keys, p.head_dim, &key_rows[0][0], kMaxHeadDim);
  stage_rows(v + (head * p.keys + first_key) * p.value_dim, block_keys, p.value_dim, &value_rows[0][0], kMaxHeadDim);

  float dk[kColumnsPerLane] = {}, dv[kColumnsPerLane] = {};  // columns lane, lane + 32, ...
  // Causal: queries before the block's first key see none of its keys.
  for (int i0 = p.causal ? first_key : 0; i0 < p.queries; i0 += kTile) {
    const int tile_queries = min(kTile, p.queries - i0);
    __syncthreads();
    stage_rows(q_head + int64_t(i0) * p.head_dim, tile_queries, p.head_dim, &query_tile[0][0], kPaddedDim);
    stage_rows(g_head + int64_t(i0) * p.value_dim, tile_queries, p.value_dim, &grad_tile[0][0], kPaddedDim);
    for (int e = threadIdx.x; e < tile_queries; e += blockDim.x) {
      lse_tile[e] = lse_head[i0 + e];
      row_dot_tile[e] = row_dots_head[i0 + e];
    }
    __syncthreads();
    if (!active) continue;
    const bool visible = lane < tile_queries && (!p.causal || i0 + lane >= j);
    const PairGrad pg = visible ? pair_grad(query_tile[lane], key_rows[warp], grad_tile[lane], value_rows[warp],
                                            lse_tile[lane], row_dot_tile[lane], p)
                                : PairGrad{0.f, 0.f};
    for (int ii = 0; ii < tile_queries; ++ii) {
      accumulate_columns(dv, __shfl_sync(kFullMask, pg.p, ii), grad_tile[ii], lane, p.value_dim);
      accumulate_columns(dk, __shfl_sync(kFullMask, pg.ds, ii), query_tile[ii], lane, p.head_dim);
    }
  }
  if (!active) return;
  store_columns(grad_k + (head * p.keys + j) * p.head_dim, dk, p.scale, lane, p.head_dim);
  store_columns(grad_v + (head * p.keys + j) * p.value_dim, dv, 1.f, lane, p.value_dim);
}

// Why the fused kernels cannot run this dtype and these head sizes, or "" when they can.
std::string unfusable(DType dtype, int64_t head_dim, int64_t value_dim) {
  if (dtype != DType::Float32) return std::string("the fused CUDA kernels take float32, got ") + dtype_name(dtype);
  if (head_dim > kMaxHeadDim || value_dim > kMaxHeadDim)
    return "the fused CUDA kernels take head sizes up to " + std::to_string(kMaxHeadDim) + ", got q/k " +
           std::to_string(head_dim) + " and v " + std::to_string(value_dim);
  return "";
}

// A contiguous [B, H, rows, width] operand (or lse [B, H, rows]) as the kernels' [BH, rows, width].
Tensor heads(const Tensor& t) {
  Shape shape{t.size(0) * t.size(1)};
  shape.insert(shape.end(), t.shape().begin() + 2, t.shape().end());
  return t.view(shape);
}

AttentionParams params_of(const char* kernel, const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                          double scale) {
  const int64_t head_dim = q.size(2), value_dim = v.size(2);
  const std::string problem = unfusable(q.dtype(), head_dim, value_dim);
  if (!problem.empty())
    throw std::invalid_argument(std::string(kernel) + ": " + problem + " (use the composed attention)");
  if (q.size(1) > INT_MAX / 2 || k.size(1) > INT_MAX / 2)
    throw std::invalid_argument(std::string(kernel) + ": sequence too long for the fused CUDA kernels: " +
                                shape_str(q.shape()) + ", " + shape_str(k.shape()));
  return {q.size(0),
          static_cast<int>(q.size(1)),
          static_cast<int>(k.size(1)),
          static_cast<int>(head_dim),
          static_cast<int>(value_dim),
          causal,
          static_cast<float>(scale)};
}

// A block per kWarps rows of every head (nothing to launch when there are no rows).
unsigned blocks_for_rows(const char* kernel, int64_t batch_heads, int64_t blocks_per_head) {
  const int64_t blocks = batch_heads * blocks_per_head;
  if (blocks > INT_MAX)
    throw std::invalid_argument(std::string(kernel) + ": too many heads and rows for one CUDA grid (" +
                                std::to_string(blocks) + " blocks)");
  return static_cast<unsigned>(blocks);
}

}  // namespace

bool CudaBackend::can_fuse_attention(DType dtype, int64_t head_dim, int64_t value_dim) const {
  return unfusable(dtype, head_dim, value_dim).empty();
}

void CudaBackend::attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, bool causal, double scale,
                            const Tensor& out_in, const Tensor& lse_in) {
  const Tensor q = heads(q_in), k = heads(k_in), v = heads(v_in), out = heads(out_in), lse = heads(lse_in);
  const AttentionParams p = params_of("attention", q, k, v, causal, scale);
  const unsigned blocks = blocks_for_rows("attention", p.batch_heads, row_blocks(p.queries));
  if (blocks == 0) return;
  attention_forward_kernel<<<blocks, kBlockThreads, 0, stream()>>>(ptr<const float>(q), ptr<const float>(k),
                                                                    ptr<const float>(v), p, ptr<float>(out),
                                                                    ptr<float>(lse));
  ML_CUDA_LAUNCHED("attention");
}

void CudaBackend::attention_backward(const Tensor& grad_out_in, const Tensor& q_in, const Tensor& k_in,
                                     const Tensor& v_in, const Tensor& out_in, const Tensor& lse_in, bool causal,
                                     double scale, const Tensor& grad_q_in, const Tensor& grad_k_in,
                                     const Tensor& grad_v_in) {
  const char* kernel = "attention_backward";
  const Tensor grad_out = heads(grad_out_in), q = heads(q_in), k = heads(k_in), v = heads(v_in), out = heads(out_in),
               lse = heads(lse_in), grad_q = heads(grad_q_in), grad_k = heads(grad_k_in), grad_v = heads(grad_v_in);
  const AttentionParams p = params_of(kernel, q, k, v, causal, scale);
  const int64_t rows = p.batch_heads * p.queries;
  const Tensor row_dots = Tensor::empty({rows}, DType::Float32, q.device());
  const unsigned query_blocks = blocks_for_rows(kernel, p.batch_heads, row_blocks(p.queries));
  if (query_blocks > 0) {
    attention_row_dots_kernel<<<query_blocks, kBlockThreads, 0, stream()>>>(
        ptr<const float>(grad_out), ptr<const float>(out), rows, p.value_dim, ptr<float>(row_dots));
    ML_CUDA_LAUNCHED(kernel);
    attention_grad_q_kernel<<<query_blocks, kBlockThreads, 0, stream()>>>(
        ptr<const float>(q), ptr<const float>(k), ptr<const float>(v), ptr<const float>(grad_out),
        ptr<const float>(lse), ptr<const float>(row_dots), p, ptr<float>(grad_q));
    ML_CUDA_LAUNCHED(kernel);
  }
  const unsigned key_blocks = blocks_for_rows(kernel, p.batch_heads, row_blocks(p.keys));
  if (key_blocks > 0) {
    attention_grad_kv_kernel<<<key_blocks, kBlockThreads, 0, stream()>>>(
        ptr<const float>(q), ptr<const float>(k), ptr<const float>(v), ptr<const float>(grad_out),
        ptr<const float>(lse), ptr<const float>(row_dots), p, ptr<float>(grad_k), ptr<float>(grad_v));
    ML_CUDA_LAUNCHED(kernel);
  }
}

}  // namespace ml
