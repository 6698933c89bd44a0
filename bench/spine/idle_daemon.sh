#!/usr/bin/env bash
# Measures the spine's steady state: N ModelCache manifests of one cached model in a watched
# directory. Prints a table: time from start to all Ready, time from writing one more manifest
# for the cached model to Ready, and the daemon's CPU and RSS while idle afterwards.
#
#   bench/spine/idle_daemon.sh [BUILD_DIR] [N=1000] [IDLE_SECONDS=30]
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
build="${1:-$here/build}"
n="${2:-1000}"
idle="${3:-30}"
bin="$build/cli/modelcache"
hubbin="$build/tests/fixtures/hub/mc-fake-hub"
work="$(mktemp -d /tmp/modelcache-bench.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
now_ms() { date +%s%3N; }
ready_count() { "$bin" get -A --state-dir "$work/store/state" 2>/dev/null | grep -c ' Ready ' || true; }

mkdir -p "$work/repo" "$work/manifests"
printf '{"architectures":["Qwen3ForCausalLM"]}' > "$work/repo/config.json"
head -c $((8 << 20)) /dev/urandom > "$work/repo/model.safetensors"
cat > "$work/hub.json" <<JSON
{"repos": [{"type": "model", "id": "bench/model", "refs": {"main": "$work/repo"}}]}
JSON
"$hubbin" --config "$work/hub.json" > "$work/hub.out" 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/hub.out" ] && break; sleep 0.05; done
hub_url="$(sed -n 's/^hub=\([^ ]*\) .*/\1/p' "$work/hub.out")"

for i in $(seq 1 "$n"); do
  printf 'apiVersion: modelcache.dev/v1alpha1\nkind: ModelCache\nmetadata:\n  name: m%d\nspec:\n  source:\n    repo: bench/model\n' "$i" \
    > "$work/manifests/m$i.yaml"
done

start=$(now_ms)
"$bin" run --watch-dir "$work/manifests" --store "$work/store" --hf-endpoint "$hub_url" \
  --workers 4 --listen off 2> "$work/daemon.log" &
daemon=$!
pids+=($daemon)
until [ "$(ready_count)" -ge "$n" ]; do sleep 0.2; done
all_ready=$(( $(now_ms) - start ))

start=$(now_ms)
printf 'apiVersion: modelcache.dev/v1alpha1\nkind: ModelCache\nmetadata:\n  name: extra\nspec:\n  source:\n    repo: bench/model\n' \
  > "$work/manifests/extra.yaml"
until "$bin" get extra --state-dir "$work/store/state" 2>/dev/null | grep -q ' Ready '; do sleep 0.01; done
cached_ready=$(( $(now_ms) - start ))

sleep 2
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$daemon/stat"; }
c0=$(cpu)
sleep "$idle"
c1=$(cpu)
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$daemon/status")
threads=$(awk '/Threads/ {print $2}' "/proc/$daemon/status")
idle_pct=$(awk -v a="$c0" -v b="$c1" -v t="$ticks" -v s="$idle" 'BEGIN {printf "%.2f", 100 * (b - a) / t / s}')

printf '\n%-48s %s\n' "measure" "value"
printf '%-48s %s\n' "manifests" "$n"
printf '%-48s %s ms\n' "start -> all Ready (model cached on first one)" "$all_ready"
printf '%-48s %s ms\n' "new manifest for the cached model -> Ready" "$cached_ready"
printf '%-48s %s %% of one core over %s s\n' "idle CPU" "$idle_pct" "$idle"
printf '%-48s %s MiB\n' "idle RSS" "$((rss_kib / 1024))"
printf '%-48s %s\n' "threads" "$threads"
