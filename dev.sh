#!/usr/bin/env bash
# Runs Kms in dev mode in the foreground: installs SoftHSM if missing, creates the token
# (and, on first start, the domain key) under the data directory, builds, and serves
# https://127.0.0.1:8443 (TLS 1.3; clients trust DATA-DIR/tls/ca.crt, .kms/tls/ca.crt by default).
# Extra arguments pass through to the server, e.g. ./dev.sh --urls https://127.0.0.1:9443
# KMS_DATA_DIR overrides the data directory (default: .kms under the current directory).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export KMS_DATA_DIR=$(realpath -m "${KMS_DATA_DIR:-$PWD/.kms}")

sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
if ! command -v softhsm2-util >/dev/null; then
  echo "dev.sh: installing SoftHSMv2"
  $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq softhsm2 >/dev/null
fi

jemalloc() { { ls /usr/lib/*-linux-gnu/libjemalloc.so.2 2>/dev/null || true; } | head -n 1; }
if [ "${KMS_MALLOC:-jemalloc}" = jemalloc ] && [ -z "$(jemalloc)" ] && command -v apt-get >/dev/null; then
  echo "dev.sh: installing jemalloc (KMS_MALLOC=glibc does without)"
  { $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq libjemalloc2 >/dev/null; } \
    || echo "dev.sh: jemalloc could not be installed; using glibc's malloc"
fi

"$here/hsm-config/init-token.sh" "$KMS_DATA_DIR" kms-dev
export SOFTHSM2_CONF="$KMS_DATA_DIR/hsm/softhsm2.conf"

dotnet build "$here/src/Kms.Server/Kms.Server.csproj" -c Release -nologo -v quiet
# The C heap: jemalloc, two arenas, freed pages returned after 2 s, instead of glibc's malloc
# (README, configuration; KMS_MALLOC=glibc keeps glibc's, with two arenas). Read as the process starts.
if [ "${KMS_MALLOC:-jemalloc}" = jemalloc ] && [ -n "$(jemalloc)" ]; then
  export LD_PRELOAD="$(jemalloc)${LD_PRELOAD:+:$LD_PRELOAD}"
  export MALLOC_CONF="${MALLOC_CONF:-narenas:2,dirty_decay_ms:2000}"
fi
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
exec dotnet "$here/src/Kms.Server/bin/Release/net10.0/Kms.Server.dll" --dev "$@"
