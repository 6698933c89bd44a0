#!/usr/bin/env bash
# What a kill -9 costs a download: the bytes the CDN sends, over the repo's bytes, when
# `modelcache prefetch` is killed KILLS times while it downloads and then runs to the end.
# Serves a repo of large files (default 2 x 300 MB of random bytes) from the Hub imitation,
# which redirects them to nginx on 127.0.0.1 (the CDN), each connection capped at RATE by nginx's
# limit_rate. nginx logs every request's body bytes (an interrupted one too, when its connection
# breaks); the run is killed each time another 1/(KILLS+1) of the repo's bytes has been sent in
# all, so the kills fall through the whole download. Prints one row per flag set: kills, bytes
# sent, repo bytes, sent / repo bytes (1.00 = nothing fetched twice), wall seconds, and checks the
# blobs' sha256 against the served files.
#
# Usage: bench/transfer/resume_kill.sh BUILD_DIR
#   env: FILE_MB=300 FILES=2 RATE=20m KILLS=3 RUNS=1 WORK=/tmp/...
#        FLAG_SETS="--max-connections 4;"  (';'-separated prefetch flag sets; empty = defaults)
set -euo pipefail

BUILD=$(cd "${1:?usage: resume_kill.sh BUILD_DIR}" && pwd)
FILE_MB=${FILE_MB:-300}
FILES=${FILES:-2}
RATE=${RATE:-20m}
KILLS=${KILLS:-3}
RUNS=${RUNS:-1}
FLAG_SETS=${FLAG_SETS:-"--max-connections 4;"}
WORK=${WORK:-$(mktemp -d /tmp/mc-resume-bench.XXXXXX)}
HUB_BIN=$BUILD/tests/fixtures/hub/mc-fake-hub
MC_BIN=$BUILD/cli/modelcache
command -v nginx >/dev/null || { echo "nginx is required (apt-get install nginx-light)" >&2; exit 1; }

mkdir -p "$WORK/src/large"
for i in $(seq 0 $((FILES - 1))); do
  f=$WORK/src/large/model-$i.safetensors
  [ "$(stat -c %s "$f" 2>/dev/null || echo 0)" = $((FILE_MB * 1000000)) ] ||
    head -c $((FILE_MB * 1000000)) /dev/urandom >"$f"
done
repo_bytes=$(find "$WORK/src/large" -type f -printf '%s\n' | awk '{s += $1} END {printf "%d", s}')

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/transfer/servers.sh
. "$HERE/servers.sh"
MC_PID=""
trap 'if [ -n "$MC_PID" ]; then kill -9 "$MC_PID" 2>/dev/null || true; fi; stop_servers' EXIT
start_cdn "log_format sent '\$body_bytes_sent'; access_log $WORK/nginx/logs/sent.log sent; \
limit_rate $RATE;"
start_hub '[{"type": "model", "id": "bench/large", "refs": {"main": "'"$WORK"'/src/large"}}]'

sent() { awk '{s += $1} END {printf "%d", s}' "$WORK/nginx/logs/sent.log"; }

# One measured run with `flags`: prints "<bytes sent> <kills> <seconds>".
run_once() {
  local flags=$1 kills=0 start end
  rm -rf "$WORK/out"
  : >"$WORK/nginx/logs/sent.log"
  kill -USR1 "$NGINX_PID"  # reopen the log
  sleep 0.2
  start=$(date +%s.%N)
  while true; do
    # shellcheck disable=SC2086
    "$MC_BIN" prefetch bench/large --store "$WORK/out" --hf-endpoint "$HUB" --no-progress \
      $flags >/dev/null 2>>"$WORK/prefetch.err" &
    MC_PID=$!
    if [ "$kills" -lt "$KILLS" ]; then
      local target=$((repo_bytes * (kills + 1) / (KILLS + 1)))
      while kill -0 "$MC_PID" 2>/dev/null && [ "$(sent)" -lt "$target" ]; do sleep 0.05; done
      if kill -9 "$MC_PID" 2>/dev/null; then
        wait "$MC_PID" 2>/dev/null || true
        kills=$((kills + 1))
        continue
      fi
    fi
    wait "$MC_PID" || { echo "prefetch failed; see $WORK/prefetch.err" >&2; exit 1; }
    MC_PID=""
    break
  done
  end=$(date +%s.%N)
  sleep 0.5  # nginx logs the last requests
  for f in "$WORK"/src/large/*; do
    want=$(sha256sum "$f" | cut -d' ' -f1)
    [ -e "$(find "$WORK/out/hub" -path "*/blobs/$want" | head -1)" ] ||
      { echo "no verified blob for $f" >&2; exit 1; }
  done
  echo "$(sent) $kills $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}')"
}

echo "machine: $(nproc) cpus, $(uname -sr), load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '\nkill -9 during a download of %s bytes (%s files), nginx limit_rate %s per connection\n' \
  "$repo_bytes" "$FILES" "$RATE"
printf '| %-28s | %5s | %13s | %13s | %11s | %7s |\n' flags kills "bytes sent" "repo bytes" \
  "sent / repo" seconds
printf '|---|---:|---:|---:|---:|---:|\n'
IFS=';' read -r -a sets <<<"$FLAG_SETS"
[ "${FLAG_SETS: -1}" = ";" ] && sets+=("")
for flags in "${sets[@]}"; do
  for _ in $(seq 1 "$RUNS"); do
    read -r bytes kills secs < <(run_once "$flags")
    awk -v f="${flags:-(defaults)}" -v k="$kills" -v s="$bytes" -v r="$repo_bytes" -v t="$secs" \
      'BEGIN {printf "| %-28s | %5d | %13d | %13d | %11.2f | %7.1f |\n", f, k, s, r, s / r, t}'
  done
done
