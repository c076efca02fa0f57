#!/usr/bin/env bash
# Checks the Dockerfile without a Docker engine (CI machines have none):
#  1. every path a COPY takes from the build context is in the repository;
#  2. the Dockerfile's `dotnet publish`, run as written but into a temporary directory, with the
#     runtime stage's other COPYs laid out beside it as in the image, gives every /app file the
#     ENTRYPOINT and HEALTHCHECK name;
#  3. the ENTRYPOINT, run as the image runs it (its ENV, init-token.sh on a fresh data
#     directory) but on a random 127.0.0.1 port, serves; the HEALTHCHECK command then exits 0
#     with SERVING, and exits non-zero once the server is stopped.
# What it cannot check: the base images, apt-get, the user, the VOLUME; those need `docker build`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dockerfile="$root/Dockerfile"
work=$(mktemp -d)
app="$work/app"
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "docker-check: $*" >&2; exit 1; }

# The instruction lines of the final stage, and the JSON array of an instruction there.
final_stage=$(awk '/^FROM /{stage=""} {stage=stage $0 "\n"} END{printf "%s", stage}' "$dockerfile")
json_array() { # json_array INSTRUCTION-REGEX: the array after it, one element per line (NUL-free)
  printf '%s' "$final_stage" | python3 -c '
import json, re, sys
pattern = re.compile(sys.argv[1])
for line in sys.stdin:
    m = pattern.match(line)
    if m:
        for arg in json.loads(line[m.end():]):
            print(arg.replace("\n", " "))
        sys.exit(0)
sys.exit("no such instruction: " + sys.argv[1])' "$1"
}

# 1. COPY sources from the build context are tracked files or directories.
while read -r -a words; do
  [ "${words[0]:-}" = COPY ] || continue
  [[ "${words[1]}" == --from=* ]] && continue
  for source in "${words[@]:1:${#words[@]}-2}"; do
    [ -n "$(git ls-files -- "$source")" ] || fail "COPY $source: not in the repository"
  done
done < "$dockerfile"

# 2. Publish exactly as the Dockerfile's build stage does, into $app instead of /app.
publish=$(grep -E '^RUN dotnet publish ' "$dockerfile") || fail "no RUN dotnet publish line"
[[ "$publish" == *" -o /app "* || "$publish" == *" -o /app" ]] || fail "the publish does not write to /app: $publish"
read -r -a publish_cmd <<< "${publish#RUN }"
for i in "${!publish_cmd[@]}"; do [ "${publish_cmd[$i]}" = /app ] && publish_cmd[$i]="$app"; done
echo "docker-check: ${publish_cmd[*]}"
timeout 4m "${publish_cmd[@]}" > "$work/publish.log" 2>&1 || { cat "$work/publish.log"; fail "publish failed"; }

# The runtime stage's COPYs: the build stage's /app is $app; context paths copied under /app.
while read -r -a words; do
  [ "${words[0]:-}" = COPY ] || continue
  if [[ "${words[1]}" == --from=build ]]; then
    [ "${words[2]} ${words[3]}" = "/app /app" ] || fail "unexpected ${words[*]}"
    continue
  fi
  destination=${words[${#words[@]}-1]}
  [[ "$destination" == /app/* ]] || fail "runtime COPY outside /app: ${words[*]}"
  mkdir -p "$app/${destination#/app/}"
  for source in "${words[@]:1:${#words[@]}-2}"; do cp -r "$root/$source/." "$app/${destination#/app/}"; done
done < <(printf '%s' "$final_stage")

# Every /app path the ENTRYPOINT and HEALTHCHECK name exists in that layout.
entrypoint=$(json_array '^ENTRYPOINT ')
healthcheck=$(json_array '^HEALTHCHECK .*CMD ')
for path in $(printf '%s\n%s\n' "$entrypoint" "$healthcheck" | grep -oE '/app/[A-Za-z0-9._/-]+' | sort -u); do
  [ -e "$app/${path#/app/}" ] || fail "$path (named by ENTRYPOINT or HEALTHCHECK) is not in the published layout"
done

# 3. The image's environment, then the data directory and address changed for this machine.
while IFS= read -r line; do
  assignment=${line#ENV }
  export "${assignment%%=*}=${assignment#*=}"
done < <(printf '%s' "$final_stage" | grep -E '^ENV [A-Za-z_][A-Za-z0-9_]*=')
# The image links jemalloc at /usr/local/lib (a RUN step this script cannot run): here, this
# machine's copy (./test.sh's dependencies do not include it; ./dev.sh installs it), else none.
if [ -n "${LD_PRELOAD:-}" ] && [ ! -e "$LD_PRELOAD" ]; then
  host_jemalloc=""  # found with builtins only: any program started now would be given the missing preload
  for candidate in /usr/lib/*-linux-gnu/libjemalloc.so.2; do
    if [ -e "$candidate" ]; then host_jemalloc=$candidate; break; fi
  done
  if [ "${LD_PRELOAD##*/}" = libjemalloc.so.2 ] && [ -n "$host_jemalloc" ]; then
    export LD_PRELOAD="$host_jemalloc"
  else
    echo "docker-check: $LD_PRELOAD is not on this machine; the server runs without it"
    unset LD_PRELOAD
  fi
fi
port=$(( 20000 + RANDOM % 12000 ))  # below the ephemeral range (32768 and up), which clients and port-0 servers draw from
export KMS_DATA_DIR="$work/data" ASPNETCORE_URLS="https://127.0.0.1:$port"
mkdir -m 0700 "$KMS_DATA_DIR"
in_layout() { sed "s#/app/#$app/#g"; }
mapfile -t entrypoint_cmd < <(printf '%s\n' "$entrypoint" | in_layout)
mapfile -t healthcheck_cmd < <(printf '%s\n' "$healthcheck" | in_layout)

(cd "$app" && exec "${entrypoint_cmd[@]}") > "$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 120); do
  grep -q "Kms listening" "$work/server.log" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; fail "the server exited"; }
  sleep 1
done
grep -q "Kms listening" "$work/server.log" || { cat "$work/server.log"; fail "the server did not start within 120 s"; }
grep -q "127.0.0.1:$port" "$work/server.log" || { cat "$work/server.log"; fail "the server is not on 127.0.0.1:$port"; }

(cd "$app" && timeout 30s "${healthcheck_cmd[@]}") > "$work/health.out" 2>&1 || { cat "$work/health.out" "$work/server.log"; fail "HEALTHCHECK failed on a serving server"; }
grep -q "Serving" "$work/health.out" || { cat "$work/health.out"; fail "HEALTHCHECK did not report SERVING"; }
echo "docker-check: HEALTHCHECK: $(cat "$work/health.out")"

kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
if (cd "$app" && timeout 30s "${healthcheck_cmd[@]}") > "$work/health-down.out" 2>&1; then
  cat "$work/health-down.out"; fail "HEALTHCHECK passed with the server stopped"
fi
echo "docker-check: COPY sources, publish, ENTRYPOINT on 127.0.0.1:$port, HEALTHCHECK serving and failing once stopped: ok"
