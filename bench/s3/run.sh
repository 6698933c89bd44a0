#!/usr/bin/env bash
# Benchmark of issue 8: uploads the same FILES x SIZE_MIB of random bytes (default 2 x 1 GiB) to
# one radosgw (tests/fixtures/radosgw/start-radosgw.sh, memstore) with modelcache's S3Uploader
# (mc-s3-upload-bench: 8 parts in flight, 8 MiB parts, Content-MD5 per part, whole-file sha256
# verified while uploading, HeadObject confirmation) and with boto3's managed multipart upload
# (upload_file, TransferConfig max_concurrency=8, 8 MiB parts), alternating (who goes first too),
# RUNS times each.
# Prints a table: tool, median wall time, MB/s, ratio to modelcache, peak RSS (max over runs).
#
# radosgw runs on the same cores and costs about 7 CPU-seconds per GiB here, so compare the
# tools; the absolute numbers are those of a shared 2-core machine.
#
# Usage: bench/s3/run.sh BUILD_DIR   (env: FILES=2 SIZE_MIB=1024 RUNS=3 WORK=/tmp/...)
set -euo pipefail

BUILD=${1:?usage: run.sh BUILD_DIR}
FILES=${FILES:-2}
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
WORK=${WORK:-$(mktemp -d /tmp/mc-s3-bench.XXXXXX)}
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
MC_BIN=$BUILD/bench/s3/mc-s3-upload-bench

mkdir -p "$WORK/src"
files=()
for i in $(seq 0 $((FILES - 1))); do
  f=$WORK/src/model-$i.safetensors
  [ -s "$f" ] || head -c $((SIZE_MIB << 20)) /dev/urandom >"$f"
  files+=("$f")
done

# Room for one tool's objects plus what radosgw's garbage collector has not freed yet.
export MEMSTORE_BYTES=${MEMSTORE_BYTES:-$(( (FILES * SIZE_MIB * 2 + 1024) << 20 ))}
eval "$("$root/tests/fixtures/radosgw/start-radosgw.sh" "$WORK/rgw")"
trap '"$root/tests/fixtures/radosgw/start-radosgw.sh" stop "$WORK/rgw" >/dev/null 2>&1 || true' EXIT
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
conf=$WORK/rgw/ceph.conf

python3 - "$S3_ENDPOINT" <<'PY'
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
s3.create_bucket(Bucket="bench")
PY

# Empties the bucket and has radosgw free the data now, so every run starts alike.
reset_bucket() {
  python3 - "$S3_ENDPOINT" <<'PY'
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))
for o in s3.list_objects_v2(Bucket="bench").get("Contents", []):
    s3.delete_object(Bucket="bench", Key=o["Key"])
for u in s3.list_multipart_uploads(Bucket="bench").get("Uploads", []):
    s3.abort_multipart_upload(Bucket="bench", Key=u["Key"], UploadId=u["UploadId"])
PY
  radosgw-admin -c "$conf" gc process --include-all >/dev/null 2>&1 || true
}

# run TOOL: prints "seconds peak_rss_kib". The seconds are the tool's own upload time ("total …
# in X s"): without Python's start-up for boto3, and without the sha256 pass modelcache makes
# beforehand (the artifact store knows every file's sha256 from the download).
run() {
  local out
  reset_bucket
  case "$1" in
    modelcache)
      out=$( { /usr/bin/time -f "TIME %e %M" "$MC_BIN" --endpoint "$S3_ENDPOINT" --bucket bench \
               ${MC_ARGS:-} "${files[@]}"; } 2>&1 ) ;;
    boto3)
      out=$( { /usr/bin/time -f "TIME %e %M" python3 "$here/boto3_upload.py" "$S3_ENDPOINT" bench \
               "${files[@]}"; } 2>&1 ) ;;
  esac
  if ! echo "$out" | grep -q '^TIME'; then echo "$1 failed: $out" >&2; exit 1; fi
  echo "$(echo "$out" | sed -n 's/^total [0-9]* bytes in \([0-9.]*\) s$/\1/p')" \
    "$(echo "$out" | awk '/^TIME/ {print $3}')"
}

declare -A times rss
for r in $(seq 1 "$RUNS"); do
  # Alternate who goes first: radosgw may still be freeing the previous run's data.
  order="modelcache boto3"
  (( r % 2 == 0 )) && order="boto3 modelcache"
  for tool in $order; do
    read -r t m < <(run $tool)
    times[$tool]="${times[$tool]:-} $t"
    (( m > ${rss[$tool]:-0} )) && rss[$tool]=$m
    echo "# run $r $tool: ${t} s, peak RSS $((m / 1024)) MiB" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
bytes=$((FILES * (SIZE_MIB << 20)))
mc_median=$(echo "${times[modelcache]}" | median)
printf "%-11s %10s %9s %8s %14s\n" tool "median s" "MB/s" ratio "peak RSS MiB"
for tool in modelcache boto3; do
  t=$(echo "${times[$tool]}" | median)
  printf "%-11s %10.2f %9.1f %8.2f %14d\n" "$tool" "$t" "$(echo "$bytes / $t / 1000000" | bc -l)" \
    "$(echo "$t / $mc_median" | bc -l)" "$(( ${rss[$tool]} / 1024 ))"
done
echo "# $FILES x $SIZE_MIB MiB, $RUNS runs each; all runs: modelcache${times[modelcache]} boto3${times[boto3]}"
