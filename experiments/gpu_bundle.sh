#!/usr/bin/env bash
# Carries a CUDA build made on this machine to a bare GPU machine (one without network or the
# project's dependencies, like the lent GPU machines), so that the GPU's time goes to tests and
# measurements rather than to installing and compiling.
#
#   experiments/gpu_bundle.sh pack BUILD_DIR ARCHIVE      # here: bin/ + the libraries to bring
#   eval "$(experiments/gpu_bundle.sh unpack ARCHIVE DIR)" # there: unpacks, prints BUILD_DIR's export
#
# pack keeps muonlab and muonlab_tests from BUILD_DIR/bin and the shared libraries they load that are
# neither the C runtime nor CUDA's (OpenBLAS, yaml-cpp and what they load; CUDA, cuBLAS and cuDNN
# come with the GPU machine's toolkit), in an xz archive, and gives the binaries an RPATH of the
# archive's lib/ (patchelf), so that they also run from processes that pass no environment (the
# fault tests start muonlab so). unpack extracts it into DIR, links the GPU machine's own cuDNN,
# cuBLAS and CUDA runtime libraries (looked up under /usr and /opt) into lib/, and prints
# `export BUILD_DIR=DIR/build`. Libraries of the compiler's runtime (libstdc++, libgomp, ...) are
# carried apart and linked in only where the GPU machine lacks them, since an older copy would shadow
# the newer one that its CUDA libraries may need.
set -euo pipefail

die() {
  echo "gpu_bundle: error: $*" >&2
  exit 1
}

# Libraries every Linux machine has (the C runtime), or that must be the GPU machine's own (CUDA's).
is_system_library() {
  case $(basename "$1") in
    libc.so* | libm.so* | libdl.so* | libpthread.so* | librt.so* | ld-linux* | linux-vdso*) return 0 ;;
    libcuda.so* | libcudart* | libcublas* | libcudnn* | libnccl* | libnvrtc* | libnvJitLink*) return 0 ;;
  esac
  return 1
}

# The compiler's runtime: carried, used only where missing.
is_compiler_runtime() {
  case $(basename "$1") in
    libstdc++.so* | libgcc_s.so* | libgomp.so* | libz.so*) return 0 ;;
  esac
  return 1
}

pack() {
  local build=$1 archive=$2 staging binary library
  [[ -x $build/bin/muonlab && -x $build/bin/muonlab_tests ]] || die "$build/bin has no muonlab and muonlab_tests: build first"
  staging=$(mktemp -d)
  trap "rm -rf '$staging'" EXIT
  mkdir -p "$staging/build/bin" "$staging/lib" "$staging/lib-fallback"
  command -v patchelf >/dev/null || die "patchelf not found (apt-get install patchelf)"
  for binary in muonlab muonlab_tests; do
    cp "$build/bin/$binary" "$staging/build/bin/"
    # DT_RPATH rather than RUNPATH: it also serves the libraries' own needs (OpenBLAS's libgfortran).
    patchelf --force-rpath --set-rpath '$ORIGIN/../../lib' "$staging/build/bin/$binary"
  done
  cp "$build"/bin/*.py "$staging/build/bin/" 2>/dev/null || true
  # The build's settings, for the GPU report (gpu_report.sh machine).
  sed -nE 's/^(CMAKE_BUILD_TYPE|MUONLAB_CUDA|MUONLAB_MPI|MUONLAB_MARCH|CMAKE_CUDA_ARCHITECTURES):[A-Z]+=(.*)/-D\1=\2/p' \
    "$build/CMakeCache.txt" | tr '\n' ' ' | sed 's/ $//' >"$staging/build/cmake-flags.txt"
  # ldd lists every library loaded, directly or not, as "name => path (address)".
  ldd "$build/bin/muonlab_tests" "$build/bin/muonlab" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
    while read -r library; do
      is_system_library "$library" && continue
      if is_compiler_runtime "$library"; then
        cp -L "$library" "$staging/lib-fallback/"
      else
        cp -L "$library" "$staging/lib/"
      fi
    done
  tar -C "$staging" -cJf "$archive" build lib lib-fallback
  echo "gpu_bundle: wrote $archive ($(du -h "$archive" | cut -f1)): $(ls "$staging/lib" "$staging/lib-fallback" | grep -c '\.so')" \
    "libraries carried" >&2
}

# The folder of the first file named $1 under /usr and /opt (the toolkit's, or a Python wheel's).
library_folder() {
  local found
  found=$(find /usr/local/cuda/lib64/ /usr/local/cuda/ /usr/lib/ /opt/ -name "$1" -print -quit 2>/dev/null || true)
  [[ -n $found ]] && dirname "$found"
}

unpack() {
  local archive=$1 dir=$2 folder name
  mkdir -p "$dir"
  tar -C "$dir" -xJf "$archive"
  dir=$(cd "$dir" && pwd)
  # Every file of the family (cuDNN loads its engine libraries from beside libcudnn.so.9).
  for name in libcudnn libcublas libcudart; do
    folder=$(library_folder "$name.so.*") || die "no $name under /usr or /opt: this machine lacks CUDA's libraries"
    ln -sf "$folder/$name"*.so* "$dir/lib/"
  done
  # The compiler's runtime libraries that this machine lacks ("libgomp.so.1 => not found") or has
  # too old ("libstdc++.so.6: version `GLIBCXX_3.4.30' not found"), and only those.
  local missing
  missing=$(ldd "$dir/build/bin/muonlab_tests" "$dir/build/bin/muonlab" 2>&1 |
    sed -nE 's/^\s*(lib[^ ]+) => not found.*/\1/p; s/.*[ /](lib[^ /:]+): version .* not found.*/\1/p' | sort -u)
  for name in $missing; do
    [[ -e $dir/lib-fallback/$name ]] && ln -sf "$dir/lib-fallback/$name" "$dir/lib/"
  done
  if ldd "$dir/build/bin/muonlab_tests" | grep 'not found' >&2; then
    die "libraries still missing (above)"
  fi
  printf 'export BUILD_DIR=%q\n' "$dir/build"
}

case ${1:-} in
  pack) [[ $# -eq 3 ]] || die "usage: $0 pack BUILD_DIR ARCHIVE"; pack "$2" "$3" ;;
  unpack) [[ $# -eq 3 ]] || die "usage: $0 unpack ARCHIVE DIR"; unpack "$2" "$3" ;;
  *) die "usage: $0 pack BUILD_DIR ARCHIVE | unpack ARCHIVE DIR" ;;
esac
