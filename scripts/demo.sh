#!/usr/bin/env bash
# The offline demo: installs what is missing, builds the binary and the two fixtures it runs
# (not the test suite), generates a small synthetic Qwen3 repo, serves it from the project's Hub
# imitation on 127.0.0.1, runs `modelcache run --watch-dir` on two example manifests (one cached
# as-is, one sharded for 2 GPUs), waits for Ready, and shows `modelcache get` and the artifacts'
# files. Nothing leaves this machine.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
build="${MODELCACHE_BUILD_DIR:-$here/build}"
"$here/scripts/install-deps.sh"
echo "== building in $build: modelcache and the demo's two fixtures (not the test suite)"
cmake -S "$here" -B "$build" >/dev/null
cmake --build "$build" -j"$(nproc)" --target modelcache mc-fake-hub mc-make-checkpoint
bin="$build/cli/modelcache"
hubbin="$build/tests/fixtures/hub/mc-fake-hub"
gen="$build/tests/fixtures/checkpoint/mc-make-checkpoint"

work="$(mktemp -d /tmp/modelcache-demo.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "== generating a synthetic Qwen3 checkpoint in $work/repos"
"$gen" "$work/repos/demo/qwen3-tiny" --arch qwen3 --size tiny >/dev/null
cat > "$work/hub.json" <<JSON
{"repos": [{"type": "model", "id": "demo/Qwen3-Tiny", "refs": {"main": "$work/repos/demo/qwen3-tiny"}}]}
JSON
"$hubbin" --config "$work/hub.json" > "$work/hub.out" 2> "$work/hub.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/hub.out" ] && break; sleep 0.05; done
hub_url="$(sed -n 's/^hub=\([^ ]*\) .*/\1/p' "$work/hub.out")"
echo "== Hub imitation at $hub_url"

mkdir -p "$work/manifests"
cat > "$work/manifests/qwen3-tiny.yaml" <<'YAML'
apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata:
  name: qwen3-tiny
spec:
  source:
    repo: demo/Qwen3-Tiny
    revision: main
---
apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata:
  name: qwen3-tiny-tp2
spec:
  source:
    repo: demo/Qwen3-Tiny
  artifactName: qwen3-tiny-tp2   # the default, from the repo name, is taken by the first one
  accelerator: "L4:2"
  shard:
    engine: vllm
YAML
echo "== manifests"
cat "$work/manifests/qwen3-tiny.yaml"
"$bin" validate "$work/manifests/qwen3-tiny.yaml"

# /healthz, /readyz and /metrics on a free loopback port (the default 127.0.0.1:8081 may be taken).
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
echo "== starting: modelcache run --watch-dir $work/manifests --store $work/store --listen 127.0.0.1:$port"
"$bin" run --watch-dir "$work/manifests" --store "$work/store" --hf-endpoint "$hub_url" \
  --listen "127.0.0.1:$port" 2> "$work/daemon.log" &
pids+=($!)

ready=0
for _ in $(seq 600); do
  out="$("$bin" get --state-dir "$work/store/state" 2>/dev/null || true)"
  if [ "$(grep -c ' Ready ' <<<"$out")" -eq 2 ]; then ready=1; break; fi
  if grep -q ' Failed ' <<<"$out"; then break; fi
  sleep 0.1
done
echo "== modelcache get -o wide"
"$bin" get -o wide --state-dir "$work/store/state"
if [ "$ready" -ne 1 ]; then
  echo "demo: resources did not become Ready; daemon log:" >&2
  cat "$work/daemon.log" >&2
  exit 1
fi
for name in qwen3-tiny qwen3-tiny-tp2; do
  echo "== files of artifact $name ($work/store/artifacts/$name/current)"
  (cd "$work/store/artifacts/$name/current/" && ls -l)
done
echo "== the HuggingFace cache view (HF_HUB_CACHE=$work/store/hub HF_HUB_OFFLINE=1)"
find "$work/store/hub" -maxdepth 4 | sed "s|$work/store/||" | sort | head -20
echo "== http://127.0.0.1:$port/readyz and a few lines of /metrics"
curl -fsS "http://127.0.0.1:$port/readyz"; echo
curl -fsS "http://127.0.0.1:$port/metrics" |
  grep -E '^modelcache_(reconciles_total|download_bytes_total|artifacts|store_used_bytes)' || true
echo "== daemon log"
cat "$work/daemon.log"
echo "demo done; everything is under $work"
