#!/usr/bin/env bash
# Fuzzes one parser of untrusted bytes with AFL++ and SharpFuzz for a bounded time (docs/fuzzing.md).
#   fuzz/run.sh TARGET SECONDS      (targets: dotnet fuzz/out/bin/Kms.Fuzz.dll list)
# Installs afl++ if missing, builds fuzz/Kms.Fuzz in Release into fuzz/out/bin-plain and instruments the
# Kms assemblies in a copy of it, fuzz/out/bin (only ours: Kms.Core, Kms.Client, Kms.Ceremony), writes the seed corpus
# from the real encoders into fuzz/seeds/TARGET (plus fuzz/regressions/TARGET, inputs that once
# crashed), replays the regressions, and runs afl-fuzz for SECONDS. Exit 1 if AFL found a crash or
# a hang (its inputs and stack traces are printed); the executions done are printed either way.
# KMS_FUZZ_PREPARED=1 skips the build (fuzz/run-all.sh builds once for every target).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"

if [ $# -ne 2 ] || ! [[ "$2" =~ ^[0-9]+$ ]]; then
  echo "usage: fuzz/run.sh TARGET SECONDS" >&2
  exit 2
fi
target=$1
seconds=$2
bin=$here/out/bin
plain=$here/out/bin-plain
instrumented=(Kms.Core.dll Kms.Client.dll Kms.Ceremony.dll)

if ! command -v afl-fuzz >/dev/null; then
  echo "fuzz: installing afl++"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq afl++ >/dev/null
fi

if [ "${KMS_FUZZ_PREPARED:-}" != 1 ]; then
  echo "fuzz: building fuzz/Kms.Fuzz (Release) and instrumenting ${instrumented[*]}"
  rm -rf "$bin" "$plain"
  mkdir -p "$here/out" # gitignored: absent on a clean clone
  dotnet build fuzz/Kms.Fuzz -c Release --nologo -v quiet >/dev/null
  cp -r fuzz/Kms.Fuzz/bin/Release/net10.0 "$plain"
  cp -r "$plain" "$bin"
  dotnet tool restore >/dev/null
  for dll in "${instrumented[@]}"; do
    dotnet sharpfuzz "$bin/$dll" >/dev/null
  done
fi

# Instrumented code needs AFL's shared memory: seeds and replays run on the plain build.
harness=(dotnet "$bin/Kms.Fuzz.dll" "$target")
plain_harness=(dotnet "$plain/Kms.Fuzz.dll" "$target")
seeds=$here/seeds/$target
rm -rf "$seeds"
"${plain_harness[@]}" --seeds "$seeds"
if [ -d "$here/regressions/$target" ] && [ -n "$(ls -A "$here/regressions/$target")" ]; then
  "${plain_harness[@]}" --replay "$here/regressions/$target"
  cp "$here/regressions/$target"/* "$seeds/"
fi

findings=$here/out/findings/$target
rm -rf "$findings"
mkdir -p "$findings"
echo "fuzz: afl-fuzz on '$target' for ${seconds}s"
# Root in a container: no core_pattern or CPU governor to tune, no CPU to pin to (the machine is shared).
# A heap cap turns an unbounded allocation into an OutOfMemoryException, which is a crash.
export AFL_SKIP_BIN_CHECK=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
  AFL_NO_UI=1 AFL_QUIET=1 AFL_SHUFFLE_QUEUE=0 AFL_FAST_CAL=1 AFL_IGNORE_SEED_PROBLEMS=1 \
  DOTNET_GCHeapHardLimit=0x40000000 DOTNET_TieredPGO=0
timeout --kill-after=10 $((seconds + 120)) \
  afl-fuzz -i "$seeds" -o "$findings" -t 5000 -V "$seconds" -- "${harness[@]}" >"$findings/afl.log" 2>&1 || {
  echo "fuzz: afl-fuzz failed (exit $?); its log:" >&2
  tail -40 "$findings/afl.log" >&2
  exit 1
}

stats=$findings/default/fuzzer_stats
stat() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
crashes=$(find "$findings/default/crashes" -type f ! -name README.txt 2>/dev/null | wc -l)
hangs=$(find "$findings/default/hangs" -type f 2>/dev/null | wc -l)
echo "fuzz: $target: $(stat execs_done) executions in $(stat run_time)s ($(stat execs_per_sec) execs/s), corpus $(stat corpus_count), coverage $(stat bitmap_cvg), $crashes crashes, $hangs hangs"
if [ "$crashes" -gt 0 ] || [ "$hangs" -gt 0 ]; then
  echo "fuzz: $target: AFL found inputs that crash or hang (in $findings/default); the crashes replayed:" >&2
  [ "$crashes" -gt 0 ] && "${plain_harness[@]}" --replay "$findings/default/crashes" >&2 || true
  exit 1
fi
