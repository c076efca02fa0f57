#!/usr/bin/env bash
# Installs what the tests need and runs every test of the solution.
#   SoftHSMv2 (the HSM of every test; each test run creates its tokens from scratch),
#   OpenSC's pkcs11-tool (an independent view of the token), openssl (TLS checks),
#   Debian's python3-cryptography-vectors (NIST CAVP GCM vectors), and PostgreSQL: a
#   throw-away cluster on loopback (tests/postgres/cluster.sh) for the storage contract suite
#   and the several-node tests, stopped and deleted when the run ends.
# Wycheproof's vectors are not shipped: they are read from KMS_WYCHEPROOF_DIR, else
# ../shared/vectors/wycheproof beside the repository. Without them the run stops here, saying
# so; KMS_WYCHEPROOF_DIR=none runs without them, the tests that need them reported skipped.
# Each test project has a time budget (tests/test.runsettings); a hang fails the run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

if [ "${KMS_WYCHEPROOF_DIR:-}" = none ]; then
  echo "test.sh: KMS_WYCHEPROOF_DIR=none: the tests that need the Wycheproof vectors will be reported SKIPPED"
else
  found=""
  for candidate in "${KMS_WYCHEPROOF_DIR:-}" "$here/../shared/vectors/wycheproof" /work/shared/vectors/wycheproof; do
    if [ -n "$candidate" ] && [ -f "$candidate/aes_gcm_test.json" ]; then
      found=$(realpath "$candidate")
      break
    fi
  done
  if [ -z "$found" ]; then
    echo "test.sh: the Wycheproof vectors (C2SP/wycheproof testvectors_v1) were not found in ${KMS_WYCHEPROOF_DIR:-../shared/vectors/wycheproof}." >&2
    echo "test.sh: put them there or point KMS_WYCHEPROOF_DIR at them; KMS_WYCHEPROOF_DIR=none ./test.sh runs without them (the tests that need them reported skipped)." >&2
    exit 2
  fi
  export KMS_WYCHEPROOF_DIR=$found
  echo "test.sh: Wycheproof vectors from $KMS_WYCHEPROOF_DIR"
fi

need=()
command -v softhsm2-util >/dev/null || need+=(softhsm2)
command -v pkcs11-tool >/dev/null || need+=(opensc)
command -v openssl >/dev/null || need+=(openssl)
command -v strace >/dev/null || need+=(strace)   # CeremonyFilesystemFaultTests: a deletion or a write refused where the test says
[ -d /usr/lib/python3/dist-packages/cryptography_vectors ] || need+=(python3-cryptography-vectors)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}"
  sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi


if command -v npx >/dev/null; then
  echo "test.sh: buf lint proto/"
  (cd proto && npx --yes @bufbuild/buf@1.75.0 lint)
else
  echo "test.sh: skipping buf lint (Node.js/npx not installed)"
fi

if [ -z "${KMS_TEST_POSTGRES:-}" ]; then
  eval "$(tests/postgres/cluster.sh start)"
  trap 'tests/postgres/cluster.sh stop "$KMS_TEST_POSTGRES_DIR"' EXIT
  echo "test.sh: PostgreSQL for the tests at ${KMS_TEST_POSTGRES%%;Username*}"
fi

# Every server log event that answered a caller INTERNAL (it carries an ErrorId), with its
# exception: an in-process test server keeps its log in memory only, so a failed run shows them here.
export KMS_TEST_ERROR_LOG="${KMS_TEST_ERROR_LOG:-$(mktemp -t kms-test-internal-errors.XXXXXX)}"
status=0
dotnet test Kms.sln -c Release --settings tests/test.runsettings --blame-hang-timeout 5m "$@" || status=$?
if [ "$status" -ne 0 ] && [ -s "$KMS_TEST_ERROR_LOG" ]; then
  echo "test.sh: server log events behind INTERNAL answers during the run ($KMS_TEST_ERROR_LOG, last 300 lines):"
  tail -n 300 "$KMS_TEST_ERROR_LOG"
fi
exit "$status"
