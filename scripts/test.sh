#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite twice: a normal build and an
# ASan + UBSan build. Between them, the release configuration is built and packaged, and the
# .deb, the image and `cmake --install` are checked (docs/install.md). Exits non-zero if anything
# fails.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/install-deps.sh"

# -O1 keeps the flow-based warnings (-Werror) that -O0 would not see, at half the compile time of
# -O2 -g on CI's two cores. Release binaries for benchmarks and the demo use the default flags.
echo "== build (optimized, -O1)"
"$here/scripts/build.sh" "$here/build-test" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS_RELEASE="-O1 -DNDEBUG"
echo "== test (optimized)"
(cd "$here/build-test" && ctest --output-on-failure -j2 --timeout 300)

# The configuration users and packagers build (the `release` preset: -O3, no tests), with fatal
# warnings here; it is also the packaging build: the .deb and the image come from it and are
# installed and run (scripts/check-install.sh, as root; on CI the machine is throwaway).
echo "== build (release preset: the binary users build, and the packages)"
t0=$SECONDS
cmake --preset release -S "$here" -DCMAKE_INSTALL_PREFIX=/usr -DMODELCACHE_WERROR=ON >/dev/null
cmake --build "$here/build-release" -j"$(nproc)"
echo "release build: $((SECONDS - t0)) s"
"$here/scripts/package.sh" "$here/build-release" "$here/build-release/packages"
if [ "$(id -u)" -eq 0 ]; then
  "$here/scripts/check-install.sh" "$here/build-release" "$here/build-release/packages" \
    "$here/build-test"
else
  echo "== not root: the .deb and image install checks are skipped (CI runs them as root)"
fi

echo "== build (ASan + UBSan)"
# Benchmarks are built (and so compile-checked) by the first build; not again here.
"$here/scripts/build.sh" "$here/build-asan" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O0 -g1" \
  -DMODELCACHE_SANITIZE=ON \
  -DMODELCACHE_BUILD_BENCH=OFF
echo "== test (ASan + UBSan)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd "$here/build-asan" && ctest --output-on-failure -j2 --timeout 600)
