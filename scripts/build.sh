#!/usr/bin/env bash
# Configures and builds modelcache into build/ (or the directory given as $1, with extra CMake
# arguments after it). Used by demo.sh and test.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$here/build}"
shift || true
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
cmake --build "$build" -j"$(nproc)"
