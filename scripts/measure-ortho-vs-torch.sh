#!/usr/bin/env bash
# The orthogonalizers beside PyTorch (issue 9, item 6): `muonlab bench ortho --threads 1` and
# `../shared/bench/torch_reference.py ortho --threads 1` in alternating rounds, so that both sides
# share whatever load the machine has. Both take the median of 7 timed calls per case after
# warm-up, each call with its operands in cache. Writes
# experiments/results/ortho-vs-torch-<date>-<N>vcpu[-<tag>].md: per shape and method the median
# over the rounds of each side's median, and their ratio (muonlab / PyTorch: below 1 is faster).
# A timing measurement: the quieter the machine, the better.
#   scripts/measure-ortho-vs-torch.sh [ROUNDS] [TAG]     (default 3 rounds, no tag)
# MUONLAB_BIN names another muonlab binary (default build/bin/muonlab), e.g. a CPU-only build.
comparison=ortho
source "$(dirname "$0")/vs-torch-common.sh"

for round in $(seq "$rounds"); do
  echo "measure: round $round of $rounds" >&2
  "$bin" bench ortho --threads 1 --repeats 7 | grep '^{' | sed 's/^/muonlab /' >>"$log"
  OPENBLAS_CORETYPE=$(muonlab_blas_kernels) /usr/bin/python3 "$reference" ortho --threads 1 --repeats 7 | grep '^{' | sed 's/^/torch /' >>"$log"
done

machine=$(machine_description)
python3 - "$log" "$result" "$rounds" "$(git rev-parse --short HEAD)" "$machine" "$bin" <<'EOF'
import json, statistics, sys
log, result, rounds, commit, machine, binary = sys.argv[1:]
ours, theirs, shapes = {}, {}, []
for line in open(log):
    side, _, text = line.partition(" ")
    row = json.loads(text)
    if row.get("bench", "ortho") != "ortho":  # muonlab's stacks of matrices: no peer on the PyTorch side
        continue
    shape = "x".join(map(str, row["shape"]))
    if shape not in shapes:
        shapes.append(shape)
    if side == "muonlab":
        ours.setdefault((shape, row["method"]), []).append(row["ms"])
    else:  # one row per shape, a column per method
        for method in ("ns5", "turbo", "dion2", "rmnp"):
            theirs.setdefault((shape, method), []).append(row[method + "_ms"])
with open(result, "w") as out:
    out.write(f"# Orthogonalizers beside PyTorch: {machine}\n\n")
    out.write(f"`scripts/measure-ortho-vs-torch.sh {rounds}` with {binary} (checkout at commit {commit}; the binary may be an older build): {rounds} rounds, each running "
              "`muonlab bench ortho --threads 1 --repeats 7` then `torch_reference.py ortho --threads 1 --repeats 7` "
              "(median of 7 timed calls per case, operands in cache). The table gives the median over the rounds of "
              "each side's median, in ms, and ratio = muonlab / PyTorch (below 1 is faster). muonlab's Dion2 runs "
              "Polar Express coefficients and scatters its k orthogonalized slices back into a full-size matrix; "
              "PyTorch's runs NS5 on the selected slices only.\n\n")
    out.write("| shape | method | muonlab ms | PyTorch ms | ratio |\n| --- | --- | --- | --- | --- |\n")
    for shape in shapes:
        for method in ("ns5", "turbo", "dion2", "rmnp"):
            a, b = statistics.median(ours[(shape, method)]), statistics.median(theirs[(shape, method)])
            out.write(f"| {shape} | {method} | {a:.3g} | {b:.3g} | {a / b:.2f} |\n")
print(result)
EOF
