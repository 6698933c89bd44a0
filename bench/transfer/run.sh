#!/usr/bin/env bash
# Benchmark of issue 6: downloads a repo of large files (default 2 x 2 GiB of random bytes) and a
# repo of many small ones (default 2000 x 64 KiB) from the Hub imitation (mc-fake-hub, which
# redirects LFS files to its own CDN port) with modelcache's TransferEngine (mc-transfer-bench),
# `aria2c -x16 -s16` and `curl` one file at a time, and prints a table: tool, median wall time of
# RUNS runs, MB/s, ratio to modelcache, peak RSS. It also measures the machine: `dd` with fsync of
# the large repo's size, and a loopback read of one large file from nginx (nginx-light, run
# unprivileged on 127.0.0.1) into /dev/null.
#
# The fixture's CDN cannot be pointed at nginx, so every tool downloads from the fixture itself
# (same server for all); nginx only gives the loopback reference.
#
# Usage: bench/transfer/run.sh BUILD_DIR   (env: BIG_MIB=2048 BIG_FILES=2 SMALL_FILES=2000
#                                           SMALL_KIB=64 RUNS=3 WORK=/tmp/...)
set -euo pipefail

BUILD=${1:?usage: run.sh BUILD_DIR}
BIG_MIB=${BIG_MIB:-2048}
BIG_FILES=${BIG_FILES:-2}
SMALL_FILES=${SMALL_FILES:-2000}
SMALL_KIB=${SMALL_KIB:-64}
RUNS=${RUNS:-3}
WORK=${WORK:-$(mktemp -d /tmp/mc-transfer-bench.XXXXXX)}
HUB_BIN=$BUILD/tests/fixtures/hub/mc-fake-hub
ENGINE_BIN=$BUILD/bench/transfer/mc-transfer-bench

if ! command -v aria2c >/dev/null; then
  apt-get install -y aria2 >/dev/null || echo "aria2c unavailable; skipping it" >&2
fi

mkdir -p "$WORK/src/large" "$WORK/src/small" "$WORK/out"
chmod 755 "$WORK"  # nginx's worker (nobody, when run as root) reads $WORK/src
for i in $(seq 0 $((BIG_FILES - 1))); do
  f=$WORK/src/large/model-$i.safetensors
  [ -s "$f" ] || head -c $((BIG_MIB << 20)) /dev/urandom >"$f"
done
if [ ! -s "$WORK/src/small/f$((SMALL_FILES - 1)).txt" ]; then
  for i in $(seq 0 $((SMALL_FILES - 1))); do
    head -c $((SMALL_KIB << 10)) /dev/urandom >"$WORK/src/small/f$i.txt"
  done
fi
cat >"$WORK/hub.json" <<JSON
{"repos": [
  {"type": "model", "id": "bench/large", "refs": {"main": "$WORK/src/large"}},
  {"type": "model", "id": "bench/small", "refs": {"main": "$WORK/src/small"}}
], "tree_page_size": 1000}
JSON

"$HUB_BIN" --config "$WORK/hub.json" >"$WORK/hub.out" 2>"$WORK/hub.err" &
HUB_PID=$!
NGINX_PID=""
cleanup() {
  kill "$HUB_PID" 2>/dev/null || true
  if [ -n "$NGINX_PID" ]; then kill "$NGINX_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT
for _ in $(seq 1 600); do grep -q '^hub=' "$WORK/hub.out" 2>/dev/null && break; sleep 0.1; done
HUB=$(sed -n 's/^hub=\([^ ]*\) .*/\1/p' "$WORK/hub.out")
[ -n "$HUB" ] || { echo "mc-fake-hub did not start" >&2; cat "$WORK/hub.err" >&2; exit 1; }

# "path<TAB>url" for every file of a repo, from the tree API.
urls() {
  local repo=$1
  local commit
  commit=$(curl -sf "$HUB/api/models/$repo/revision/main" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sha"])')
  curl -sf "$HUB/api/models/$repo/tree/$commit?recursive=true" |
    python3 -c 'import json,sys; [print(e["path"]+"\t'"$HUB/$repo/resolve/$commit/"'"+e["path"]) for e in json.load(sys.stdin) if e["type"]=="file"]'
}

run_tool() {  # tool repo -> "<seconds> <rss>" of one run
  local tool=$1 repo=$2
  rm -rf "$WORK/out" && mkdir -p "$WORK/out"
  sync
  case $tool in
    modelcache)
      /usr/bin/time -f '%e %M' -o "$WORK/time.txt" "$ENGINE_BIN" --endpoint "$HUB" \
        --repo "$repo" --out "$WORK/out" >/dev/null
      ;;
    aria2c)
      urls "$repo" | awk -F'\t' '{print $2"\n  out="$1}' >"$WORK/aria2.list"
      /usr/bin/time -f '%e %M' -o "$WORK/time.txt" aria2c -q -x16 -s16 -j16 \
        --file-allocation=falloc -d "$WORK/out" -i "$WORK/aria2.list"
      ;;
    curl)
      urls "$repo" >"$WORK/curl.list"
      /usr/bin/time -f '%e %M' -o "$WORK/time.txt" bash -c '
        while IFS=$'"'"'\t'"'"' read -r path url; do
          mkdir -p "$(dirname "$0/$path")"; curl -sfL -o "$0/$path" "$url" || exit 1
        done <"$1"' "$WORK/out" "$WORK/curl.list"
      ;;
  esac
  sync
  cat "$WORK/time.txt"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A SECONDS_OF RSS_OF
for repo in bench/large bench/small; do
  bytes=$(du -sb "$WORK/src/${repo#bench/}" | cut -f1)
  for tool in modelcache aria2c curl; do
    command -v "$tool" >/dev/null || [ "$tool" = modelcache ] || continue
    : >"$WORK/runs.txt"
    rss=0
    for _ in $(seq 1 "$RUNS"); do
      read -r s r < <(run_tool "$tool" "$repo")
      echo "$s" >>"$WORK/runs.txt"
      [ "$r" -gt "$rss" ] && rss=$r
    done
    SECONDS_OF[$repo/$tool]=$(median <"$WORK/runs.txt")
    RSS_OF[$repo/$tool]=$rss
  done
  printf '\n%s (%s bytes)\n' "$repo" "$bytes"
  printf '%-12s %10s %10s %8s %12s\n' tool seconds MB/s ratio peak_RSS_MiB
  base=${SECONDS_OF[$repo/modelcache]}
  for tool in modelcache aria2c curl; do
    s=${SECONDS_OF[$repo/$tool]:-}
    [ -n "$s" ] || continue
    awk -v t="$tool" -v s="$s" -v b="$bytes" -v base="$base" -v rss="${RSS_OF[$repo/$tool]}" \
      'BEGIN {printf "%-12s %10.2f %10.1f %8.2f %12.1f\n", t, s, b/1e6/s, s/base, rss/1024}'
  done
done

# Machine limits: fsync'd write of the large repo's size, loopback read from nginx.
large_bytes=$(du -sb "$WORK/src/large" | cut -f1)
dd_s=$( { /usr/bin/time -f '%e' dd if=/dev/zero of="$WORK/out/dd.bin" bs=4M \
  count=$((large_bytes >> 22)) conv=fsync status=none; } 2>&1 | tail -1)
rm -f "$WORK/out/dd.bin"
printf '\ndd write+fsync: %.1f MB/s\n' "$(awk -v b="$large_bytes" -v s="$dd_s" 'BEGIN{print b/1e6/s}')"
if command -v nginx >/dev/null; then
  mkdir -p "$WORK/nginx/logs"
  cat >"$WORK/nginx/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/logs/error.log;
events {}
http { access_log off; sendfile on; client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx; uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  server { listen 127.0.0.1:0; root $WORK/src; } }
CONF
  # nginx cannot listen on port 0; pick a free port with python.
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  sed -i "s/127.0.0.1:0/127.0.0.1:$port/" "$WORK/nginx/nginx.conf"
  nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
  NGINX_PID=$!
  sleep 0.5
  first=$(ls "$WORK/src/large" | head -1)
  curl -s -o /dev/null "http://127.0.0.1:$port/large/$first"  # into the page cache
  read -r rate < <(curl -sf -o /dev/null -w '%{speed_download}\n' "http://127.0.0.1:$port/large/$first")
  printf 'nginx loopback read (curl to /dev/null): %.1f MB/s\n' "$(awk -v r="$rate" 'BEGIN{print r/1e6}')"
fi
