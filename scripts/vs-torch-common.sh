# Sourced by the scripts that time muonlab beside ../shared/bench/torch_reference.py
# (measure-ortho-vs-torch.sh, measure-models-vs-torch.sh) with their arguments [ROUNDS] [TAG]
# and the name of what they compare ($comparison: ortho, models). Checks the tools and sets:
# rounds, bin (MUONLAB_BIN, default build/bin/muonlab), reference, log (a temporary file, removed
# at exit) and result (experiments/results/<comparison>-vs-torch-<date>-<N>vcpu[-<tag>].md); defines
# muonlab_blas_kernels, muonlab_float32_gemm and machine_description below.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-3}
tag=${2:+-$2}
bin=${MUONLAB_BIN:-build/bin/muonlab}
reference=../shared/bench/torch_reference.py
[[ -x $bin ]] || { echo "build first: cmake -S . -B build && cmake --build build" >&2; exit 1; }
[[ -f $reference ]] || { echo "$reference not found (the shared/ folder beside the checkout)" >&2; exit 1; }
/usr/bin/python3 -c "import torch" 2>/dev/null || { echo "PyTorch not found: apt-get install python3-torch" >&2; exit 1; }
log=$(mktemp "/tmp/muonlab-$comparison.XXXXXX")
trap 'rm -f "$log"' EXIT
result=experiments/results/$comparison-vs-torch-$(date -u +%Y-%m-%d)-$(nproc)vcpu$tag.md

# The OpenBLAS kernels muonlab ran (the `blas` of its first row in $log). PyTorch is given the same:
# its matrix products run on that OpenBLAS too (Debian's libblas alternative), and muonlab may have
# chosen them over OpenBLAS's fallback for a processor model it does not know
# (framework/backends/cpu/blas_kernels.h).
muonlab_blas_kernels() { grep -m1 -o '"blas":"[^"]*"' "$log" | cut -d'"' -f4; }

# What ran muonlab's float32 products (the `float32_gemm` of its first row: its own AVX-512 GEMM
# or OpenBLAS; rows of builds before it have none).
muonlab_float32_gemm() { grep -m1 -o '"float32_gemm":"[^"]*"' "$log" | cut -d'"' -f4 || true; }

# The result's machine: date, vCPUs, processor and the kernels both sides ran.
machine_description() {
  local gemm
  gemm=$(muonlab_float32_gemm)
  local products="OpenBLAS $(muonlab_blas_kernels) kernels on both sides"
  [[ $gemm == muonlab-avx512 ]] &&
    products="OpenBLAS $(muonlab_blas_kernels) kernels for PyTorch, muonlab's own AVX-512 GEMM for its float32 products"
  echo "$(date -u +%Y-%m-%d), $(nproc) vCPUs ($(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'); $products)"
}
