#!/usr/bin/env bash
# ThreadSanitizer run: builds the unit tests, the daemon and its fixtures with -fsanitize=thread
# into build-tsan (or $1) and runs every unit test and the integration tests that stop work while
# it runs (shutdown, SIGTERM, deletion, cancellation). Not part of scripts/test.sh: a third full
# build does not fit the CI budget on two cores; run it when threads, jobs or shutdown change.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$here/build-tsan}"
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" \
  -DMODELCACHE_TSAN=ON -DMODELCACHE_BUILD_TESTS=ON -DMODELCACHE_BUILD_BENCH=OFF >/dev/null
# Every test executable labelled unit, the daemon and what the integration tests start.
targets=(modelcache mc-fake-hub integration_tests fake_hub_test kube_test)
for t in unit_common unit_crds unit_store unit_fetch unit_shard unit_reconcilers unit_controller \
    unit_daemon unit_cli; do
  targets+=("$t")
done
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"
# halt_on_error: a race fails the test that found it; the report goes to that test's output.
# tsan.supp: only the uninstrumented cpp-httplib library.
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 history_size=4 \
suppressions=$here/scripts/tsan.supp"
cd "$build"
ctest --output-on-failure -j2 --timeout 600 -L unit
ctest --output-on-failure -j2 --timeout 600 -L integration -R \
  'Sigterm|Shutdown|Deleted|Deletion|Cancel|SpecChange'
