#!/usr/bin/env bash
# Fetches the public data sets muonlab trains on, laid out like ../shared/data:
#   TARGET_DIR/cifar-10-batches-bin/{data_batch_1..5.bin,test_batch.bin,batches.meta.txt}
#   TARGET_DIR/tinyshakespeare/input.txt
# Every download is checked against its published checksum before it is put in place.
# Needs network access; nothing in the build or the tests runs it.
set -euo pipefail

readonly CIFAR_URL="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
# The CIFAR page publishes an MD5 for each archive and no SHA-256, so the archive is checked
# by that MD5, and the extracted class-name file (identical to the official one) by SHA-256.
readonly CIFAR_ARCHIVE_MD5="c32a1d4ab5d03f1284b67883e8d87530"
readonly CIFAR_META_SHA256="558e74b5e208382e186da55784b4bac2cd52e558448e1b5800990fdb28ed8033"
readonly CIFAR_BATCH_BYTES=30730000  # 10000 records of 3073 bytes
readonly SHAKESPEARE_URL="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
readonly SHAKESPEARE_SHA256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
readonly CIFAR_BATCHES=(data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin data_batch_5.bin test_batch.bin)

usage() {
  cat <<USAGE
usage: $(basename "$0") TARGET_DIR [cifar10] [tinyshakespeare]

Downloads the named data sets (both when none is named) into TARGET_DIR and verifies them:
  cifar10          CIFAR-10 binary version (162 MB) -> TARGET_DIR/cifar-10-batches-bin/
  tinyshakespeare  Tiny Shakespeare (1.1 MB)        -> TARGET_DIR/tinyshakespeare/input.txt
Data sets already present and intact are left alone.
USAGE
}

die() {
  echo "download.sh: $*" >&2
  exit 1
}

fetch() {
  local url=$1 out=$2
  echo "download.sh: fetching $url" >&2
  if command -v curl >/dev/null; then
    curl --fail --location --retry 3 --output "$out" "$url"
  elif command -v wget >/dev/null; then
    wget --tries=3 --output-document="$out" "$url"
  else
    die "neither curl nor wget is installed"
  fi
}

# checksum_of ALGORITHM FILE: md5 or sha256 digest of FILE.
checksum_of() {
  "$1sum" "$2" | cut -d ' ' -f 1
}

verify() {
  local algorithm=$1 expected=$2 file=$3 actual
  actual=$(checksum_of "$algorithm" "$file")
  [[ $actual == "$expected" ]] || die "$file: $algorithm is $actual, expected $expected (corrupt or changed download)"
}

cifar_is_complete() {
  local dir=$1 batch
  [[ -f $dir/batches.meta.txt && $(checksum_of sha256 "$dir/batches.meta.txt") == "$CIFAR_META_SHA256" ]] || return 1
  for batch in "${CIFAR_BATCHES[@]}"; do
    [[ -f $dir/$batch && $(stat -c %s "$dir/$batch") -eq $CIFAR_BATCH_BYTES ]] || return 1
  done
}

download_cifar10() {
  local target=$1 dir="$1/cifar-10-batches-bin" archive="$1/cifar-10-binary.tar.gz.part"
  if cifar_is_complete "$dir"; then
    echo "download.sh: $dir is already complete" >&2
    return
  fi
  fetch "$CIFAR_URL" "$archive"
  verify md5 "$CIFAR_ARCHIVE_MD5" "$archive"
  tar -xzf "$archive" -C "$target"
  rm -f "$archive"
  cifar_is_complete "$dir" || die "$dir is incomplete after extracting $CIFAR_URL"
  echo "download.sh: CIFAR-10 ready in $dir" >&2
}

download_tinyshakespeare() {
  local dir="$1/tinyshakespeare"
  local file="$dir/input.txt"
  if [[ -f $file && $(checksum_of sha256 "$file") == "$SHAKESPEARE_SHA256" ]]; then
    echo "download.sh: $file is already complete" >&2
    return
  fi
  mkdir -p "$dir"
  fetch "$SHAKESPEARE_URL" "$file.part"
  verify sha256 "$SHAKESPEARE_SHA256" "$file.part"
  mv "$file.part" "$file"
  echo "download.sh: Tiny Shakespeare ready in $file" >&2
}

main() {
  if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    usage
    [[ $# -ge 1 ]] && exit 0
    exit 2
  fi
  local target=$1
  shift
  local datasets=("$@")
  [[ ${#datasets[@]} -gt 0 ]] || datasets=(cifar10 tinyshakespeare)
  local name
  for name in "${datasets[@]}"; do
    [[ $name == cifar10 || $name == tinyshakespeare ]] || { usage >&2; die "unknown data set '$name'"; }
  done
  mkdir -p "$target"
  for name in "${datasets[@]}"; do
    "download_$name" "$target"
  done
}

main "$@"
