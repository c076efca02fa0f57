#!/usr/bin/env bash
# Fuzzes every target for SECONDS each (docs/fuzzing.md): builds and instruments once, then
# fuzz/run.sh per target. Exit 1 if any target found a crash or a hang (all targets still run).
#   fuzz/run-all.sh SECONDS
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ $# -ne 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: fuzz/run-all.sh SECONDS" >&2
  exit 2
fi

targets=(blob context envelope envelope-signed share approval genesis signature audit)
# The first target builds and instruments; the others reuse that output.
failed=()
for i in "${!targets[@]}"; do
  target=${targets[$i]}
  prepared=1
  [ "$i" -eq 0 ] && prepared=""
  KMS_FUZZ_PREPARED=$prepared "$here/run.sh" "$target" "$1" || failed+=("$target")
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes or hangs in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${1}s each, no crash and no hang"
