#include "experiments/ortho_command.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>

#include "experiments/bench_ops.h"
#include "experiments/exact_polar.h"
#include "framework/backend.h"
#include "framework/backends/cpu/blas_kernels.h"
#include "framework/backends/cpu/cpu_capability.h"
#include "framework/backends/cpu/cpu_gemm.h"
#include "framework/io/json.h"
#include "framework/io/npy.h"
#include "framework/ops.h"
#include "framework/parallel.h"
#include "optimizers/dion2.h"
#include "optimizers/newton_schulz.h"
#include "optimizers/selection.h"

namespace ml {

namespace {

constexpr double kDion2Fraction = 0.25;

// The Newton–Schulz schedule behind a method, with its default iteration count.
struct NsMethod {
  NsCoefficients coefficients;
  int64_t default_steps;
  bool aol;
};
const std::map<std::string, NsMethod>& ns_methods() {
  static const std::map<std::string, NsMethod> methods{{"ns5", {NsCoefficients::Keller, 5, false}},
                                                       {"muon_plus", {NsCoefficients::MuonPlus, 5, false}},
                                                       {"polar_express", {NsCoefficients::PolarExpress, 5, false}},
                                                       {"turbo", {NsCoefficients::MuonPlus, 4, true}},
                                                       {"dion2", {NsCoefficients::PolarExpress, 5, false}}};
  return methods;
}

void check_method(const std::string& method, int64_t steps) {
  const auto& all = ortho_methods();
  if (std::find(all.begin(), all.end(), method) == all.end()) {
    std::string names;
    for (const std::string& m : all) names += (names.empty() ? "" : ", ") + m;
    throw std::invalid_argument("ortho: unknown method '" + method + "' (expected one of " + names + ")");
  }
  if (steps < 0) throw std::invalid_argument("ortho: steps must be >= 0, got " + std::to_string(steps));
  if (method == "rmnp" && steps > 0) throw std::invalid_argument("ortho: rmnp normalizes rows once; it takes no --steps");
}

NsSchedule schedule_for(const std::string& method, int64_t steps) {
  const NsMethod& m = ns_methods().at(method);
  return ns_schedule(m.coefficients, steps > 0 ? steps : m.default_steps, m.aol);
}

// Wall time in ms of one call, the device synchronized before and after it.
double timed_call_ms(const std::function<void()>& call, Device device) {
  backend_for(device).synchronize();
  const auto start = std::chrono::steady_clock::now();
  call();
  backend_for(device).synchronize();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

double median_of(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// Median wall time in ms of each of `calls`, timed as torch_reference.py's timeit times them, the
// peer these numbers are compared with: two untimed calls, then `repeats` timed calls back to back.
// (Alternating the methods within rounds instead left a memory-bound method timed after another's
// Newton-Schulz run: RMNP's 0.5 ms row normalization of 3072x768 took 0.1-0.2 ms longer right after
// a Turbo-Muon call, even with an untimed call of its own in between.) Machine load is shared with
// the peer by alternating whole runs of both (scripts/measure-ortho-vs-torch.sh). One untimed call of
// every method comes first, so that the first method timed does not also pay for the shape's first
// allocations (NS5, first, read up to 18% slower than its equal-work Polar Express without it).
std::vector<double> median_ms(const std::vector<std::function<void()>>& calls, int64_t repeats, Device device) {
  for (const std::function<void()>& call : calls) call();
  std::vector<double> medians;
  for (const std::function<void()>& call : calls) {
    for (int warm_up = 0; warm_up < 2; ++warm_up) call();  // also first-touch allocations, BLAS threads
    std::vector<double> times;
    for (int64_t i = 0; i < repeats; ++i) times.push_back(timed_call_ms(call, device));
    medians.push_back(median_of(std::move(times)));
  }
  return medians;
}

// What rounds that time each method beside NS5 and the GEMM peak give, per method (calls[0], NS5,
// first): each speed-up over NS5, and each performed-FLOP rate as a fraction of the peak's.
struct PairedRounds {
  std::vector<double> speedup_vs_ns5;
  std::vector<double> peak_fraction;
  std::vector<double> ms;  // each call's median time over the rounds
};

// For each method after NS5, `repeats` rounds of one timed call of a kAdjacentGemmSize^3 product,
// of NS5 and of the method, each after an untimed call of its own (so that none finds another's data
// in cache): the medians over the rounds of NS5's time over the method's, and of each one's
// performed-FLOP rate over that round's product (NS5's over all of its rounds). The ratio of two
// medians of separate runs carries the machine's drift between them (Turbo-Muon's speed-up at
// 1024x1024, one thread, read 1.20-1.53 over four runs that way), and so would a peak timed once.
PairedRounds paired_rounds(const std::vector<std::function<void()>>& calls, const std::vector<double>& performed_flops,
                           int64_t repeats, Device device) {
  const auto warm_then_timed_ms = [&](const std::function<void()>& call) {
    call();
    return timed_call_ms(call, device);
  };
  Generator gen(0);
  const Tensor a = randn({kAdjacentGemmSize, kAdjacentGemmSize}, DType::Float32, device, gen);
  const Tensor b = randn({kAdjacentGemmSize, kAdjacentGemmSize}, DType::Float32, device, gen);
  const double peak_flops = 2.0 * std::pow(static_cast<double>(kAdjacentGemmSize), 3);
  const auto peak_call = [&] { matmul(a, b); };
  std::vector<std::vector<double>> ratios(calls.size()), fractions(calls.size()), times(calls.size());
  for (size_t i = 1; i < calls.size(); ++i)
    for (int64_t round = 0; round < repeats; ++round) {
      const double peak_rate = peak_flops / warm_then_timed_ms(peak_call);
      const double ns5_ms = warm_then_timed_ms(calls[0]), method_ms = warm_then_timed_ms(calls[i]);
      ratios[i].push_back(ns5_ms / method_ms);
      fractions[0].push_back(performed_flops[0] / ns5_ms / peak_rate);
      fractions[i].push_back(performed_flops[i] / method_ms / peak_rate);
      times[0].push_back(ns5_ms);
      times[i].push_back(method_ms);
    }
  PairedRounds out;
  for (size_t i = 0; i < calls.size(); ++i) {
    out.speedup_vs_ns5.push_back(i == 0 ? 1.0 : median_of(ratios[i]));
    out.peak_fraction.push_back(median_of(fractions[i]));
    out.ms.push_back(median_of(times[i]));
  }
  return out;
}

// The back-to-back median (median_ms) and the paired rounds' median time the same call. Where they
// lie more than this factor apart, the machine was busy while one of them ran: a process started
// beside a two-thread run took a core from its threads for tens of milliseconds, and one method's
// back-to-back calls at 256x256 read 7.7 ms against 1.6 ms in its rounds (the rounds, spread over
// the whole run, kept vs_ns5 and %peak right). On a quiet machine the two lie within 0.89-1.04 of each
// other for every compute-bound method; not for RMNP's memory-bound pass, whose rounds find its data
// evicted by the call before (0.48-0.67), so it is left out.
constexpr double kBusyFactor = 2.0;

double relative_error(const Tensor& x, const Tensor& reference) {
  const Tensor x64 = x.to(cpu()).to(DType::Float64);
  return norm(sub(x64, reference)).item() / norm(reference).item();
}

// The largest magnitude of the matrix's values, after checking that float32, in which the methods
// run, holds every one: NaN, infinities and float64 values beyond float32's range would come out
// as NaN or infinity without a word.
double max_abs_of_float32_values(const Tensor& matrix, const std::string& path) {
  const std::vector<double> values = matrix.to(DType::Float64).to_vector<double>();
  const int64_t cols = matrix.size(1);
  double max_abs = 0.0;
  for (size_t i = 0; i < values.size(); ++i) {
    const bool finite = std::isfinite(values[i]);
    max_abs = std::max(max_abs, std::fabs(values[i]));
    if (finite && std::fabs(values[i]) <= std::numeric_limits<float>::max()) continue;
    std::ostringstream where;
    where << "ortho: " << path << ": the value at [" << static_cast<int64_t>(i) / cols << ", "
          << static_cast<int64_t>(i) % cols << "] is " << values[i]
          << (finite ? ", beyond float32's range (the method runs in float32)" : "; expected finite values");
    throw std::runtime_error(where.str());
  }
  return max_abs;
}

// Every method gives the same result for a matrix and its multiple by a power of two (up to
// rounding: Newton–Schulz starts from S / ||S||_F, RMNP divides rows by their norms, Dion2 ranks
// slices by their L1 norms), but in float32 the Gram matrix, the row norms and the L1 scores of
// entries beyond about 1e19 / sqrt(rows cols) overflow, and the result would be NaN or zero. Such
// a matrix is scaled (exactly) to a max-abs entry in [1, 2) first; any other is left as it is,
// bit for bit. This is done for the command's input rather than inside Newton–Schulz, where the
// optimizers would pay a pass over every matrix every step for momenta that only a diverged run
// produces (and the trainer stops such a run).
Tensor without_float32_overflow(const Tensor& matrix, double max_abs) {
  constexpr double kLargestSafeSum = 1e36;  // float32 reaches 3.4e38; a margin for rounding
  if (max_abs * max_abs * static_cast<double>(matrix.numel()) <= kLargestSafeSum) return matrix;
  return mul(matrix, std::ldexp(1.0, -std::ilogb(max_abs)));
}

double rounded(double value, int digits) {
  const double scale = std::pow(10.0, digits);
  return std::round(value * scale) / scale;
}

}  // namespace

const std::vector<std::string>& ortho_methods() {
  static const std::vector<std::string> methods{"ns5", "muon_plus", "polar_express", "turbo", "rmnp", "dion2"};
  return methods;
}

Tensor orthogonalize(const std::string& method, const Tensor& matrix, int64_t steps) {
  check_method(method, steps);
  if (matrix.dim() != 2) throw std::invalid_argument("ortho: expected a 2-D matrix, got " + shape_str(matrix.shape()));
  NoGradGuard no_grad;
  // Nothing to orthogonalize (and Dion2 would have nothing to select).
  if (matrix.numel() == 0) return matrix.clone();
  if (method == "rmnp") return normalize_rows(matrix);
  if (method == "dion2") {
    const Dion2Selection selection = dion2_select(matrix, kDion2Fraction, false, nullptr);
    Tensor result = zeros_like(matrix);
    add_at_slices_(result, selection, newton_schulz(selection.selected, schedule_for(method, steps)));
    return result;
  }
  return newton_schulz(matrix, schedule_for(method, steps));
}

double ortho_flops(const std::string& method, int64_t rows, int64_t cols, int64_t steps, FlopCount count) {
  check_method(method, steps);
  const double elements = static_cast<double>(rows) * static_cast<double>(cols);
  if (method == "rmnp") return 3.0 * elements;  // squares and row sums, then one scaling
  const int64_t iterations = static_cast<int64_t>(schedule_for(method, steps).triples.size());
  const auto ns_flops = [&](int64_t r, int64_t c) {
    return count == FlopCount::Nominal ? newton_schulz_flops(r, c, iterations)
                                       : newton_schulz_performed_flops(r, c, iterations);
  };
  if (method == "dion2") {  // L1 scores (abs, sum), then Newton–Schulz on the selected k x max(rows, cols)
    const int64_t k = selection_count(std::min(rows, cols), kDion2Fraction);
    return 2.0 * elements + ns_flops(k, std::max(rows, cols));
  }
  return ns_flops(rows, cols);
}

int run_ortho(const std::string& method, const std::string& in_path, const std::string& out_path, int64_t steps,
              std::ostream& out) {
  check_method(method, steps);
  const Tensor input = load_npy(in_path);
  if (input.dim() != 2)
    throw std::runtime_error("ortho: " + in_path + " holds a " + shape_str(input.shape()) + " array; expected a 2-D matrix");
  if (!is_floating(input.dtype()))
    throw std::runtime_error("ortho: " + in_path + " holds " + dtype_name(input.dtype()) + " values; expected float32 or float64");
  const Tensor scaled = without_float32_overflow(input, max_abs_of_float32_values(input, in_path));
  const auto start = std::chrono::steady_clock::now();
  const Tensor result = orthogonalize(method, scaled.to(DType::Float32), steps);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  save_npy(out_path, result);
  out << "ortho " << method << ": " << input.size(0) << "x" << input.size(1) << " in " << rounded(ms, 3) << " ms -> "
      << out_path << "\n";
  return 0;
}

namespace {

// NS5 on stacks of same-shape matrices, as the Muon family's steps solve them
// (MatrixOptimizer::stacked_step), against the same matrices one call at a time: the groups of the
// Shakespeare GPT (4 layers, 128 wide) and of the 384-wide GPT of the study's optimizer-cost section.
void bench_stacks(Device device, int64_t repeats, std::vector<Json>& rows, std::ostream& out) {
  struct Group {
    int64_t count, rows, cols;
  };
  const std::vector<Group> groups{{4, 384, 128}, {4, 128, 512}, {6, 1152, 384}, {6, 384, 384}};
  const NsSchedule schedule = schedule_for("ns5", 5);
  char line[160];
  std::snprintf(line, sizeof line, "%-13s %13s %11s %9s %14s\n", "stack", "one_by_one_ms", "stacked_ms", "speedup",
                "max_rel_diff");
  out << "\nns5 on stacks of same-shape matrices, " << device.str() << ", " << num_threads() << " threads\n" << line;
  Generator gen(20260102);
  for (const Group& group : groups) {
    std::vector<Tensor> matrices;
    for (int64_t i = 0; i < group.count; ++i)
      matrices.push_back(randn({group.rows, group.cols}, DType::Float32, cpu(), gen).to(device));
    const Tensor stacked_input = stack(matrices, 0);
    std::vector<Tensor> alone(matrices.size());
    Tensor together;
    const std::vector<std::function<void()>> calls{[&] {
                                                     for (size_t i = 0; i < matrices.size(); ++i) {
                                                       alone[i] = Tensor();
                                                       alone[i] = newton_schulz(matrices[i], schedule);
                                                     }
                                                   },
                                                   [&] {
                                                     together = Tensor();
                                                     together = newton_schulz(stacked_input, schedule);
                                                   }};
    NoGradGuard no_grad;
    const std::vector<double> ms = median_ms(calls, repeats, device);
    double worst = 0;  // each matrix of the stack against its lone solve
    for (size_t i = 0; i < alone.size(); ++i)
      worst = std::max(worst, relative_error(together.narrow(0, static_cast<int64_t>(i), 1).squeeze(0),
                                             alone[i].to(cpu()).to(DType::Float64)));
    const std::string name =
        std::to_string(group.count) + "x" + std::to_string(group.rows) + "x" + std::to_string(group.cols);
    std::snprintf(line, sizeof line, "%-13s %13.3f %11.3f %8.2fx %14.2e\n", name.c_str(), ms[0], ms[1], ms[0] / ms[1],
                  worst);
    out << line << std::flush;
    rows.push_back(Json::object({{"bench", "ortho_stack"},
                                 {"shape", Json::array({group.count, group.rows, group.cols})},
                                 {"method", "ns5"},
                                 {"device", device.str()},
                                 {"threads", num_threads()},
                                 {"blas", blas_kernel_name()},
                                 {"float32_gemm", cpu_gemm::float32_gemm_name()},
                                 {"one_by_one_ms", rounded(ms[0], 3)},
                                 {"stacked_ms", rounded(ms[1], 3)},
                                 {"speedup", rounded(ms[0] / ms[1], 3)},
                                 {"max_relative_difference", worst}}));
  }
}

}  // namespace

int run_bench_ortho(const std::string& device_name, int64_t repeats, std::ostream& out) {
  const Device device = Device::parse(device_name);
  if (device.is_cuda() && !cuda_available())
    throw std::runtime_error("bench ortho --device cuda: no CUDA device is usable (built without CUDA, or no GPU)");
  if (repeats < 1) throw std::invalid_argument("bench ortho: repeats must be >= 1, got " + std::to_string(repeats));
  const std::vector<std::pair<int64_t, int64_t>> shapes{{256, 256},   {512, 512},  {256, 1024},
                                                        {1024, 1024}, {768, 3072}, {3072, 768}};
  std::vector<Json> rows;
  std::vector<std::string> busy;  // rows whose two timings disagree (kBusyFactor)
  char line[160];
  std::snprintf(line, sizeof line, "%-11s %-14s %10s %9s %10s %9s %9s %6s\n", "shape", "method", "ms", "GFLOP/s",
                "polar_err", "vs_ns5", "ceiling", "%peak");
  out << "ortho methods, " << device.str() << ", " << num_threads() << " threads, median of " << repeats << "\n"
      << "GFLOP/s counts every product as a whole matmul (newton_schulz_flops); the symmetric ones compute one\n"
      << "triangle, so a rate above the GEMM peak is work saved, not speed. Over " << repeats << " rounds that time a "
      << kAdjacentGemmSize << "^3 product,\n"
      << "one NS5 call and one of the method back to back, medians of: vs_ns5, NS5's time over the method's;\n"
      << "%peak, the FLOPs the method performs (symmetric products at half) per second over the product's\n"
      << "rate. ceiling: NS5's performed FLOPs over the method's, the vs_ns5 of two calls at one rate\n"
      << line;
  Generator gen(20260101);
  for (const auto& [m, n] : shapes) {
    const Tensor g = randn({m, n}, DType::Float32, cpu(), gen);
    const Tensor polar = exact_polar(g);  // the yardstick, outside every timed region
    const Tensor g_device = g.to(device);
    const std::vector<std::string>& methods = ortho_methods();
    std::vector<Tensor> results(methods.size());
    std::vector<std::function<void()>> calls;
    std::vector<double> performed_flops;
    for (size_t i = 0; i < methods.size(); ++i) {
      calls.push_back([&, i] {
        // Dropped first, as torch_reference.py drops each result before the next call: the new
        // result may then reuse its memory, still in cache from the call before.
        results[i] = Tensor();
        results[i] = orthogonalize(methods[i], g_device);
      });
      performed_flops.push_back(ortho_flops(methods[i], m, n, 0, FlopCount::Performed));
    }
    const std::vector<double> ms = median_ms(calls, repeats, device);
    const PairedRounds paired = paired_rounds(calls, performed_flops, repeats, device);  // methods[0] is ns5
    for (size_t i = 0; i < methods.size(); ++i) {
      const double gflops = ortho_flops(methods[i], m, n) / (ms[i] * 1e6);
      const double error = relative_error(results[i], polar);
      // RMNP's count is of elementwise work, which memory bounds: neither ratio applies to it.
      const bool compute_bound = methods[i] != "rmnp";
      const double ceiling = performed_flops[0] / performed_flops[i];
      const double percent_of_peak = 100.0 * paired.peak_fraction[i];
      char ceiling_text[16] = "-", percent_text[16] = "-";
      if (compute_bound) {
        std::snprintf(ceiling_text, sizeof ceiling_text, "%.2fx", ceiling);
        std::snprintf(percent_text, sizeof percent_text, "%.0f%%", percent_of_peak);
      }
      const std::string shape = std::to_string(m) + "x" + std::to_string(n);
      std::snprintf(line, sizeof line, "%-11s %-14s %10.3f %9.1f %10.4f %8.2fx %9s %6s\n", shape.c_str(),
                    methods[i].c_str(), ms[i], gflops, error, paired.speedup_vs_ns5[i], ceiling_text, percent_text);
      out << line << std::flush;
      if (compute_bound && std::max(ms[i], paired.ms[i]) > kBusyFactor * std::min(ms[i], paired.ms[i])) {
        std::snprintf(line, sizeof line, "%s %s: %.3f ms back to back, %.3f ms in the paired rounds", shape.c_str(),
                      methods[i].c_str(), ms[i], paired.ms[i]);
        busy.push_back(line);
      }
      rows.push_back(Json::object({{"bench", "ortho"},
                                   {"shape", Json::array({m, n})},
                                   {"method", methods[i]},
                                   {"device", device.str()},
                                   {"threads", num_threads()},
                                   {"blas", blas_kernel_name()},
                                   {"float32_gemm", cpu_gemm::float32_gemm_name()},
                                   {"ms", rounded(ms[i], 3)},
                                   {"paired_ms", rounded(paired.ms[i], 3)},
                                   {"gflops", rounded(gflops, 2)},
                                   {"polar_err", rounded(error, 5)},
                                   {"speedup_vs_ns5", rounded(paired.speedup_vs_ns5[i], 3)},
                                   {"flop_ceiling_vs_ns5", compute_bound ? Json(rounded(ceiling, 3)) : Json()},
                                   {"pct_of_gemm_peak", compute_bound ? Json(rounded(percent_of_peak, 1)) : Json()}}));
    }
  }
  if (!busy.empty()) {
    out << "warning: the machine was busy during these rows (their back-to-back median and their median over the\n"
        << "paired rounds lie over " << kBusyFactor << "x apart): their ms and GFLOP/s carry that load, while vs_ns5\n"
        << "and %peak come from the paired rounds. Rerun on a quiet machine:\n";
    for (const std::string& row : busy) out << "  " << row << "\n";
  }
  bench_stacks(device, repeats, rows, out);
  for (const Json& row : rows) out << dump_json(row) << "\n";
  return 0;
}

}  // namespace ml
