#!/usr/bin/env bash
# Creates (once) a SoftHSM token for Kms under a data directory:
#   <data dir>/hsm/softhsm2.conf   SoftHSM configuration (from softhsm2.conf.template)
#   <data dir>/hsm/tokens/         the token files
#   <data dir>/hsm/user.pin        the user PIN the server logs in with (mode 0600)
#   <data dir>/hsm/so.pin          the security officer PIN (mode 0600)
# Usage: hsm-config/init-token.sh [data dir] [token label]   (defaults: .kms kms-dev)
# Idempotent: an existing token is left alone. PINs are random, never printed.
set -euo pipefail

data_dir=$(realpath -m "${1:-${KMS_DATA_DIR:-.kms}}")
label=${2:-kms-dev}
here=$(cd "$(dirname "$0")" && pwd)
hsm_dir="$data_dir/hsm"

command -v softhsm2-util >/dev/null || { echo "init-token: softhsm2-util not found (apt-get install -y softhsm2)" >&2; exit 1; }

umask 077
mkdir -p "$hsm_dir/tokens"
sed "s#@TOKEN_DIR@#$hsm_dir/tokens#" "$here/softhsm2.conf.template" > "$hsm_dir/softhsm2.conf"
export SOFTHSM2_CONF="$hsm_dir/softhsm2.conf"

if softhsm2-util --show-slots 2>/dev/null | grep -Eq "^[[:space:]]*Label:[[:space:]]+$label[[:space:]]*$"; then
  exit 0
fi

[ -s "$hsm_dir/so.pin" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$hsm_dir/so.pin"
[ -s "$hsm_dir/user.pin" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$hsm_dir/user.pin"
softhsm2-util --init-token --free --label "$label" \
  --so-pin "$(cat "$hsm_dir/so.pin")" --pin "$(cat "$hsm_dir/user.pin")" >/dev/null
echo "init-token: created SoftHSM token '$label' in $hsm_dir/tokens"
