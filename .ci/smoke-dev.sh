#!/usr/bin/env bash
# Starts ./dev.sh on a fresh data directory and does what the README's quick start does
# with buf curl (server reflection) and the dev token: create a key, get a data key,
# decrypt it; a call without a token and a key-user creating a key are refused, and the
# metrics endpoint counts the refusal. Then a restart on the same data directory must
# decrypt the same blob.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
port=$(( 20000 + RANDOM % 12000 ))  # below the ephemeral range (32768 and up), which clients and port-0 servers draw from
metrics_port=$(( port + 1 ))
export KMS_DATA_DIR="$work/.kms"
buf=(npx --yes @bufbuild/buf@1.75.0)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start_server() {
  (cd "$work" && exec "$root/dev.sh" --urls "https://127.0.0.1:$port" --Kms:MetricsUrl "http://127.0.0.1:$metrics_port") > "$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 120); do
    grep -q "Kms listening" "$work/server.log" 2>/dev/null && return 0
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; echo "smoke: server exited" >&2; exit 1; }
    sleep 1
  done
  cat "$work/server.log"; echo "smoke: server did not start" >&2; exit 1
}

# As the README: the dev token in an Authorization header, sent on reflection calls too.
call_as() {
  "${buf[@]}" curl --protocol grpc --cacert "$KMS_DATA_DIR/tls/ca.crt" \
    -H "Authorization: Bearer $(cat "$KMS_DATA_DIR/tokens/$1")" --reflect-header '*' \
    -d "$3" "https://127.0.0.1:$port/kms.v1.KeyManagementService/$2"
}
call() { call_as developer.token "$@"; }

start_server
[ "$(stat -c %a "$KMS_DATA_DIR/tokens/developer.token")" = 600 ] || { echo "smoke: developer.token is not mode 0600" >&2; exit 1; }

# Health needs no credential; everything else does, and roles are enforced.
# (buf learns the health schema by reflection, which needs the token; the Check itself does not.)
"${buf[@]}" curl --protocol grpc --cacert "$KMS_DATA_DIR/tls/ca.crt" -H "Authorization: Bearer $(cat "$KMS_DATA_DIR/tokens/key-user.token")" \
  --reflect-header '*' "https://127.0.0.1:$port/grpc.health.v1.Health/Check" | grep -q SERVING
if "${buf[@]}" curl --protocol grpc --cacert "$KMS_DATA_DIR/tls/ca.crt" --schema "$root/proto" \
     -d '{"length_bytes":8}' "https://127.0.0.1:$port/kms.v1.KeyManagementService/GenerateRandom" > "$work/anon.out" 2>&1; then
  echo "smoke: a call without a credential was answered" >&2; exit 1
fi
grep -qi unauthenticated "$work/anon.out" || { cat "$work/anon.out"; echo "smoke: expected unauthenticated" >&2; exit 1; }
if call_as key-user.token CreateKey '{"parent":"tenants/dev","key_id":"nope","key":{"purpose":"KEY_PURPOSE_ENCRYPT_DECRYPT"}}' > "$work/denied.out" 2>&1; then
  echo "smoke: a key-user created a key" >&2; exit 1
fi
grep -qi permission_denied "$work/denied.out" || { cat "$work/denied.out"; echo "smoke: expected permission_denied" >&2; exit 1; }

# Prometheus metrics (docs/observability.md): plain HTTP on their own port, refusals counted.
grep "Kms serving Prometheus metrics" "$work/server.log" | grep -q "http://127.0.0.1:$metrics_port/metrics" || { cat "$work/server.log"; echo "smoke: metrics listener not logged" >&2; exit 1; }
python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' "http://127.0.0.1:$metrics_port/metrics" > "$work/metrics.out"
grep -q 'kms_grpc_requests_total{code="PermissionDenied",method="/kms.v1.KeyManagementService/CreateKey"}' "$work/metrics.out" \
  || { cat "$work/metrics.out"; echo "smoke: the refused CreateKey is not in the metrics" >&2; exit 1; }

call CreateKey '{"parent":"tenants/dev","key_id":"smoke","key":{"purpose":"KEY_PURPOSE_ENCRYPT_DECRYPT"}}' | grep -q '"tenants/dev/keys/smoke"'
data_key=$(call GenerateDataKey '{"name":"tenants/dev/keys/smoke","encryption_context":{"app":"smoke"}}')
plaintext=$(echo "$data_key" | python3 -c 'import json,sys; print(json.load(sys.stdin)["plaintext"])')
ciphertext=$(echo "$data_key" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ciphertext"])')
decrypted=$(call Decrypt "{\"ciphertext\":\"$ciphertext\",\"encryption_context\":{\"app\":\"smoke\"}}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["plaintext"])')
[ "$plaintext" = "$decrypted" ] || { echo "smoke: decrypted data key differs" >&2; exit 1; }

kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
start_server
again=$(call Decrypt "{\"ciphertext\":\"$ciphertext\",\"encryption_context\":{\"app\":\"smoke\"}}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["plaintext"])')
[ "$plaintext" = "$again" ] || { echo "smoke: decrypt after restart differs" >&2; exit 1; }
echo "smoke: dev.sh + buf curl: health, unauthenticated and unauthorized refused, metrics, create key, data key, decrypt, restart, decrypt: ok"
