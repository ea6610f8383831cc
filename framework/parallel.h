// Thread count for the CPU backend: OpenMP loops and OpenBLAS share one setting.
#pragma once

namespace ml {
// n <= 0 keeps the default (OMP_NUM_THREADS, or all cores); never more than OMP_THREAD_LIMIT, and
// parallel regions get that many threads (OMP_DYNAMIC off).
void set_num_threads(int n);
int num_threads();

// On (x86-64; elsewhere nothing changes): float arithmetic on every CPU thread treats denormal
// numbers (magnitudes below 1.2e-38 in float32) as zero, as inputs and as results, like
// torch.set_flush_denormal(True). An Intel core takes a slow microcode assist for each denormal: a
// stalled GPT whose values had drifted into that range trained 2.4x slower.
// The muonlab command turns it on; off is IEEE arithmetic, the default of a thread.
void set_flush_denormals(bool flush);
}  // namespace ml
