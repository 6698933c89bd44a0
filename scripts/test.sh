#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite twice: a normal build and an
# ASan + UBSan build. The normal build is packaged, and the .deb, the image and `cmake --install`
# are checked (docs/install.md). Exits non-zero if anything fails.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/install-deps.sh"

# -O1 keeps the flow-based warnings (-Werror) that -O0 would not see, at half the compile time of
# -O2 -g on CI's two cores. Release binaries for benchmarks and the demo use the default flags.
# This build is also the packaging check: it is configured with the prefix a .deb needs (/usr),
# and the .deb and the image are made from it and installed and run (scripts/check-install.sh, as
# root; on CI the machine is throwaway). The release preset (-O3) is the same sources and install
# rules with other flags; it is not compiled a third time here (docs/install.md).
echo "== build (optimized, -O1)"
"$here/scripts/build.sh" "$here/build-test" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS_RELEASE="-O1 -DNDEBUG" -DCMAKE_INSTALL_PREFIX=/usr
echo "== test (optimized)"
(cd "$here/build-test" && ctest --output-on-failure -j2 --timeout 300)

echo "== package (the .deb and the image, from the optimized build)"
"$here/scripts/package.sh" "$here/build-test" "$here/build-test/packages"

echo "== build (ASan + UBSan)"
# Benchmarks are built (and so compile-checked) by the first build; not again here. A unity build
# (sources compiled in batches): the instrumented template code of the headers is generated once
# per batch instead of once per file, which is most of this build's time; the first build compiles
# file by file and so checks that every file includes what it uses.
"$here/scripts/build.sh" "$here/build-asan" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O0 -g1" \
  -DMODELCACHE_SANITIZE=ON -DMODELCACHE_UNITY_BUILD=ON \
  -DMODELCACHE_BUILD_BENCH=OFF
echo "== test (ASan + UBSan)"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd "$here/build-asan" && ctest --output-on-failure -j2 --timeout 600)

# The install checks: `cmake --install` with both prefixes (the ASan build has the default,
# /usr/local), the .deb and the image.
if [ "$(id -u)" -eq 0 ]; then
  "$here/scripts/check-install.sh" "$here/build-test" "$here/build-test/packages" \
    "$here/build-test" "$here/build-asan"
else
  echo "== not root: the .deb and image install checks are skipped (CI runs them as root)"
fi
