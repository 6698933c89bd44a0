#!/usr/bin/env bash
# Benchmark of issue 6. Serves a repo of large files (default 2 x 2 GiB of random bytes) and a repo
# of many small ones (default 2000 x 64 KiB) from the Hub imitation (mc-fake-hub), which redirects
# the LFS files (*.safetensors) to nginx on 127.0.0.1 as the real Hub redirects to its CDN, and
# downloads each repo, in the same run, with:
#   modelcache   `modelcache prefetch` (the TransferEngine; verifies, fsyncs, publishes)
#   aria2c       `aria2c -x16 -s16 -j16` over the /resolve URLs (follows the redirects)
#   aria2c+sync  the same followed by `sync`, i.e. until its bytes are on disk as modelcache's are
#   curl         one file at a time, `curl -L`
#   hf-hub-js    @huggingface/hub's snapshotDownload (npm, installed into bench/transfer/node)
# and measures the machine in the same run: `dd` write with fsync of the large repo's size (through
# the page cache, and with oflag=direct as modelcache writes large files), and an
# in-memory loopback read (curl from nginx to /dev/null, file in the page cache).
# Prints per repo: tool, median wall time of RUNS runs, MB/s, ratio (tool time / modelcache time,
# > 1 = slower than modelcache), peak RSS; then modelcache's share of both dd rates.
#
# Usage: bench/transfer/run.sh BUILD_DIR
#   env: BIG_MIB=2048 BIG_FILES=2 SMALL_FILES=2000 SMALL_KIB=64 RUNS=3 WORK=/tmp/...
#        TOOLS="modelcache aria2c aria2c+sync curl hf-hub-js"  MC_FLAGS="" (extra prefetch flags)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=$(cd "${1:?usage: run.sh BUILD_DIR}" && pwd)
BIG_MIB=${BIG_MIB:-2048}
BIG_FILES=${BIG_FILES:-2}
SMALL_FILES=${SMALL_FILES:-2000}
SMALL_KIB=${SMALL_KIB:-64}
RUNS=${RUNS:-3}
TOOLS=${TOOLS:-modelcache aria2c aria2c+sync curl hf-hub-js}
MC_FLAGS=${MC_FLAGS:-}
WORK=${WORK:-$(mktemp -d /tmp/mc-transfer-bench.XXXXXX)}
HUB_BIN=$BUILD/tests/fixtures/hub/mc-fake-hub
MC_BIN=$BUILD/cli/modelcache

# The bench installs its own tools.
if ! command -v aria2c >/dev/null; then
  apt-get install -y aria2 >/dev/null 2>&1 || echo "aria2c unavailable; skipping it" >&2
fi
if ! command -v nginx >/dev/null; then
  apt-get install -y nginx-light >/dev/null 2>&1 || { echo "nginx is required" >&2; exit 1; }
fi
if [[ " $TOOLS " == *" hf-hub-js "* && ! -d $HERE/node/node_modules/@huggingface/hub ]]; then
  if command -v npm >/dev/null; then
    npm install --no-audit --no-fund --prefix "$HERE/node" @huggingface/hub >/dev/null 2>&1 ||
      echo "npm install @huggingface/hub failed; skipping hf-hub-js" >&2
  else
    echo "npm unavailable; skipping hf-hub-js" >&2
  fi
fi

mkdir -p "$WORK/src/large" "$WORK/src/small" "$WORK/out"
chmod 755 "$WORK"
for i in $(seq 0 $((BIG_FILES - 1))); do
  f=$WORK/src/large/model-$i.safetensors
  [ "$(stat -c %s "$f" 2>/dev/null || echo 0)" = $((BIG_MIB << 20)) ] ||
    head -c $((BIG_MIB << 20)) /dev/urandom >"$f"
done
if [ ! -s "$WORK/src/small/f$((SMALL_FILES - 1)).txt" ]; then
  for i in $(seq 0 $((SMALL_FILES - 1))); do
    head -c $((SMALL_KIB << 10)) /dev/urandom >"$WORK/src/small/f$i.txt"
  done
fi

# shellcheck source=bench/transfer/servers.sh
. "$HERE/servers.sh"
trap stop_servers EXIT
start_cdn "access_log off; tcp_nopush on;"
start_hub '[
  {"type": "model", "id": "bench/large", "refs": {"main": "'"$WORK"'/src/large"}},
  {"type": "model", "id": "bench/small", "refs": {"main": "'"$WORK"'/src/small"}}]'

# "path<TAB>url" for every file of a repo, from the tree API.
urls() {
  local repo=$1 commit
  commit=$(curl -sf "$HUB/api/models/$repo/revision/main" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sha"])')
  curl -sf "$HUB/api/models/$repo/tree/$commit?recursive=true" |
    python3 -c 'import json,sys; [print(e["path"]+"\t'"$HUB/$repo/resolve/$commit/"'"+e["path"]) for e in json.load(sys.stdin) if e["type"]=="file"]'
}

run_tool() {  # tool repo -> "<seconds> <peak rss KiB>" of one run
  local tool=$1 repo=$2
  rm -rf "$WORK/out" && mkdir -p "$WORK/out"
  sync
  case $tool in
    modelcache)
      # shellcheck disable=SC2086
      /usr/bin/time -f '%e %M' -o "$WORK/time.txt" "$MC_BIN" prefetch "$repo" --store "$WORK/out" \
        --hf-endpoint "$HUB" --no-progress $MC_FLAGS >/dev/null 2>"$WORK/modelcache.${repo##*/}.err"
      ;;
    aria2c | aria2c+sync)
      urls "$repo" | awk -F'\t' '{print $2"\n  out="$1}' >"$WORK/aria2.list"
      local then=""
      [ "$tool" = aria2c+sync ] && then="sync"
      /usr/bin/time -f '%e %M' -o "$WORK/time.txt" bash -c 'aria2c -q -x16 -s16 -j16 \
        --file-allocation=falloc -d "$0" -i "$1" && $2' "$WORK/out" "$WORK/aria2.list" "${then:-true}"
      ;;
    curl)
      urls "$repo" >"$WORK/curl.list"
      /usr/bin/time -f '%e %M' -o "$WORK/time.txt" bash -c '
        while IFS=$'"'"'\t'"'"' read -r path url; do
          mkdir -p "$(dirname "$0/$path")"; curl -sfL -o "$0/$path" "$url" || exit 1
        done <"$1"' "$WORK/out" "$WORK/curl.list"
      ;;
    hf-hub-js)
      # An ES module resolves packages from its own directory, hence the copy next to node_modules.
      cp "$HERE/hf_hub_download.mjs" "$HERE/node/"
      /usr/bin/time -f '%e %M' -o "$WORK/time.txt" \
        node "$HERE/node/hf_hub_download.mjs" "$HUB" "$repo" "$WORK/out" >/dev/null
      ;;
  esac
  sync
  cat "$WORK/time.txt"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
available() {
  case $1 in
    modelcache) true ;;
    aria2c | aria2c+sync) command -v aria2c >/dev/null ;;
    curl) command -v curl >/dev/null ;;
    hf-hub-js) [ -d "$HERE/node/node_modules/@huggingface/hub" ] && command -v node >/dev/null ;;
  esac
}

# Machine limits first (the same disk and loopback the tools use).
large_bytes=$(du -sb "$WORK/src/large" | cut -f1)
sync
dd_s=$( { /usr/bin/time -f '%e' dd if=/dev/zero of="$WORK/out/dd.bin" bs=4M \
  count=$((large_bytes >> 22)) conv=fsync status=none; } 2>&1 | tail -1)
rm -f "$WORK/out/dd.bin"
DD_MBPS=$(awk -v b="$large_bytes" -v s="$dd_s" 'BEGIN{printf "%.1f", b/1e6/s}')
# The same bypassing the page cache, as modelcache writes large files.
dd_direct_s=$( { /usr/bin/time -f '%e' dd if=/dev/zero of="$WORK/out/dd.bin" bs=2M \
  count=$((large_bytes >> 21)) oflag=direct conv=fsync status=none; } 2>&1 | tail -1)
rm -f "$WORK/out/dd.bin"
DD_DIRECT_MBPS=$(awk -v b="$large_bytes" -v s="$dd_direct_s" 'BEGIN{printf "%.1f", b/1e6/s}')
first=$(ls "$WORK/src/large" | head -1)
curl -s -o /dev/null "$NGINX/large/$first"  # into the page cache
LOOP_MBPS=$(curl -sf -o /dev/null -w '%{speed_download}\n' "$NGINX/large/$first" | awk '{printf "%.1f", $1/1e6}')

echo "machine: $(nproc) cpus ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), \
$(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(uname -sr), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "dd write+fsync ($large_bytes bytes): $DD_MBPS MB/s; with oflag=direct: $DD_DIRECT_MBPS MB/s; \
nginx loopback read to /dev/null: $LOOP_MBPS MB/s"

declare -A SECONDS_OF RSS_OF
for repo in bench/large bench/small; do
  bytes=$(du -sb "$WORK/src/${repo#bench/}" | cut -f1)
  for tool in $TOOLS; do
    available "$tool" || continue
    : >"$WORK/runs.txt"
    rss=0
    for _ in $(seq 1 "$RUNS"); do
      if ! read -r s r < <(run_tool "$tool" "$repo"); then
        echo "$tool failed on $repo" >&2
        continue 2
      fi
      echo "$s" >>"$WORK/runs.txt"
      [ "$r" -gt "$rss" ] && rss=$r
    done
    SECONDS_OF[$repo/$tool]=$(median <"$WORK/runs.txt")
    RSS_OF[$repo/$tool]=$rss
    echo "  $repo $tool: $(tr '\n' ' ' <"$WORK/runs.txt")s" >&2
  done
  printf '\n%s (%s bytes, median of %s runs)\n' "$repo" "$bytes" "$RUNS"
  printf '| %-12s | %8s | %8s | %13s | %12s |\n' tool seconds MB/s "x modelcache" "peak RSS MiB"
  printf '|---|---:|---:|---:|---:|\n'
  base=${SECONDS_OF[$repo/modelcache]}
  for tool in $TOOLS; do
    s=${SECONDS_OF[$repo/$tool]:-}
    [ -n "$s" ] || continue
    awk -v t="$tool" -v s="$s" -v b="$bytes" -v base="$base" -v rss="${RSS_OF[$repo/$tool]}" \
      'BEGIN {printf "| %-12s | %8.2f | %8.1f | %13.2f | %12.1f |\n", t, s, b/1e6/s, s/base, rss/1024}'
  done
  if [ "$repo" = bench/large ]; then
    awk -v b="$bytes" -v s="$base" -v dd="$DD_MBPS" -v direct="$DD_DIRECT_MBPS" \
      'BEGIN {printf "modelcache: %.1f MB/s = %.0f%% of the dd+fsync rate, %.0f%% of dd direct\n",
              b/1e6/s, 100*b/1e6/s/dd, 100*b/1e6/s/direct}'
  fi
done
