#!/usr/bin/env bash
# The benchmark models' training steps beside PyTorch (issue 13): `muonlab bench models --threads T`
# and `../shared/bench/torch_reference.py --threads T gpt|cnn` for T = 1 and 2, in alternating
# rounds, so that both sides share whatever load the machine has. Writes
# experiments/results/models-vs-torch-<date>-<N>vcpu[-<tag>].md: per model and thread count the
# median over the rounds of each side's ms per step, and their ratio (muonlab / PyTorch: below 1
# is faster). A timing measurement: the quieter the machine, the better (about 35 s a round here).
#   scripts/measure-models-vs-torch.sh [ROUNDS] [TAG]     (default 3 rounds, no tag)
# MUONLAB_BIN names another muonlab binary (default build/bin/muonlab), e.g. a CPU-only build.
comparison=models
source "$(dirname "$0")/vs-torch-common.sh"

for round in $(seq "$rounds"); do
  echo "measure: round $round of $rounds" >&2
  for threads in 1 2; do
    "$bin" bench models --threads "$threads" --repeats 10 | grep '^{' | sed "s/^/muonlab $threads /" >>"$log"
    for model in gpt cnn; do  # PyTorch's convolutions run on oneDNN, its matrix products on OpenBLAS
      OPENBLAS_CORETYPE=$(muonlab_blas_kernels) /usr/bin/python3 "$reference" --threads "$threads" "$model" | grep '^{' |
        sed "s/^/torch $threads /" >>"$log"
    done
  done
done

machine=$(machine_description)
python3 - "$log" "$result" "$rounds" "$(git rev-parse --short HEAD)" "$machine" "$bin" <<'PY'
import json, statistics, sys
log, result, rounds, commit, machine, binary = sys.argv[1:]
steps, models = {}, []
for line in open(log):
    side, threads, text = line.split(" ", 2)
    row = json.loads(text)
    if row["bench"] not in models:
        models.append(row["bench"])
    steps.setdefault((row["bench"], int(threads), side), []).append(row["ms_per_step"])
with open(result, "w") as out:
    out.write(f"# Benchmark models beside PyTorch: {machine}\n\n")
    out.write(f"`scripts/measure-models-vs-torch.sh {rounds}` with {binary} (checkout at commit {commit}; the binary may be an older build): {rounds} rounds, each running, "
              "for 1 and 2 threads, `muonlab bench models --threads T --repeats 10` then `torch_reference.py --threads T "
              "gpt` and `cnn` (ms per training step: forward, backward, optimizer; shapes in ../shared/bench/SPEC.md). "
              "The table gives the median over the rounds, the range in brackets, and ratio = muonlab / PyTorch "
              "(below 1 is faster) of the medians and of the minimums: load from elsewhere on the machine only "
              "adds time, so the minimums are what each side does undisturbed.\n\n")
    out.write("| model | threads | muonlab ms | PyTorch ms | ratio | ratio of minimums |\n"
              "| --- | --- | --- | --- | --- | --- |\n")
    for model in models:
        for threads in (1, 2):
            ours, theirs = steps[(model, threads, "muonlab")], steps[(model, threads, "torch")]
            a, b = statistics.median(ours), statistics.median(theirs)
            out.write(f"| {model} | {threads} | {a:.1f} [{min(ours):.1f}-{max(ours):.1f}] | "
                      f"{b:.1f} [{min(theirs):.1f}-{max(theirs):.1f}] | {a / b:.2f} | {min(ours) / min(theirs):.2f} |\n")
print(result)
PY
