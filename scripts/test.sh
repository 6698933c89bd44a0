#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite twice: a normal build and an
# ASan + UBSan build. Exits non-zero if anything fails.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/install-deps.sh"

echo "== build (RelWithDebInfo)"
"$here/scripts/build.sh" "$here/build"
echo "== test (RelWithDebInfo)"
(cd "$here/build" && ctest --output-on-failure -j2 --timeout 300)

echo "== build (ASan + UBSan)"
# Benchmarks are built (and so compile-checked) by the first build; not again here.
"$here/scripts/build.sh" "$here/build-asan" -DCMAKE_BUILD_TYPE=Debug -DMODELCACHE_SANITIZE=ON \
  -DMODELCACHE_BUILD_BENCH=OFF
echo "== test (ASan + UBSan)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd "$here/build-asan" && ctest --output-on-failure -j2 --timeout 600)
