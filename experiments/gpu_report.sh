#!/usr/bin/env bash
# The GPU report: run on a machine with an NVIDIA GPU (no network needed). Builds muonlab with the
# CUDA backend, runs the CUDA parity tests and the whole unit suite, runs `muonlab bench ops` on cuda
# and on cpu, and writes experiments/results/gpu-report-<date>-<gpu>.md (copied to $OUT when set).
#
#   experiments/gpu_report.sh [all|build|machine|test|bench|report]
#
# The stages can run one at a time (e.g. where one command may run only ten minutes); each keeps
# its outputs in the log directory, and `report` writes the report from whatever is there, so a
# report can also be rewritten from saved logs. `all` (the default) runs every stage. `machine`
# records the machine and toolkit without building: for binaries built elsewhere and carried in
# $BUILD_DIR/bin (experiments/gpu_bundle.sh), where the GPU machine lacks the dependencies.
#
# Environment: BUILD_DIR (default build-gpu), LOG_DIR (default $BUILD_DIR/gpu-report-logs),
# RESULTS_DIR (default experiments/results), JOBS (default: all cores), REPEATS (bench, default 5),
# COMMIT (the commit the report names, where the tree has no .git), STEP_TIMEOUT (seconds each test
# or benchmark command may run; default no limit).
#
# Exit status: 0 when everything passed; 1 when a stage could not run, a test failed or crashed,
# no CUDA test passed on the device (the GPU was not usable), or a benchmark failed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${BUILD_DIR:-$root/build-gpu}
log_dir=${LOG_DIR:-$build_dir/gpu-report-logs}
results_dir=${RESULTS_DIR:-$root/experiments/results}
jobs=${JOBS:-$(nproc)}
repeats=${REPEATS:-5}

note() { echo "gpu_report: $*" >&2; }
die() {
  echo "gpu_report: error: $*" >&2
  exit 1
}
# Prints the last lines of a log to stderr, for the failure messages.
show_tail() {
  echo "---- last lines of $1 ----" >&2
  tail -n 30 "$1" >&2 || true
  echo "----" >&2
}

# ---------------------------------------------------------------- build

# apt-get is usable when we may run it and it reaches its repositories (lent GPU machines have no
# network: there the dependencies must already be installed).
apt_usable() {
  command -v apt-get >/dev/null || return 1
  local sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then
    sudo -n true 2>/dev/null || return 1
    sudo_cmd=(sudo -n)
  fi
  timeout 60 "${sudo_cmd[@]}" apt-get update -qq -o Acquire::Retries=0 -o Acquire::http::Timeout=10 >/dev/null 2>&1
}

find_nvcc() {
  if command -v nvcc >/dev/null; then
    command -v nvcc
  elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
    echo /usr/local/cuda/bin/nvcc
  else
    die "nvcc not found on PATH or at /usr/local/cuda/bin/nvcc: install the CUDA toolkit"
  fi
}

# The machine and software versions the report names, each in its own file.
record_machine() {
  command -v nvidia-smi >/dev/null || die "nvidia-smi not found: run this on a machine with an NVIDIA GPU and its driver"
  nvidia-smi >"$log_dir/nvidia-smi.txt" 2>&1 || {
    show_tail "$log_dir/nvidia-smi.txt"
    die "nvidia-smi failed: no usable GPU or driver"
  }
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$log_dir/gpu.csv" ||
    die "nvidia-smi --query-gpu failed"
  [[ -s $log_dir/gpu.csv ]] || die "nvidia-smi lists no GPU"
  "$1" --version >"$log_dir/nvcc.txt" || die "$1 --version failed"
  date -u +%Y-%m-%d >"$log_dir/date.txt"
  # A copy of the tree without its .git names its commit in COMMIT.
  {
    [[ -n ${COMMIT:-} ]] && echo "$COMMIT" || git -C "$root" rev-parse --short HEAD 2>/dev/null ||
      echo "unknown (no git checkout)"
  } >"$log_dir/commit.txt"
  grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //' >"$log_dir/cpu.txt" || echo unknown >"$log_dir/cpu.txt"
  nproc >>"$log_dir/cpu.txt"
}

stage_machine() {
  mkdir -p "$log_dir"
  record_machine "$(find_nvcc)"
  # A carried build names its settings (experiments/gpu_bundle.sh).
  if [[ -s $build_dir/cmake-flags.txt ]]; then cp "$build_dir/cmake-flags.txt" "$log_dir/cmake-flags.txt"; fi
}

stage_build() {
  stage_machine
  local nvcc
  nvcc=$(find_nvcc)
  if apt_usable; then
    note "apt works: scripts/setup-deps.sh installs any missing dependency"
    bash "$root/scripts/setup-deps.sh" || die "scripts/setup-deps.sh failed"
  else
    note "apt-get cannot reach its repositories (or needs a password): assuming the dependencies are installed"
  fi
  local flags=(-DCMAKE_BUILD_TYPE=Release -DMUONLAB_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90
               "-DCMAKE_CUDA_COMPILER=$nvcc" -DMUONLAB_MARCH=native)
  echo "${flags[*]}" >"$log_dir/cmake-flags.txt"
  note "configuring $build_dir"
  cmake -S "$root" -B "$build_dir" "${flags[@]}" >"$log_dir/configure.log" 2>&1 || {
    show_tail "$log_dir/configure.log"
    die "cmake configure failed (see above): a missing dependency? Run scripts/setup-deps.sh where apt has network"
  }
  note "building with $jobs jobs (log: $log_dir/build.log)"
  cmake --build "$build_dir" -j "$jobs" >"$log_dir/build.log" 2>&1 || {
    show_tail "$log_dir/build.log"
    die "build failed (see above)"
  }
}

# ---------------------------------------------------------------- tests and benchmarks

require_built() {
  [[ -x $build_dir/bin/$1 ]] || die "$build_dir/bin/$1 is missing: run the build stage first"
}

# run_logged NAME COMMAND...: stdout and stderr to NAME.log (one stream, so a crash's last words
# stay next to what it was doing), the exit status to NAME.rc; stopped after STEP_TIMEOUT seconds
# when that is set (the test it was in then shows as crashed).
run_logged() {
  local name=$1
  shift
  local rc=0 limit=()
  [[ -z ${STEP_TIMEOUT:-} ]] || limit=(timeout --kill-after=10 "$STEP_TIMEOUT")
  "${limit[@]}" "$@" >"$log_dir/$name.log" 2>&1 || rc=$?
  [[ $rc != 124 && $rc != 137 ]] || echo "gpu_report: stopped after STEP_TIMEOUT=$STEP_TIMEOUT s" >>"$log_dir/$name.log"
  echo "$rc" >"$log_dir/$name.rc"
  return "$rc"
}

# The unit suite leaves out the CUDA tests (run on their own just before) and the long ones.
readonly unit_filter='-Long*:Cuda*'

stage_test() {
  require_built muonlab_tests
  mkdir -p "$log_dir"
  local failed=0 unit_pid
  # Both are checks of correctness, not timings: the CPU suite runs beside the GPU's.
  note "running the unit suite ($unit_filter) in the background"
  run_logged tests-unit "$build_dir/bin/muonlab_tests" --gtest_filter="$unit_filter" &
  unit_pid=$!
  note "running the CUDA tests"
  run_logged tests-cuda "$build_dir/bin/muonlab_tests" --gtest_filter='Cuda*' || failed=1
  wait "$unit_pid" || failed=1
  return "$failed"
}

stage_bench() {
  require_built muonlab
  mkdir -p "$log_dir"
  local failed=0 device
  for device in cuda cpu; do
    note "running muonlab bench ops --device $device"
    run_logged "bench-$device" "$build_dir/bin/muonlab" bench ops --device "$device" --repeats "$repeats" || {
      note "bench on $device failed: $(tail -n 1 "$log_dir/bench-$device.log")"
      failed=1
    }
  done
  return "$failed"
}

# ---------------------------------------------------------------- report

# "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"
slug() { tr '[:upper:]' '[:lower:]' <<<"$1" | sed -E 's/[^a-z0-9]+/-/g; s/^-+//; s/-+$//'; }

# The text of a log file, or a marker when the stage did not write it.
read_or() { if [[ -s $1 ]]; then cat "$1"; else echo "$2"; fi; }

# Markdown for one gtest log: a summary line, a table of every test, then each failure's output.
# A test that started but printed no result is reported as crashed (the binary died in it).
test_section() {
  local log=$1 rc
  rc=$(read_or "${log%.log}.rc" "?")
  awk -v rc="$rc" '
    function cell(s) { gsub(/\|/, "\\|", s); return s }
    $1 == "[" && $2 == "RUN" && $3 == "]" {
      current = $4; order[++count] = current; result[current] = "crashed"; output[current] = ""; next
    }
    $1 == "[" && ($2 == "OK" || $2 == "FAILED" || $2 == "SKIPPED") && $3 == "]" && /\([0-9]+ ms\)$/ {
      name = $4; sub(/,$/, "", name)
      if (name in result && result[name] == "crashed") {
        result[name] = $2 == "OK" ? "pass" : $2 == "FAILED" ? "FAIL" : "skip"
        ms[name] = $(NF - 1); sub(/^\(/, "", ms[name])
      }
      current = ""; next
    }
    current != "" {
      if (take_reason) { reason[current] = $0; take_reason = 0 }
      if (/: Skipped$/) take_reason = 1
      if (lines[current]++ < 40) output[current] = output[current] $0 "\n"
    }
    END {
      for (i = 1; i <= count; ++i) tally[result[order[i]]]++
      if (count == 0) { printf "No test ran (exit status %s); the log ends:\n\n", rc; exit }
      printf "%d tests: %d passed, %d failed, %d skipped, %d crashed (exit status %s).\n\n", count,
             tally["pass"], tally["FAIL"], tally["skip"], tally["crashed"], rc
      print "| test | result | ms | note |"
      print "|---|---|---:|---|"
      for (i = 1; i <= count; ++i) {
        t = order[i]
        printf "| %s | %s | %s | %s |\n", t, result[t], (t in ms ? ms[t] : "-"), cell(reason[t])
      }
      for (i = 1; i <= count; ++i) {
        t = order[i]
        if (result[t] == "FAIL" || result[t] == "crashed")
          printf "\n<details><summary>%s: %s</summary>\n\n```\n%s```\n</details>\n", t, result[t], output[t]
      }
    }' "$log"
  if ! grep -q '^\[ RUN      \]' "$log"; then
    printf '```\n%s\n```\n' "$(tail -n 30 "$log")"
  fi
}

# Markdown for one `bench ops` log: its header line, its table and its JSON lines.
bench_section() {
  local log=$log_dir/$1.log rc header table json
  rc=$(read_or "$log_dir/$1.rc" "?")
  if [[ $rc != 0 ]]; then
    printf 'Failed (exit status %s); the output ends:\n\n```\n%s\n```\n\n' "$rc" "$(tail -n 20 "$log")"
  fi
  header=$(grep '^muonlab bench ops:' "$log" || true)
  table=$(grep '^|' "$log" || true)
  json=$(grep '^{' "$log" || true)
  [[ -z $header ]] || printf '%s\n\n' "$header"
  [[ -z $table ]] || printf '%s\n\n' "$table"
  [[ -z $json ]] || printf '<details><summary>JSON lines</summary>\n\n```\n%s\n```\n</details>\n' "$json"
}

# Whether a CUDA test passed on the device. CudaAvailability is left out: it is the test that passes
# where there is no device (and skips where there is one).
cuda_test_passed() { grep -E '^\[       OK \] Cuda' "$1" | grep -qv 'CudaAvailability\.'; }

# One line per problem the logs show: a stage not run or failed, no CUDA test passed on the device.
problems() {
  local name rc
  for name in tests-cuda tests-unit bench-cuda bench-cpu; do
    rc=$(read_or "$log_dir/$name.rc" "")
    if [[ -z $rc ]]; then
      echo "$name: not run"
    elif [[ $rc != 0 ]]; then
      echo "$name: exit status $rc"
    fi
  done
  if [[ -f $log_dir/tests-cuda.log ]] && ! cuda_test_passed "$log_dir/tests-cuda.log"; then
    echo "tests-cuda: no CUDA test passed on the device"
  fi
}

stage_report() {
  [[ -s $log_dir/gpu.csv ]] || die "no logs in $log_dir (gpu.csv missing): run the build stage first"
  local gpu_name driver memory report_date report found
  found=$(problems)
  IFS=, read -r gpu_name driver memory <"$log_dir/gpu.csv"
  driver=${driver# }
  memory=${memory# }
  report_date=$(cat "$log_dir/date.txt")
  report=$results_dir/gpu-report-$report_date-$(slug "$gpu_name").md
  mkdir -p "$results_dir"
  {
    echo "# GPU report: $gpu_name, $report_date"
    echo
    echo "Written by experiments/gpu_report.sh from the logs in \`${log_dir#"$root"/}\`."
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| date (UTC) | $report_date |"
    echo "| GPU | $gpu_name ($memory) |"
    echo "| driver | $driver |"
    echo "| CUDA (driver) | $(sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' "$log_dir/nvidia-smi.txt" | head -n 1) |"
    echo "| CUDA toolkit (nvcc) | $(grep -o 'release [0-9.]*, V[0-9.]*' "$log_dir/nvcc.txt" || echo unknown) |"
    echo "| CPU | $(head -n 1 "$log_dir/cpu.txt"), $(sed -n 2p "$log_dir/cpu.txt") cores |"
    echo "| commit | $(cat "$log_dir/commit.txt") |"
    echo "| cmake flags | \`$(read_or "$log_dir/cmake-flags.txt" unknown)\` |"
    echo
    echo "## Outcome"
    echo
    if [[ -z $found ]]; then echo "Every test passed or skipped, and both benchmarks ran."; else sed 's/^/- /' <<<"$found"; fi
    echo
    echo "## CUDA tests (\`muonlab_tests --gtest_filter='Cuda*'\`)"
    echo
    if [[ -f $log_dir/tests-cuda.log ]]; then
      test_section "$log_dir/tests-cuda.log"
      cuda_test_passed "$log_dir/tests-cuda.log" ||
        printf '\n**No CUDA test passed on the device: the GPU was not usable by the tests.**\n'
    else
      echo "Not run."
    fi
    echo
    echo "## Unit suite (\`muonlab_tests --gtest_filter='$unit_filter'\`)"
    echo
    if [[ -f $log_dir/tests-unit.log ]]; then test_section "$log_dir/tests-unit.log"; else echo "Not run."; fi
    local device
    for device in cuda cpu; do
      echo
      echo "## \`muonlab bench ops --device $device\`"
      echo
      if [[ -f $log_dir/bench-$device.log ]]; then bench_section "bench-$device"; else echo "Not run."; fi
    done
    echo
    echo "## nvidia-smi"
    echo
    echo '```'
    cat "$log_dir/nvidia-smi.txt"
    echo '```'
  } >"$report"
  note "report written: $report"
  if [[ -n ${OUT:-} ]]; then
    mkdir -p "$OUT"
    cp "$report" "$OUT/"
    # One archive: what comes back from a lent machine is limited to a few files.
    tar -C "$(dirname "$log_dir")" -czf "$OUT/gpu-report-logs.tar.gz" "$(basename "$log_dir")"
    note "report and logs (gpu-report-logs.tar.gz) copied to $OUT"
  fi
}

stage=${1:-all}
case $stage in
  -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' ;;
  build) stage_build ;;
  machine) stage_machine ;;
  test) stage_test || die "a test failed or crashed: see $log_dir/tests-cuda.log and tests-unit.log" ;;
  bench) stage_bench || die "a benchmark failed: see $log_dir/bench-cuda.log and bench-cpu.log" ;;
  report)
    stage_report
    [[ -z $(problems) ]] || die "some tests or benchmarks failed or did not run: see the report"
    ;;
  all)
    stage_build
    stage_test || true
    stage_bench || true
    stage_report
    [[ -z $(problems) ]] || die "some tests or benchmarks failed or did not run: see the report"
    ;;
  *) die "unknown stage '$stage' (expected all, build, test, bench or report)" ;;
esac
