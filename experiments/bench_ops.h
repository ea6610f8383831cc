// `muonlab bench ops`: forward and forward+backward times of the ops the benchmark models in
// ../shared/bench/SPEC.md spend their time in, at the models' shapes, as achieved TFLOP/s (GEMM,
// convolution, attention) or GB/s (memory-bound ops) next to the device's own peaks, measured in
// the same run: a 4096^3 float32 GEMM (and TF32 and bf16 on CUDA) and a 256 MB device-to-device copy.
// On CUDA the GPT's matrix products are also timed with bf16 operands, against the bf16 peak.
//
// Prints a markdown table (one row per case, as it is measured), then one JSON object per row.
// The code path is the same on every device; only the tensors' device differs.
#pragma once
#include <cstdint>
#include <functional>
#include <ostream>

#include "experiments/cli_args.h"
#include "framework/backend.h"

namespace ml {

// The float32 product timed beside compute-bound work on the CPU, its rate the peak that work is
// judged on (bench ops' cases, bench ortho's methods): near the 4096^3 rate on one or two cores, at
// an eighth of its time.
constexpr int64_t kAdjacentGemmSize = 2048;

// Returns the process exit code (0); throws std::runtime_error for a device this build or machine
// cannot use.
int run_bench_ops(const BenchArgs& args, std::ostream& out);

// Median milliseconds of one call of `fn` over `repeats` samples, after warm-up calls. Each sample
// times a batch of calls long enough that launch latency and the synchronize do not swamp
// microsecond kernels; `backend` is synchronized before every clock read, so queued work counts.
double median_ms_per_call(const std::function<void()>& fn, int64_t repeats, Backend& backend);

}  // namespace ml
