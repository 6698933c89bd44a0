#!/usr/bin/env bash
# Benchmark of issue 19 (sharding while downloading). Serves a Llama-2-7B-shaped checkpoint
# (mc-make-checkpoint --arch llama --size full, LAYERS decoder layers; 2 layers = 1.35 GB of bf16
# in FILES files) from the Hub imitation, which redirects the weights to nginx on 127.0.0.1 (the
# CDN) with every connection capped at RATE by nginx's limit_rate, like a real link. Then, RUNS
# times each, into a fresh store:
#   unsharded      `modelcache prefetch`
#   sharded        `modelcache prefetch --tp TP` (rank files written while the weights arrive)
#   sharded-after  `modelcache prefetch --tp TP --shard-after-download` (the sharder after the
#                  download, as before issue 19)
# Prints per mode the median wall time, its ratio to unsharded, the median peak RSS, and the
# disk bytes written and read per byte of model (getrusage's block I/O, /usr/bin/time %O and %I:
# pages the process dirtied and reads that missed the page cache).
#
# With STORE=s3 every prefetch goes to a bucket on radosgw (tests/fixtures/radosgw/start-radosgw.sh,
# memstore, started and stopped here; INSTALL=1 installs Ceph's packages): `--store
# s3://bench/run-K-MODE`, the local store under WORK as `--cache-dir`. Unsharded artifacts then
# stream from the Hub to the bucket; sharded ones are sharded locally while they download and
# their rank files go to the bucket while they are written (docs/sharding.md, "S3 targets"). The
# bucket is emptied between runs. radosgw runs on the same cores.
#
# Usage: bench/shard/stream_bench.sh BUILD_DIR
#   env: LAYERS=2 FILES=2 TP=4 RATE=5m RUNS=3 MODES="unsharded sharded sharded-after" WORK=/tmp/...
#        MC_FLAGS="" (extra prefetch flags) STORE=local|s3
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=$(cd "${1:?usage: stream_bench.sh BUILD_DIR}" && pwd)
LAYERS=${LAYERS:-2}
FILES=${FILES:-2}
TP=${TP:-4}
RATE=${RATE:-5m}
RUNS=${RUNS:-3}
MODES=${MODES:-unsharded sharded sharded-after}
MC_FLAGS=${MC_FLAGS:-}
WORK=${WORK:-$(mktemp -d /tmp/mc-stream-shard-bench.XXXXXX)}
HUB_BIN=$BUILD/tests/fixtures/hub/mc-fake-hub
MC_BIN=$BUILD/cli/modelcache
GEN_BIN=$BUILD/tests/fixtures/checkpoint/mc-make-checkpoint
command -v nginx >/dev/null || { echo "nginx is required (apt-get install nginx-light)" >&2; exit 1; }

SRC=$WORK/src/llama
if [ ! -s "$SRC/config.json" ]; then
  "$GEN_BIN" "$SRC" --arch llama --size full --layers "$LAYERS" --files "$FILES" >/dev/null
fi
chmod -R a+rX "$WORK"
model_bytes=$(find "$SRC" -name '*.safetensors' -printf '%s\n' | awk '{s += $1} END {printf "%.0f", s}')

# shellcheck source=bench/transfer/servers.sh
. "$HERE/../transfer/servers.sh"
STORE=${STORE:-local}
stop_all() {
  stop_servers
  rm -rf "$WORK/out"  # the last run's store (twice the model); the source stays for the next run
  if [ "$STORE" = s3 ]; then
    "$HERE/../../tests/fixtures/radosgw/start-radosgw.sh" stop "$WORK/rgw" >/dev/null 2>&1 || true
  fi
}
trap stop_all EXIT
start_cdn "limit_rate $RATE;"
start_hub '[{"type": "model", "id": "bench/llama", "refs": {"main": "'"$SRC"'"}}]'

s3() {  # ARGS: runs one boto3 step against the bench bucket (make, empty)
  python3 - "$S3_ENDPOINT" "$1" <<'PY'
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
if sys.argv[2] == "make":
    s3.create_bucket(Bucket="bench")
else:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench"):
        for o in page.get("Contents", []):
            s3.delete_object(Bucket="bench", Key=o["Key"])
    for u in s3.list_multipart_uploads(Bucket="bench").get("Uploads", []):
        s3.abort_multipart_upload(Bucket="bench", Key=u["Key"], UploadId=u["UploadId"])
PY
}
case $STORE in
  local) ;;
  s3)
    # Room for one run's objects (a sharded run's staging and version objects: twice the model)
    # plus what radosgw's garbage collector has not freed yet.
    export MEMSTORE_BYTES=${MEMSTORE_BYTES:-$(awk -v b="$model_bytes" 'BEGIN {printf "%.0f", 3 * b + 2^30}')}
    eval "$("$HERE/../../tests/fixtures/radosgw/start-radosgw.sh" "$WORK/rgw")"
    export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
    s3 make
    ;;
  *) echo "STORE is local or s3" >&2; exit 1 ;;
esac

run_once() {  # MODE RUN -> "<seconds> <peak rss KiB> <blocks in> <blocks out>"
  local mode=$1 flags=()
  case $mode in
    unsharded) ;;
    sharded) flags=(--tp "$TP") ;;
    sharded-after) flags=(--tp "$TP" --shard-after-download) ;;
    *) echo "unknown mode $mode" >&2; exit 1 ;;
  esac
  rm -rf "$WORK/out"
  if [ "$STORE" = s3 ]; then
    s3 empty
    radosgw-admin -c "$WORK/rgw/ceph.conf" gc process --include-all >/dev/null 2>&1 || true
    flags+=(--store "s3://bench/run-$2-$mode" --cache-dir "$WORK/out" --s3-endpoint "$S3_ENDPOINT")
  else
    flags+=(--store "$WORK/out")
  fi
  sync
  # shellcheck disable=SC2086
  /usr/bin/time -f '%e %M %I %O' -o "$WORK/time.txt" "$MC_BIN" prefetch bench/llama \
    --hf-endpoint "$HUB" --no-progress "${flags[@]}" $MC_FLAGS >/dev/null \
    2>>"$WORK/prefetch.err" || { echo "prefetch ($mode) failed; see $WORK/prefetch.err" >&2; exit 1; }
  cat "$WORK/time.txt"
}

median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

declare -A T RSS IN OUT
for run in $(seq 1 "$RUNS"); do
  for mode in $MODES; do
    read -r s rss in out < <(run_once "$mode" "$run")
    echo "run $run $mode: ${s}s, peak RSS $((rss / 1024)) MiB, ${in} blocks in, ${out} blocks out" >&2
    T[$mode]+="$s "
    RSS[$mode]+="$rss "
    IN[$mode]+="$in "
    OUT[$mode]+="$out "
  done
done

base=$(tr ' ' '\n' <<<"${T[unsharded]:-}" | grep . | median || true)
printf '\n%s bytes of weights (%s layers, %s files), tp %s, nginx limit_rate %s per connection, ' \
  "$model_bytes" "$LAYERS" "$FILES" "$TP" "$RATE"
printf 'store %s, ' "$STORE"
printf 'median of %s runs\n\n' "$RUNS"
printf '| %-13s | %8s | %10s | %12s | %21s | %18s |\n' mode seconds "x unsharded" "peak RSS MiB" \
  "disk written / model" "disk read / model"
printf '| %-13s | %8s | %10s | %12s | %21s | %18s |\n' --- ---: ---: ---: ---: ---:
for mode in $MODES; do
  s=$(tr ' ' '\n' <<<"${T[$mode]}" | grep . | median)
  rss=$(tr ' ' '\n' <<<"${RSS[$mode]}" | grep . | median)
  in=$(tr ' ' '\n' <<<"${IN[$mode]}" | grep . | median)
  out=$(tr ' ' '\n' <<<"${OUT[$mode]}" | grep . | median)
  awk -v m="$mode" -v s="$s" -v b="${base:-0}" -v rss="$rss" -v bi="$in" -v bo="$out" \
    -v mb="$model_bytes" 'BEGIN {
      printf "| %-13s | %8.1f | %10s | %12.0f | %21.2f | %18.2f |\n", m, s,
        (b > 0 ? sprintf("%.2f", s / b) : "-"), rss / 1024, bo * 512 / mb, bi * 512 / mb }'
done
