#!/usr/bin/env bash
# Throughput of data-parallel training on this machine: the Shakespeare character GPT at 1 and 2
# processes (mpirun -np 2), one thread each, for Muon, Turbo-Muon, Dion2 at fractions 0.25 and 1.0,
# RMNP and AdamW. Writes experiments/results/data-parallel-<date>-<N>vcpu.md: samples/s, optimizer
# seconds per step, and the bytes and seconds each rank spent in communication per step.
# A timing measurement: run it on an otherwise idle machine.
#   scripts/measure-data-parallel.sh [STEPS]     (default 300; the first logged window is warm-up)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-300}
bin=build/bin/muonlab
[[ -x $bin ]] || { echo "build first: cmake -S . -B build && cmake --build build" >&2; exit 1; }
command -v mpirun >/dev/null || { echo "mpirun not found: run scripts/setup-deps.sh" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # harmless when not root
out_dir=$(mktemp -d /tmp/muonlab-dp.XXXXXX)
result=experiments/results/data-parallel-$(date +%Y-%m-%d)-$(nproc)vcpu.md

# name, config, extra --set arguments
variants=(
  "muon|shakespeare_char_muon|"
  "turbo_muon|shakespeare_char_turbo_muon|"
  "dion2_f0.25|shakespeare_char_dion2|--set optimizer.fraction=0.25"
  "dion2_f1.0|shakespeare_char_dion2|--set optimizer.fraction=1.0"
  "rmnp|shakespeare_char_rmnp|"
  "adamw|shakespeare_char_adamw|"
)
common=(--quiet --set "train.steps=$steps" --set schedule.warmup_steps=10 --set "train.log_every=$((steps / 10))"
        --set "train.eval_every=$steps" --set train.eval_batches=2 --set threads=1)

for variant in "${variants[@]}"; do
  IFS='|' read -r name config extra <<<"$variant"
  for ranks in 1 2; do
    run="$out_dir/$name-np$ranks"
    echo "measure: $name on $ranks process(es)" >&2
    launcher=()
    # --bind-to none: two ranks on two vCPUs that may be one core's hyperthreads must not share one.
    [[ $ranks -gt 1 ]] && launcher=(mpirun -np "$ranks" --oversubscribe --bind-to none)
    # shellcheck disable=SC2086  # $extra holds whole --set arguments
    OMP_NUM_THREADS=1 "${launcher[@]}" "$bin" train "configs/$config.yaml" --out "$run" "${common[@]}" $extra >/dev/null
  done
done

python3 - "$out_dir" "$result" "$steps" "${variants[@]}" <<'PY'
import json, sys, statistics
out_dir, result, steps, variants = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
rows = []
for variant in variants:
    name = variant.split("|")[0]
    for ranks in (1, 2):
        lines = [json.loads(l) for l in open(f"{out_dir}/{name}-np{ranks}/metrics.jsonl") if l.strip()]
        train = [l for l in lines if "train_loss" in l][1:]  # the first window is warm-up
        summary = json.load(open(f"{out_dir}/{name}-np{ranks}/summary.json"))
        mean = lambda key: statistics.mean(l.get(key, 0.0) for l in train)
        rows.append((name, ranks, mean("samples_per_s"), 1e3 * summary["optimizer_s"] / summary["steps"],
                     mean("comm_bytes_per_step") / 1e6, 1e3 * mean("comm_s_per_step"), summary["val_loss"]))
with open(result, "w") as f:
    f.write(f"# Data-parallel throughput, Shakespeare character GPT, {steps} steps, one thread per process\n\n")
    f.write("Made by `scripts/measure-data-parallel.sh`. samples/s: mean over the logged windows after the first; "
            "communication: what each rank handed to collectives per step (gradient all-reduce, update all-gather, "
            "loss and control reductions).\n\n")
    f.write("| optimizer | processes | samples/s | optimizer ms/step | comm MB/step | comm ms/step | val_loss |\n")
    f.write("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
    for name, ranks, sps, opt_ms, mb, comm_ms, val in rows:
        f.write(f"| {name} | {ranks} | {sps:.1f} | {opt_ms:.1f} | {mb:.2f} | {comm_ms:.1f} | {val:.4f} |\n")
print(open(result).read())
PY
echo "measure: runs in $out_dir, table in $result" >&2
