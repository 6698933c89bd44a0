#!/usr/bin/env bash
# Configures and builds modelcache into build/ (or the directory given as $1, with extra CMake
# arguments after it) as the project's own builds do: with the tests and benchmarks, warnings
# fatal (a user's plain `cmake` build has neither). Used by test.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$here/build}"
shift || true
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMODELCACHE_BUILD_TESTS=ON \
  -DMODELCACHE_BUILD_BENCH=ON -DMODELCACHE_WERROR=ON "$@" >/dev/null
cmake --build "$build" -j"$(nproc)"
