// Thread count for the CPU backend: OpenMP loops and OpenBLAS share one setting.
#pragma once

namespace ml {
// n <= 0 keeps the default (OMP_NUM_THREADS, or all cores); never more than OMP_THREAD_LIMIT, and
// parallel regions get that many threads (OMP_DYNAMIC off).
void set_num_threads(int n);
int num_threads();
}  // namespace ml
