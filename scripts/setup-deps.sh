#!/usr/bin/env bash
# Installs muonlab's build and test dependencies from Debian's packages, only when missing.
# Called by `make demo`, `make test` and .ci/run; safe to run again (does nothing then).
set -euo pipefail

packages=(
  g++ cmake make pkg-config
  libyaml-cpp-dev nlohmann-json3-dev libstb-dev libjpeg62-turbo-dev libopenblas-openmp-dev zlib1g-dev
  libgtest-dev googletest libbenchmark-dev
  dataset-fashion-mnist
  python3-matplotlib  # `muonlab report` draws its figures with it
  libopenmpi-dev openmpi-bin  # data-parallel training: mpirun -np N build/bin/muonlab train ...
)
# PyTorch is only needed to regenerate the committed reference files and to run the
# side-by-side benchmark; set MUONLAB_WITH_TORCH=1 to install it too.
if [[ "${MUONLAB_WITH_TORCH:-0}" == 1 ]]; then packages+=(python3-torch python3-numpy); fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "setup-deps: installing ${missing[*]}" >&2
sudo_cmd=()
[[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
