#include "experiments/bench_ops.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "framework/backends/cpu/blas_kernels.h"
#include "framework/backends/cpu/cpu_capability.h"
#include "framework/backends/cpu/cpu_gemm.h"
#include "framework/io/json.h"
#include "framework/ops.h"
#include "framework/parallel.h"
#ifdef MUONLAB_WITH_CUDA
#include "framework/backends/cuda/cuda_backend.h"
#endif

namespace ml {
namespace {

constexpr int kWarmupCalls = 3;
// GPU kernels at the GPT shapes take microseconds: a sample of many calls keeps the clock and
// synchronize overhead (tens of microseconds) out of the result.
constexpr double kMinSampleMs = 20.0;
constexpr double kFloat32Bytes = 4;
constexpr double kInt64Bytes = 8;
constexpr int64_t kPeakGemmSize = 4096;
constexpr int64_t kPeakCopyElements = int64_t(64) << 20;  // 256 MiB of float32
constexpr int64_t kElementwiseElements = int64_t(16) << 20;

// What limits an op, and so which rate and which peak it is compared with. Bf16Compute: matrix
// products of bf16-rounded operands, compared with the bf16 GEMM peak.
enum class Bound { Compute, Bf16Compute, Memory };

const char* unit_of(Bound bound) { return bound == Bound::Memory ? "GB/s" : "TFLOP/s"; }

// One call's work: FLOPs (Compute), or the bytes a kernel moves when it reads every input and
// writes every output once (Memory), for the forward and for the backward alone. A compute-bound
// case also counts those least bytes (its roofline: where the copy rate is low beside the FLOP rate,
// as for one core of the stem convolution, they take longer than its FLOPs at the peak). The copy
// reads 256 MiB and writes as much, far beyond the caches: a case whose data partly stays in the
// last-level cache between calls can beat its bytes' floor (the stem at two threads, 24 MB of y and
// of grad_y beside a 32 MB L3: 80-118%).
struct Work {
  Bound bound;
  double forward;
  double backward;
  double forward_bytes = 0;
  double backward_bytes = 0;
};

struct OpCase {
  std::string op;
  std::string shape;
  Work work;
  std::vector<Tensor> leaves;  // inputs whose gradients are cleared before each backward
  std::function<Tensor()> forward;
};

struct Row {
  std::string op;
  std::string shape;
  Bound bound = Bound::Compute;
  bool is_peak = false;
  double forward_ms = 0;
  double forward_rate = 0;
  std::optional<double> forward_backward_ms;
  std::optional<double> forward_backward_rate;
  std::optional<double> peak_rate;  // the median of the peak's samples beside the case's; else the run's first
  // With peak samples beside the case's: the median over the rounds of each sample's rate over the
  // peak sample's, in %.
  std::optional<double> forward_pct;
  std::optional<double> forward_backward_pct;
  Work work{Bound::Compute, 0, 0};
  // A compute-bound case's fwd+bwd time over its roofline's (the longer of its FLOPs at the GEMM
  // peak and its least bytes at the copy rate, both sampled beside it): the median over the rounds,
  // in %, and whether the bytes set it.
  std::optional<double> forward_backward_roofline_pct;
  bool memory_sets_roofline = false;
};

// The device's measured peaks, in the units of unit_of().
struct Peaks {
  double compute = 0;
  double compute_bf16 = 0;
  double memory = 0;
  double of(Bound bound) const {
    return bound == Bound::Compute ? compute : bound == Bound::Bf16Compute ? compute_bf16 : memory;
  }
};

double rate(Bound bound, double work, double ms) {
  const double per_second = work / (ms * 1e-3);
  return bound == Bound::Memory ? per_second * 1e-9 : per_second * 1e-12;
}

// Decimals that show `value` to `digits` significant digits, without an exponent.
int decimals_for(double value, int digits) {
  if (value == 0 || !std::isfinite(value)) return 0;
  return std::max(0, digits - 1 - static_cast<int>(std::floor(std::log10(std::fabs(value)))));
}

std::string significant_text(double value, int digits) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", decimals_for(value, digits), value);
  return text;
}

double significant(double value, int digits) {
  const double scale = std::pow(10.0, decimals_for(value, digits));
  return std::round(value * scale) / scale;
}

// Tensors for the cases, all drawn from one seeded generator on the benchmark device.
class Inputs {
 public:
  explicit Inputs(Device device) : device_(device), gen_(0) {}
  Device device() const { return device_; }
  Tensor constant(const Shape& shape) { return randn(shape, DType::Float32, device_, gen_); }
  Tensor leaf(const Shape& shape) { return constant(shape).requires_grad_(); }
  // Int64 class indices in [0, classes).
  Tensor class_ids(const Shape& shape, int64_t classes) {
    return rand(shape, 0.0, static_cast<double>(classes), DType::Float32, device_, gen_).to(DType::Int64);
  }

 private:
  Device device_;
  Generator gen_;
};

// a [m,k] @ b [k,n]: the backward computes grad_a and grad_b, one product each.
OpCase matmul_case(Inputs& in, const std::string& op, Bound bound, int64_t m, int64_t k, int64_t n) {
  const Tensor a = in.leaf({m, k}), b = in.leaf({k, n});
  const double flops = 2.0 * m * n * k;
  // Backward reads grad_c, a and b and writes grad_a and grad_b.
  const double a_b = kFloat32Bytes * (m * k + k * n), c_bytes = kFloat32Bytes * m * n;
  return {op,
          shape_str(a.shape()) + " @ " + shape_str(b.shape()),
          {bound, flops, 2 * flops, a_b + c_bytes, c_bytes + 2 * a_b},
          {a, b},
          [a, b] { return matmul(a, b); }};
}

// The GPT's (batch 12 x block 64 = 768 tokens, width 128) qkv, MLP up and MLP down projections.
std::vector<OpCase> gpt_matmul_cases(Inputs& in, const std::string& op, Bound bound) {
  return {matmul_case(in, op, bound, 768, 128, 384), matmul_case(in, op, bound, 768, 128, 512),
          matmul_case(in, op, bound, 768, 512, 128)};
}

// Padding `pad` on both sides, stride 1. The stem's input is the image batch, which takes no
// gradient in training, so its backward only computes the weight (and bias) gradient.
OpCase conv2d_case(Inputs& in, const Shape& x_shape, const Shape& w_shape, int64_t pad, bool is_stem) {
  const Tensor x = is_stem ? in.constant(x_shape) : in.leaf(x_shape);
  const Tensor w = in.leaf(w_shape);
  const Tensor bias = is_stem ? in.leaf({w_shape[0]}) : Tensor();
  const int64_t out_h = x_shape[2] + 2 * pad - w_shape[2] + 1, out_w = x_shape[3] + 2 * pad - w_shape[3] + 1;
  const double flops = 2.0 * x_shape[0] * w_shape[0] * out_h * out_w * w_shape[1] * w_shape[2] * w_shape[3];
  std::vector<Tensor> leaves{w};
  if (is_stem) leaves.push_back(bias);
  else leaves.push_back(x);
  // Backward reads grad_y and x and writes grad_w (and grad_bias); past the stem it also reads w
  // and writes grad_x.
  const double x_bytes = kFloat32Bytes * numel_of(x_shape),
               y_bytes = kFloat32Bytes * x_shape[0] * w_shape[0] * out_h * out_w;
  const double w_bytes = kFloat32Bytes * (numel_of(w_shape) + (is_stem ? w_shape[0] : 0));
  return {"conv2d",
          "x " + shape_str(x_shape) + " w " + shape_str(w_shape) + (is_stem ? " +bias" : "") + " pad " +
              std::to_string(pad),
          {Bound::Compute, flops, (is_stem ? 1 : 2) * flops, x_bytes + w_bytes + y_bytes,
           y_bytes + (is_stem ? 1 : 2) * (x_bytes + w_bytes)},
          leaves,
          [x, w, bias, pad] { return conv2d(x, w, bias, 1, pad); }};
}

// How an attention case is computed: the op's two implementations (AttentionImpl), or the op
// spelled out in generic ops (matmul, masked_fill with -inf, softmax), which shows what the op's
// own kernels save.
enum class AttentionVariant { Composed, Fused, GenericOps };

// Causal attention over q, k, v [B,H,T,D]. Every variant counts the same useful FLOPs (only the
// key positions a query may see), so their rates compare directly: 4·D per (query, key) pair
// forward (q·k and p·v), twice that backward (grad of q, k, v and of the probabilities).
OpCase attention_case(Inputs& in, int64_t batch, int64_t heads, int64_t seq, int64_t head_dim,
                      AttentionVariant variant) {
  const Shape shape{batch, heads, seq, head_dim};
  const Tensor q = in.leaf(shape), k = in.leaf(shape), v = in.leaf(shape);
  const double flops = 4.0 * head_dim * batch * heads * seq * (seq + 1) / 2;
  // Forward reads q, k, v and writes the output; backward reads grad_out, q, k, v and writes their gradients.
  const double tensor_bytes = kFloat32Bytes * numel_of(shape);
  const Work work{Bound::Compute, flops, 2 * flops, 4 * tensor_bytes, 7 * tensor_bytes};
  const std::string text = "q, k, v " + shape_str(shape) + " causal";
  if (variant != AttentionVariant::GenericOps) {
    const bool fused = variant == AttentionVariant::Fused;
    const AttentionImpl impl = fused ? AttentionImpl::Fused : AttentionImpl::Composed;
    return {fused ? "attention_fused" : "attention_composed", text, work, {q, k, v},
            [q, k, v, impl] { return scaled_dot_product_attention(q, k, v, true, impl); }};
  }
  const Tensor positions = arange(0, static_cast<double>(seq), 1, DType::Float32, in.device());
  const Tensor future = gt(positions.unsqueeze(0), positions.unsqueeze(1));  // key after query
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  return {"attention_generic_ops", text, work, {q, k, v}, [q, k, v, future, scale] {
            const Tensor scores = masked_fill(matmul(q, k.transpose(-2, -1)) * scale, future,
                                              -std::numeric_limits<double>::infinity());
            return matmul(softmax(scores), v);
          }};
}

// With weight and bias, as in the GPT. Backward reads grad_y, x, weight and the saved statistics
// and writes grad_x, grad_weight and grad_bias.
OpCase layer_norm_case(Inputs& in, int64_t rows, int64_t dim) {
  const Tensor x = in.leaf({rows, dim}), weight = in.leaf({dim}), bias = in.leaf({dim});
  const double n = static_cast<double>(rows) * dim;
  const double forward = kFloat32Bytes * (2 * n + 2 * dim + 2 * rows);
  const double backward = kFloat32Bytes * (3 * n + 3 * dim + 2 * rows);
  return {"layer_norm", shape_str(x.shape()), {Bound::Memory, forward, backward}, {x, weight, bias},
          [x, weight, bias] { return layer_norm(x, weight, bias); }};
}

OpCase softmax_case(Inputs& in, const Shape& shape) {
  const Tensor x = in.leaf(shape);
  const double n = static_cast<double>(numel_of(shape));
  return {"softmax", shape_str(shape), {Bound::Memory, kFloat32Bytes * 2 * n, kFloat32Bytes * 3 * n}, {x},
          [x] { return softmax(x); }};
}

// Mean loss over rows of logits [rows, classes]: forward reads logits and targets and writes a loss
// per row; backward reads logits and targets and writes grad_logits.
OpCase cross_entropy_case(Inputs& in, int64_t rows, int64_t classes) {
  const Tensor logits = in.leaf({rows, classes});
  const Tensor targets = in.class_ids({rows}, classes);
  const double n = static_cast<double>(rows) * classes;
  const double forward = kFloat32Bytes * (n + rows) + kInt64Bytes * rows;
  const double backward = kFloat32Bytes * 2 * n + kInt64Bytes * rows;
  return {"cross_entropy", shape_str(logits.shape()), {Bound::Memory, forward, backward}, {logits},
          [logits, targets] { return cross_entropy(logits, targets); }};
}

OpCase add_case(Inputs& in, int64_t elements) {
  const Tensor a = in.leaf({elements}), b = in.leaf({elements});
  const double bytes = kFloat32Bytes * 3 * elements;  // backward: grad_out to grad_a and grad_b
  return {"add", shape_str(a.shape()), {Bound::Memory, bytes, bytes}, {a, b}, [a, b] { return add(a, b); }};
}

OpCase gelu_case(Inputs& in, int64_t elements) {
  const Tensor x = in.leaf({elements});
  return {"gelu_tanh",
          shape_str(x.shape()),
          {Bound::Memory, kFloat32Bytes * 2 * elements, kFloat32Bytes * 3 * elements},
          {x},
          [x] { return gelu(x, GeluApprox::Tanh); }};
}

// Training-mode batch norm with its GELU, as the CNN's groups run it (batch_norm2d's fused
// activation): forward reads x and writes y, backward reads grad_y and x and writes grad_x (the
// per-channel vectors aside).
OpCase batch_norm_gelu_case(Inputs& in, const Shape& shape) {
  const Tensor x = in.leaf(shape), weight = in.leaf({shape[1]}), bias = in.leaf({shape[1]});
  const double n = static_cast<double>(numel_of(shape));
  return {"batch_norm_gelu",
          shape_str(shape),
          {Bound::Memory, kFloat32Bytes * 2 * n, kFloat32Bytes * 3 * n},
          {x, weight, bias},
          [x, weight, bias] {
            return batch_norm2d(x, Tensor(), Tensor(), weight, bias, true, 0.1, 1e-5, UnaryOp::GeluErf);
          }};
}

// Forward only: copy_ is the device-to-device copy every other memory-bound rate is compared with.
OpCase copy_case(Inputs& in, int64_t elements) {
  const Tensor src = in.constant({elements});
  Tensor dst = Tensor::empty({elements}, DType::Float32, in.device());
  return {"copy_peak", shape_str(src.shape()) + " float32", {Bound::Memory, kFloat32Bytes * 2 * elements, 0}, {},
          [src, dst]() mutable { return copy_(dst, src); }};
}

// The ops of the GPT and CNN in ../shared/bench/SPEC.md at their shapes other than the GPT's matrix
// products (gpt_matmul_cases), plus large elementwise, softmax, layer-norm and cross-entropy cases
// whose rates show the kernels' bandwidth (the GPT's own shapes are too small to leave launch
// latency behind on a GPU).
std::vector<OpCase> model_cases(Inputs& in) {
  std::vector<OpCase> cases;
  // CNN at batch 256: the 2x2 stem takes 32x32 to 31x31; each group's 3x3 convolutions keep the size
  // and its pooling halves it (31 -> 15 -> 7 -> 3) between the group's first and second convolution.
  const int64_t batch = 256;
  cases.push_back(conv2d_case(in, {batch, 3, 32, 32}, {24, 3, 2, 2}, 0, true));
  int64_t channels = 24, size = 31;
  for (int64_t width : {32, 64, 128}) {
    cases.push_back(conv2d_case(in, {batch, channels, size, size}, {width, channels, 3, 3}, 1, false));
    size /= 2;
    cases.push_back(conv2d_case(in, {batch, width, size, size}, {width, width, 3, 3}, 1, false));
    cases.push_back(batch_norm_gelu_case(in, {batch, width, size, size}));  // both of the group's, at this size
    channels = width;
  }
  for (AttentionVariant variant : {AttentionVariant::Composed, AttentionVariant::Fused, AttentionVariant::GenericOps})
    cases.push_back(attention_case(in, 12, 4, 64, 32, variant));
  cases.push_back(layer_norm_case(in, 768, 128));
  cases.push_back(layer_norm_case(in, 16384, 1024));
  cases.push_back(softmax_case(in, {12, 4, 64, 64}));
  cases.push_back(softmax_case(in, {16384, 1024}));
  cases.push_back(cross_entropy_case(in, 768, 65));
  cases.push_back(cross_entropy_case(in, 2048, 8192));  // rows of a vocabulary's width, 64 MiB like softmax's
  cases.push_back(add_case(in, kElementwiseElements));
  cases.push_back(gelu_case(in, kElementwiseElements));
  return cases;
}

// Times `fn` in samples of enough calls to last kMinSampleMs, a number set by the fastest of
// kWarmupCalls warm-up calls: one slow call (first use, a preempted thread) must not shrink every
// sample to a single call. `backend` is synchronized before every clock read, so queued work
// counts. With `rewarm`, an untimed call precedes each sample: its data back in cache after
// another timer's samples, as it is for the calls of one sample.
class CallTimer {
 public:
  CallTimer(std::function<void()> fn, Backend& backend, bool rewarm = false)
      : fn_(std::move(fn)), backend_(backend), rewarm_(rewarm) {
    double one_call_ms = std::numeric_limits<double>::infinity();
    for (int i = 0; i < kWarmupCalls; ++i) one_call_ms = std::min(one_call_ms, timed_ms(1));
    calls_ = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(kMinSampleMs / std::max(one_call_ms, 1e-6))));
  }
  // Milliseconds per call over one sample.
  double sample() {
    if (rewarm_) fn_();
    return timed_ms(calls_) / static_cast<double>(calls_);
  }

 private:
  double timed_ms(int64_t calls) {
    using Clock = std::chrono::steady_clock;
    backend_.synchronize();
    const auto start = Clock::now();
    for (int64_t i = 0; i < calls; ++i) fn_();
    backend_.synchronize();
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  }

  std::function<void()> fn_;
  Backend& backend_;
  bool rewarm_;
  int64_t calls_ = 1;
};

double median(std::vector<double> values) {
  std::nth_element(values.begin(), values.begin() + values.size() / 2, values.end());
  return values[values.size() / 2];
}

// A compute-bound case's forward+backward at the machine's limits, in ms: its FLOPs at `flops_rate`
// (TFLOP/s) and its least bytes at `copy_rate` (GB/s). The roofline is the longer of the two.
struct Floors {
  double compute_ms, memory_ms;
  double roofline_ms() const { return std::max(compute_ms, memory_ms); }
  bool memory_sets_roofline() const { return memory_ms > compute_ms; }
};

Floors floors_of(const Work& work, double flops_rate, double copy_rate) {
  return {(work.forward + work.backward) / (flops_rate * 1e9),
          (work.forward_bytes + work.backward_bytes) / (copy_rate * 1e6)};
}

std::function<void()> forward_call(const OpCase& c) {
  return [&c] {
    NoGradGuard no_grad;
    c.forward();
  };
}

// The row of a case timed at forward_ms (and both_ms forward+backward), its rates from its work.
Row timed_row(const OpCase& c, bool is_peak, double forward_ms, std::optional<double> both_ms) {
  Row row;
  row.op = c.op;
  row.shape = c.shape;
  row.bound = c.work.bound;
  row.work = c.work;
  row.is_peak = is_peak;
  row.forward_ms = forward_ms;
  row.forward_rate = rate(c.work.bound, c.work.forward, forward_ms);
  row.forward_backward_ms = both_ms;
  if (both_ms) row.forward_backward_rate = rate(c.work.bound, c.work.forward + c.work.backward, *both_ms);
  return row;
}

// A peak is timed forward only.
Row measure_peak(const OpCase& c, int64_t repeats, Backend& backend) {
  return timed_row(c, true, median_ms_per_call(forward_call(c), repeats, backend), std::nullopt);
}

// The case's forward and forward+backward, `repeats` rounds of one sample each; with `peak`, every
// round starts with a sample of it, and the case's % of peak is the median of its samples' rates
// over the peak sample's of the same round: a change in the machine's speed between rounds (a VM's
// neighbours) moves both alike. (Timed after all of its peak's samples, the stem's fwd+bwd read
// 48-81% over four one-thread runs; beside them, 57-71% over three.) With `copy` too, a
// compute-bound case's rounds also sample the copy, for its roofline.
Row measure(const OpCase& c, int64_t repeats, Backend& backend, const OpCase* peak = nullptr,
            const OpCase* copy = nullptr) {
  Tensor grad_output;
  {
    NoGradGuard no_grad;
    grad_output = ones_like(c.forward());
  }
  CallTimer forward(forward_call(c), backend, peak != nullptr);
  CallTimer both(
      [&c, &grad_output] {
        // Cleared so that each backward writes fresh gradients instead of accumulating into old ones.
        for (Tensor leaf : c.leaves) leaf.zero_grad();
        c.forward().backward(grad_output);
      },
      backend, peak != nullptr);
  std::optional<CallTimer> peak_timer, copy_timer;
  if (peak) peak_timer.emplace(forward_call(*peak), backend);
  const Work work = c.work;
  const double both_bytes = work.forward_bytes + work.backward_bytes;
  if (peak && copy && work.bound == Bound::Compute && both_bytes > 0) copy_timer.emplace(forward_call(*copy), backend);
  std::vector<double> forward_ms, both_ms, peak_rates, copy_rates, forward_pct, both_pct, roofline_pct;
  for (int64_t round = 0; round < repeats; ++round) {
    if (peak_timer) peak_rates.push_back(rate(peak->work.bound, peak->work.forward, peak_timer->sample()));
    if (copy_timer) copy_rates.push_back(rate(Bound::Memory, copy->work.forward, copy_timer->sample()));
    forward_ms.push_back(forward.sample());
    both_ms.push_back(both.sample());
    if (peak_timer) {
      forward_pct.push_back(100.0 * rate(work.bound, work.forward, forward_ms.back()) / peak_rates.back());
      both_pct.push_back(100.0 * rate(work.bound, work.forward + work.backward, both_ms.back()) / peak_rates.back());
    }
    if (copy_timer)
      roofline_pct.push_back(100.0 * floors_of(work, peak_rates.back(), copy_rates.back()).roofline_ms() /
                             both_ms.back());
  }
  Row row = timed_row(c, false, median(forward_ms), median(both_ms));
  if (peak) {
    row.peak_rate = median(peak_rates);
    row.forward_pct = median(forward_pct);
    row.forward_backward_pct = median(both_pct);
  }
  if (copy_timer) {
    const Floors floors = floors_of(work, median(peak_rates), median(copy_rates));
    row.forward_backward_roofline_pct = median(roofline_pct);
    row.memory_sets_roofline = floors.memory_sets_roofline();
  }
  return row;
}

double peak_of(const Row& row, const Peaks& peaks) { return row.peak_rate.value_or(peaks.of(row.bound)); }

// The row's % of its peak for `rate` (its forward or forward+backward rate), and `paired`, the
// median of the per-round ratios where the rounds had peak samples of their own.
std::optional<double> percent_of_peak(const Row& row, std::optional<double> rate, std::optional<double> paired,
                                      const Peaks& peaks) {
  if (!rate || row.is_peak) return std::nullopt;
  return paired ? paired : 100.0 * *rate / peak_of(row, peaks);
}

std::string percent_text(const Row& row, std::optional<double> rate, std::optional<double> paired, const Peaks& peaks) {
  if (rate && row.is_peak) return "peak";
  const std::optional<double> percent = percent_of_peak(row, rate, paired, peaks);
  return percent ? significant_text(*percent, 2) + "%" : "-";
}

// The row's fwd+bwd % of its roofline, and whether its bytes set it: a memory-bound op's is its %
// of the copy peak; a compute-bound case's is measured beside peaks of its own (measure()), or
// else taken from the run's peaks.
struct Roofline {
  double percent;
  bool memory_sets_it;
};
std::optional<Roofline> roofline_of(const Row& row, const Peaks& peaks) {
  if (row.is_peak || !row.forward_backward_ms) return std::nullopt;
  if (row.bound == Bound::Memory) {
    const std::optional<double> percent =
        percent_of_peak(row, row.forward_backward_rate, row.forward_backward_pct, peaks);
    return percent ? std::optional<Roofline>(Roofline{*percent, true}) : std::nullopt;
  }
  if (row.forward_backward_roofline_pct) return Roofline{*row.forward_backward_roofline_pct, row.memory_sets_roofline};
  if (row.bound != Bound::Compute || row.work.forward_bytes + row.work.backward_bytes <= 0) return std::nullopt;
  const Floors floors = floors_of(row.work, peaks.compute, peaks.memory);
  return Roofline{100.0 * floors.roofline_ms() / *row.forward_backward_ms, floors.memory_sets_roofline()};
}

// The roofline column: the %, with "(memory)" after a compute-bound case's where its bytes bound it.
std::string roofline_text(const Row& row, const Peaks& peaks) {
  const std::optional<Roofline> roofline = roofline_of(row, peaks);
  if (!roofline) return "-";
  const bool note_memory = roofline->memory_sets_it && row.bound != Bound::Memory;
  return significant_text(roofline->percent, 2) + "%" + (note_memory ? " (memory)" : "");
}

std::string rate_text(const Row& row, std::optional<double> rate) {
  return rate ? significant_text(*rate, 3) + " " + unit_of(row.bound) : "-";
}

void print_table_header(std::ostream& out) {
  out << "| op | shape | fwd ms | fwd rate | fwd % of peak | fwd+bwd ms | fwd+bwd rate | fwd+bwd % of peak | fwd+bwd % "
         "of roofline |\n"
      << "|---|---|---:|---:|---:|---:|---:|---:|---:|\n";
}

void print_table_row(const Row& row, const Peaks& peaks, std::ostream& out) {
  const auto ms_text = [](std::optional<double> ms) { return ms ? significant_text(*ms, 4) : "-"; };
  out << "| " << row.op << " | " << row.shape << " | " << ms_text(row.forward_ms) << " | "
      << rate_text(row, row.forward_rate) << " | " << percent_text(row, row.forward_rate, row.forward_pct, peaks)
      << " | " << ms_text(row.forward_backward_ms) << " | " << rate_text(row, row.forward_backward_rate) << " | "
      << percent_text(row, row.forward_backward_rate, row.forward_backward_pct, peaks) << " | "
      << roofline_text(row, peaks) << " |\n"
      << std::flush;
}

Json json_row(const Row& row, const Peaks& peaks, Device device, int64_t repeats) {
  const auto number = [](std::optional<double> value) { return value ? Json(significant(*value, 6)) : Json(); };
  const std::optional<Roofline> roofline = roofline_of(row, peaks);
  const auto percent = [&](std::optional<double> rate, std::optional<double> paired) {
    const std::optional<double> value = percent_of_peak(row, rate, paired, peaks);
    return value ? Json(significant(*value, 4)) : Json();
  };
  return Json::object(
      {{"bench", "op"},
       {"device", device.str()},
       {"threads", num_threads()},
       {"blas", blas_kernel_name()},
       {"float32_gemm", cpu_gemm::float32_gemm_name()},
       {"cpu_capability", cpu_capability_name()},
       {"repeats", repeats},
       {"op", row.op},
       {"shape", row.shape},
       {"unit", unit_of(row.bound)},
       {"is_peak", row.is_peak},
       {"forward_ms", number(row.forward_ms)},
       {"forward_rate", number(row.forward_rate)},
       {"forward_pct_of_peak", percent(row.forward_rate, row.forward_pct)},
       {"forward_backward_ms", number(row.forward_backward_ms)},
       {"forward_backward_rate", number(row.forward_backward_rate)},
       {"forward_backward_pct_of_peak", percent(row.forward_backward_rate, row.forward_backward_pct)},
       {"forward_backward_pct_of_roofline", roofline ? Json(significant(roofline->percent, 4)) : Json()},
       {"roofline_set_by", roofline ? Json(roofline->memory_sets_it ? "bytes" : "flops") : Json()},
       {"peak_rate", number(peak_of(row, peaks))},
       {"peak_measured", row.peak_rate ? "beside this case's samples" : "at the start"}});
}

// A virtual machine's speed drifts by 20-30% within minutes (its neighbours' load), so a case timed
// late in the run and compared with the peaks of its start can read 60% in a slow minute and 90% in a
// quiet one. On the CPU each case's rounds are timed beside samples of its own bound's peak
// (measure()): the kAdjacentGemmSize product for compute, the copy for memory. (A GPU's speed
// holds: its cases use the run's first peaks.)
class AdjacentPeaks {
 public:
  AdjacentPeaks(Inputs& inputs, bool enabled) {
    if (!enabled) return;
    gemm_.emplace(matmul_case(inputs, "gemm", Bound::Compute, kAdjacentGemmSize, kAdjacentGemmSize, kAdjacentGemmSize));
    copy_.emplace(copy_case(inputs, kPeakCopyElements));
  }
  // The peak a case of this bound is timed beside, or null.
  const OpCase* beside(Bound bound) const {
    if (!gemm_ || bound == Bound::Bf16Compute) return nullptr;
    return bound == Bound::Compute ? &*gemm_ : &*copy_;
  }

 private:
  std::optional<OpCase> gemm_, copy_;  // set when enabled
};

}  // namespace

double median_ms_per_call(const std::function<void()>& fn, int64_t repeats, Backend& backend) {
  if (repeats < 1) throw std::invalid_argument("bench: --repeats must be at least 1, got " + std::to_string(repeats));
  CallTimer timer(fn, backend);
  std::vector<double> per_call;
  for (int64_t i = 0; i < repeats; ++i) per_call.push_back(timer.sample());
  return median(per_call);
}

int run_bench_ops(const BenchArgs& args, std::ostream& out) {
  set_num_threads(static_cast<int>(args.threads));
  const Device device = Device::parse(args.device);
  if (device.is_cuda() && !cuda_available())
    throw std::runtime_error("bench ops --device " + args.device +
                             ": no usable CUDA device (built without CUDA, or no GPU or driver)");
  Backend& backend = backend_for(device);
  Inputs inputs(device);

  out << "muonlab bench ops: device " << device.str() << ", " << num_threads() << " CPU threads ("
      << cpu_capability_name() << " loops), median of " << args.repeats
      << " samples; rates are float32 (TF32 off) unless the op says otherwise"
      << (device.is_cuda() ? ""
                           : "; each case's % is the median over its samples of its rate over its bound's peak "
                             "sampled just before (a " +
                                 std::to_string(kAdjacentGemmSize) + "^3 product, or the copy)")
      << ". A compute-bound case's roofline is the longer of its FLOPs at the GEMM peak and the least bytes it moves "
         "(inputs read and outputs written once) at the copy rate"
      << (device.is_cuda() ? " (the run's peaks)" : " (both sampled beside it)")
      << "; (memory) marks a case its bytes bound\n\n";
  print_table_header(out);
  std::vector<Row> rows;
  Peaks peaks;
  const auto add_row = [&](Row row) {
    print_table_row(row, peaks, out);
    rows.push_back(std::move(row));
  };

  const OpCase gemm =
      matmul_case(inputs, "gemm_peak_fp32", Bound::Compute, kPeakGemmSize, kPeakGemmSize, kPeakGemmSize);
  Row gemm_row = measure_peak(gemm, args.repeats, backend);
  peaks.compute = gemm_row.forward_rate;
  add_row(std::move(gemm_row));
#ifdef MUONLAB_WITH_CUDA
  if (device.is_cuda()) {
    const auto gemm_peak_at = [&](MatmulPrecision precision, const char* op, Bound bound) {
      const CudaMatmulPrecisionScope scope(precision);
      Row row = measure_peak(gemm, args.repeats, backend);
      row.op = op;
      row.bound = bound;
      return row;
    };
    add_row(gemm_peak_at(MatmulPrecision::Tf32, "gemm_peak_tf32", Bound::Compute));
    Row bf16_row = gemm_peak_at(MatmulPrecision::Bf16, "gemm_peak_bf16", Bound::Bf16Compute);
    peaks.compute_bf16 = bf16_row.forward_rate;
    add_row(std::move(bf16_row));
  }
#endif
  Row copy_row = measure_peak(copy_case(inputs, kPeakCopyElements), args.repeats, backend);
  peaks.memory = copy_row.forward_rate;
  add_row(std::move(copy_row));

  const AdjacentPeaks adjacent(inputs, !device.is_cuda());
  const auto measure_with_peak = [&](const OpCase& c) {
    return measure(c, args.repeats, backend, adjacent.beside(c.work.bound), adjacent.beside(Bound::Memory));
  };
  for (const OpCase& c : gpt_matmul_cases(inputs, "matmul", Bound::Compute)) add_row(measure_with_peak(c));
#ifdef MUONLAB_WITH_CUDA
  if (device.is_cuda()) {
    // The whole measurement runs at bf16, so the backward's products are bf16 too.
    const CudaMatmulPrecisionScope bf16(MatmulPrecision::Bf16);
    for (const OpCase& c : gpt_matmul_cases(inputs, "matmul_bf16", Bound::Bf16Compute))
      add_row(measure(c, args.repeats, backend));
  }
#endif
  for (const OpCase& c : model_cases(inputs)) add_row(measure_with_peak(c));

  out << "\n";
  for (const Row& row : rows) out << dump_json(json_row(row, peaks, device, args.repeats)) << "\n";
  out << std::flush;
  return 0;
}

}  // namespace ml
