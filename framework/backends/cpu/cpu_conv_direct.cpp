// Direct convolution for layers with few input channels, such as the CNN's stem (3 channels, 2x2
// kernel, 31x31 outputs): every output row is computed straight from the input rows it covers, in
// vectors of 16 output positions, with no column matrix.
//
// Why: through im2col + GEMM (cpu_conv.cpp) the stem's product is only Cin*kh*kw = 12 deep, so
// OpenBLAS spends about as long zeroing the output and packing its operands as multiplying, the
// weight gradient is a 12 x 24 product per image, and the unrolled copies and the bias gradient's
// separate pass over grad_y come on top: the stem ran at about 30% of the GEMM peak forward and
// backward (issue 13).
//
// With the taps t = (c, i, j) of the kernel, stride 1 and no padding:
//   forward   y[n, co, oh, ow]    = bias[co] + sum_t w[co, t] * x[n, c, oh + i, ow + j]
//   backward  grad_w[co, t]       = sum_{n, oh, ow} grad_y[n, co, oh, ow] * x[n, c, oh + i, ow + j]
//             grad_bias[co]       = sum_{n, oh, ow} grad_y[n, co, oh, ow]
// A row of Wo outputs (16 <= Wo <= 32) is two vectors, at 0 and at Wo - 16. They overlap where
// Wo < 32: the forward writes the shared positions twice (with the same values), the backward
// zeroes the second vector's shared lanes of grad_y. Every load stays inside its row: input row
// oh + i holds Wo + kw - 1 values, and tap (c, i, j) reads [j, j + 16) and [Wo - 16 + j, Wo + j).
//
// Forward: a block of 12 output channels x the row's two vectors is 24 accumulators; each tap
// loads two input vectors and multiplies them by 12 broadcast weights (24 FMAs to 2 loads).
// Backward: four output channels and four taps at a time, each (channel, tap) summing its products
// lane-wise in one accumulator, plus each channel's grad_y sum for the bias (20 accumulators; the
// four channels share each input load), over chunks of images that the threads share out; the
// lanes and chunks are added up (in double, in chunk order) at the end. Both keep
// their accumulators in registers only with AVX-512's 32 vector registers, so
// CpuBackend takes this path only in the AVX-512 copy (cpu_loops.h, run_widest); the build's own
// copy gives the same results more slowly, and the tests run both.
#include <algorithm>
#include <cstring>
#include <vector>

#include "framework/backends/cpu/cpu_conv.h"
#include "framework/backends/cpu/cpu_loops.h"

namespace ml::cpu_conv {
namespace {
using namespace cpu_loops;

constexpr int64_t kLanes = kVector<float>;
using Lanes = Vector64<float>::type;
using LaneBits = Vector64<float>::indices;

constexpr int64_t kChannelBlock = 12;    // forward: output channels per pass (x 2 vectors = 24 accumulators)
// Backward: 4 channels x (4 taps + grad_y) = 20 accumulators, and the channels' 8 grad_y vectors:
// 30 of the 32 registers, none spilled. With 3 channels x 6 taps (21 accumulators) GCC spilled
// and read half the inputs from memory once per FMA: the stem's backward, one thread, took
// 1.65-1.8 ms against 1.30-1.47 (4 x 6: 1.32-1.50, spilling; 2 x 6: 1.9).
constexpr int64_t kChannelsPerPass = 4;
constexpr int64_t kTapBlock = 4;
// Backward: the batch is cut into chunks of at least kFewestImagesPerChunk images, at most
// kMostChunks of them, which the threads share out; each chunk sums into its own lane-wise sums,
// added up in chunk order at the end: the gradients depend on the batch size, not on the thread
// count. (Split by output channels, two threads read interleaved halves of every image's grad_y:
// the stem's backward took 0.82-0.93 ms against 0.60-0.67 by images.)
constexpr int64_t kFewestImagesPerChunk = 16;
constexpr int64_t kMostChunks = 16;
// CpuBackend's limit: the stem's 12 taps were measured; with many more, im2col's product is deep
// enough for BLAS to run near its peak.
constexpr int64_t kMostTaps = 12;

inline void load(Lanes& v, const float* p) { std::memcpy(&v, p, sizeof v); }
inline void store(float* p, const Lanes& v) { std::memcpy(p, &v, sizeof v); }

// Where a row's second vector starts.
int64_t second_vector(const ConvShape& g) { return g.out_w - kLanes; }

// Tap (c, i, j)'s distance in x from the first input value of an output row, then zeros up to a
// multiple of kTapBlock: the backward's passes always run kTapBlock taps (a bound known at compile
// time keeps the accumulators in registers without a test per tap) and drop the sums of the padding.
std::vector<int64_t> tap_offsets(const ConvShape& g) {
  std::vector<int64_t> offsets;
  for (int64_t c = 0; c < g.in_channels; ++c)
    for (int64_t i = 0; i < g.kernel_h; ++i)
      for (int64_t j = 0; j < g.kernel_w; ++j) offsets.push_back((c * g.height + i) * g.width + j);
  offsets.resize(static_cast<size_t>((g.patch() + kTapBlock - 1) / kTapBlock * kTapBlock), 0);
  return offsets;
}

// One image's outputs. weights[t * ld + co] is w[co, t], zero past the last channel (ld a multiple
// of kChannelBlock); bias likewise padded.
void forward_image(const ConvShape& g, const int64_t* taps, const float* weights, int64_t ld, const float* bias,
                   const float* x, float* y) {
  const int64_t second = second_vector(g);
  for (int64_t first = 0; first < g.out_channels; first += kChannelBlock)
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      Lanes acc[kChannelBlock][2];
      for (int64_t b = 0; b < kChannelBlock; ++b) acc[b][0] = acc[b][1] = Lanes{} + bias[first + b];
      const float* row = x + oh * g.width;
      // The next image's input rows, while this image's first block of channels computes: without
      // them each image's first rows waited on memory (the stem's forward, one thread, batch of 512,
      // per 256 images: 1.08-1.12 -> 0.88-0.91 ms with the prefetch of y below).
      if (first == 0)
        for (int64_t c = 0; c < g.in_channels; ++c) {
          const float* next_image = row + g.image_size() + c * g.height * g.width;
          __builtin_prefetch(next_image);
          __builtin_prefetch(next_image + kLanes);
        }
      for (int64_t t = 0; t < g.patch(); ++t) {
        Lanes left, right;
        load(left, row + taps[t]);
        load(right, row + taps[t] + second);
        const float* w = weights + t * ld + first;
        for (int64_t b = 0; b < kChannelBlock; ++b) {
          acc[b][0] += w[b] * left;
          acc[b][1] += w[b] * right;
        }
      }
      for (int64_t b = 0; b < kChannelBlock && first + b < g.out_channels; ++b) {
        float* out = y + (first + b) * g.plane() + oh * g.out_w;
        // The same row of the next block's channels (the next image's first ones after the last),
        // fetched for writing; rows ahead in the same plane instead made it slower (1.1 -> 1.4 ms).
        __builtin_prefetch(out + kChannelBlock * g.plane(), 1, 3);
        __builtin_prefetch(out + kChannelBlock * g.plane() + kLanes, 1, 3);
        store(out, acc[b][0]);
        store(out + second, acc[b][1]);
      }
    }
}

// Adds the products of kChannelsPerPass output channels' grad_y planes (gy[b]) with one image x,
// for kTapBlock taps, lane-wise to sums[b][t * kLanes ...], and their grad_y itself to
// sums[b][kTapBlock * kLanes ...] (the bias gradient's). The channels share each input load.
void backward_pass(const ConvShape& g, const int64_t* taps, const LaneBits& keep, const float* x,
                   const float* const* gy, int64_t next_block, bool fetch_next_x, float* const* sums) {
  const int64_t second = second_vector(g);
  Lanes acc[kChannelsPerPass][kTapBlock + 1];
  for (int64_t b = 0; b < kChannelsPerPass; ++b)
    for (int64_t t = 0; t <= kTapBlock; ++t) acc[b][t] = Lanes{};
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    Lanes left_gy[kChannelsPerPass], right_gy[kChannelsPerPass];
    for (int64_t b = 0; b < kChannelsPerPass; ++b) {
      // The same row of the next block's channels (`next_block` further on: the next image's first
      // ones after the last), in each of the block's passes (in its first only: 1.65-1.70 ms, some
      // were dropped). Asked for rows ahead in the same plane instead (2.1-2.3 ms against 2.5-2.6
      // without), the first rows of each plane waited on memory (the stem's grad_y is 24 MB): 1.80
      // -> 1.67 ms.
      const float* next_channels = gy[b] + next_block + oh * g.out_w;
      __builtin_prefetch(next_channels);
      __builtin_prefetch(next_channels + kLanes);
      load(left_gy[b], gy[b] + oh * g.out_w);
      load(right_gy[b], gy[b] + oh * g.out_w + second);
      right_gy[b] = (Lanes)((LaneBits)right_gy[b] & keep);
      acc[b][kTapBlock] += left_gy[b] + right_gy[b];
    }
    const float* row = x + oh * g.width;
    // The next image's rows of this pass's taps, in the first block of channels' passes (the later
    // blocks find them in cache): one thread, batch of 256 with y written in between, 1.30-1.34 ->
    // 1.22-1.29 ms asked for in every pass, 1.15-1.19 in the first block's.
    if (fetch_next_x) {
      __builtin_prefetch(row + g.image_size() + taps[0]);
      __builtin_prefetch(row + g.image_size() + taps[0] + kLanes);
    }
    for (int64_t t = 0; t < kTapBlock; ++t) {
      Lanes left, right;
      load(left, row + taps[t]);
      load(right, row + taps[t] + second);
      for (int64_t b = 0; b < kChannelsPerPass; ++b) {
        acc[b][t] += left_gy[b] * left;
        acc[b][t] += right_gy[b] * right;
      }
    }
  }
  for (int64_t b = 0; b < kChannelsPerPass; ++b)
    for (int64_t t = 0; t <= kTapBlock; ++t) {
      Lanes sum;
      load(sum, sums[b] + t * kLanes);
      store(sums[b] + t * kLanes, sum + acc[b][t]);
    }
}

double sum_of_lanes(const float* lanes) {
  double sum = 0.0;
  for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
  return sum;
}

}  // namespace

bool direct_applies(const Tensor& x, const Tensor& w, Conv2dParams p) {
  if (x.dtype() != DType::Float32 || p.stride_h != 1 || p.stride_w != 1 || p.pad_h != 0 || p.pad_w != 0) return false;
  const int64_t out_w = x.size(3) - w.size(3) + 1;
  return x.size(2) >= w.size(2) && out_w >= kLanes && out_w <= 2 * kLanes;
}

bool direct_pays_off(const Tensor& x, const Tensor& w, Conv2dParams p) {
  return direct_applies(x, w, p) && w.size(1) * w.size(2) * w.size(3) <= kMostTaps && widest_is_avx512();
}

void direct_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y, Conv2dParams p) {
  const ConvShape g(x, w, p);
  const std::vector<int64_t> taps = tap_offsets(g);
  const int64_t ld = (g.out_channels + kChannelBlock - 1) / kChannelBlock * kChannelBlock;
  std::vector<float> weights(static_cast<size_t>(g.patch() * ld), 0.0f), padded_bias(static_cast<size_t>(ld), 0.0f);
  const float* pw = w.data<float>();
  for (int64_t co = 0; co < g.out_channels; ++co) {
    for (int64_t t = 0; t < g.patch(); ++t) weights[t * ld + co] = pw[co * g.patch() + t];
    if (bias.defined()) padded_bias[co] = bias.data<float>()[co];
  }
  const float* px = x.data<float>();
  float* py = y.data<float>();
  parallel_for_widest(g.batch, g.batch * g.output_size() >= kParallelGrain, [&](int64_t n) {
    forward_image(g, taps.data(), weights.data(), ld, padded_bias.data(), px + n * g.image_size(),
                  py + n * g.output_size());
  });
}

void direct_backward(const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                     const Tensor& grad_w, const Tensor& grad_bias, Conv2dParams p) {
  if (grad_x.defined()) im2col_backward(grad_y, x, w, grad_x, Tensor(), Tensor(), p);
  if (!grad_w.defined() && !grad_bias.defined()) return;
  const ConvShape g(x, w, p);
  const std::vector<int64_t> taps = tap_offsets(g);
  LaneBits keep;  // the second vector's lanes past the first one's
  for (int64_t l = 0; l < kLanes; ++l) keep[l] = second_vector(g) + l >= kLanes ? -1 : 0;
  // The running lane-wise sums of each chunk of images, output channel and block of taps: the
  // taps', then grad_y's (kept from the first block, for the bias gradient). A pass whose last
  // channels lie past the last one repeats it and adds those sums to `discarded`.
  const int64_t tap_blocks = static_cast<int64_t>(taps.size()) / kTapBlock, per_block = (kTapBlock + 1) * kLanes;
  const int64_t per_chunk = g.out_channels * tap_blocks * per_block;
  const int64_t images_per_chunk = std::max(kFewestImagesPerChunk, (g.batch + kMostChunks - 1) / kMostChunks);
  const int64_t chunks = (g.batch + images_per_chunk - 1) / images_per_chunk;
  Scratch<float> sums = scratch<float>(chunks * per_chunk);
  const float* px = x.data<float>();
  const float* pgy = grad_y.data<float>();
  // Image-major, so that an image stays in cache across its channels.
  parallel_for_widest(chunks, g.batch * g.output_size() >= kParallelGrain, [&](int64_t chunk) {
    std::vector<float> discarded(static_cast<size_t>(per_block));
    float* chunk_sums = sums.get() + chunk * per_chunk;
    std::fill(chunk_sums, chunk_sums + per_chunk, 0.0f);
    for (int64_t n = chunk * images_per_chunk; n < std::min(g.batch, (chunk + 1) * images_per_chunk); ++n)
      for (int64_t first = 0; first < g.out_channels; first += kChannelsPerPass) {
        const int64_t next_block = first + kChannelsPerPass < g.out_channels ? kChannelsPerPass * g.plane()
                                                                             : g.output_size() - first * g.plane();
        for (int64_t block = 0; block < tap_blocks; ++block) {
          const float* gy[kChannelsPerPass];
          float* block_sums[kChannelsPerPass];
          for (int64_t b = 0; b < kChannelsPerPass; ++b) {
            const int64_t co = std::min(first + b, g.out_channels - 1);
            gy[b] = pgy + n * g.output_size() + co * g.plane();
            block_sums[b] =
                first + b < g.out_channels ? chunk_sums + (co * tap_blocks + block) * per_block : discarded.data();
          }
          backward_pass(g, taps.data() + block * kTapBlock, keep, px + n * g.image_size(), gy, next_block, first == 0,
                        block_sums);
        }
      }
  });
  // The lanes of every chunk, in double.
  auto total = [&](int64_t co, int64_t offset) {
    double sum = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk)
      sum += sum_of_lanes(sums.get() + chunk * per_chunk + co * tap_blocks * per_block + offset);
    return static_cast<float>(sum);
  };
  for (int64_t co = 0; co < g.out_channels; ++co) {
    if (grad_w.defined())
      for (int64_t t = 0; t < g.patch(); ++t)
        grad_w.data<float>()[co * g.patch() + t] = total(co, t / kTapBlock * per_block + t % kTapBlock * kLanes);
    if (grad_bias.defined()) grad_bias.data<float>()[co] = total(co, kTapBlock * kLanes);
  }
}

}  // namespace ml::cpu_conv
