#!/usr/bin/env bash
# CI's check of the install paths: `cmake --install` of BUILD, and what scripts/package.sh
# produced from it in OUT (run as root by scripts/test.sh on the CI machine; it installs and
# purges a package on this machine):
#   source: `cmake --install` of BUILD (prefix /usr) and of each OTHER_BUILD (scripts/test.sh
#          passes its ASan build, prefix /usr/local) with DESTDIR:
#          the files land there, the unit names that prefix's paths, the installed binary runs
#   .deb:  dpkg -i (+ apt-get install -f), modelcache --version, systemd-analyze verify of the
#          installed unit, enabled but not started, conffiles, a reinstall keeps an edited conffile
#          and a disabled unit, dpkg --purge leaves only what the data policy keeps
#   image: umoci unpack, then run the image's own process (entrypoint, user 65532, env) in the
#          unpacked root with chroot: --version, and a real `modelcache prefetch` from the Hub
#          imitation (TEST_BUILD's mc-fake-hub, on 127.0.0.1), every file compared with the repo's
# Usage: scripts/check-install.sh BUILD_DIR OUT_DIR TEST_BUILD_DIR [OTHER_BUILD_DIR...]
# (TEST_BUILD_DIR: a build with the test fixtures, which may be BUILD_DIR itself)
set -euo pipefail
build="$(cd "$1" && pwd)"
out="$(cd "$2" && pwd)"
testbuild="$(cd "$3" && pwd)"
shift 3
source_builds=("$build")
for b in "$@"; do source_builds+=("$(cd "$b" && pwd)"); done
fail() { echo "check-install: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i, chroot)"
deb="$(ls "$out"/modelcache_*.deb)"
version="$(dpkg-deb -f "$deb" Version)"
version="${version%-*}"
work="$(mktemp -d)"
hub_pid=""
installed=0
user_existed=0
cleanup() {
  if [ -n "$hub_pid" ]; then kill "$hub_pid" 2>/dev/null || true; fi
  rm -rf "$work"
  # A failed check leaves nothing installed behind it.
  if [ "$installed" -eq 1 ]; then
    dpkg --purge modelcache >/dev/null 2>&1 || true
    rm -rf /var/lib/modelcache
    if [ "$user_existed" -eq 0 ]; then deluser --system --quiet modelcache >/dev/null 2>&1 || true; fi
  fi
}
trap cleanup EXIT

for b in "${source_builds[@]}"; do
  prefix="$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$b/CMakeCache.txt")"
  etc="$prefix/etc"
  if [ "$prefix" = /usr ]; then etc=/etc; fi
  echo "== check: DESTDIR=… cmake --install of $b (prefix $prefix)"
  start=$SECONDS
  dest="$work/destdir"
  rm -rf "$dest"
  DESTDIR="$dest" cmake --install "$b" >/dev/null
  for f in "$prefix/bin/modelcache" "$prefix/lib/systemd/system/modelcache.service" \
    "$etc/modelcache/config.yaml" "$etc/modelcache/modelcache.env" \
    "$prefix/share/modelcache/crds/modelcache.yaml" "$prefix/share/doc/modelcache/README.md"; do
    [ -f "$dest$f" ] || fail "cmake --install: no $f under DESTDIR"
  done
  [ -d "$dest$etc/modelcache/models" ] || fail "cmake --install: no $etc/modelcache/models"
  grep -q "^ExecStart=$prefix/bin/modelcache run --config $etc/modelcache/config.yaml --watch-dir $etc/modelcache/models " \
    "$dest$prefix/lib/systemd/system/modelcache.service" || fail "the installed unit does not name $prefix"
  "$dest$prefix/bin/modelcache" --version | grep -q "^modelcache $version" || fail "the installed binary"
  echo "source: installed and checked in $((SECONDS - start)) s"
done

echo "== check: the .deb ($deb)"
start=$SECONDS
if dpkg-query -W -f='${Status}' modelcache 2>/dev/null | grep -q installed; then
  fail "a modelcache package is already installed here; not touching it"
fi
[ ! -e /var/lib/modelcache ] || fail "/var/lib/modelcache exists here; not touching it"
getent passwd modelcache >/dev/null && user_existed=1
installed=1
dpkg -i "$deb" >/dev/null || true
DEBIAN_FRONTEND=noninteractive apt-get install -f -y -qq >/dev/null
dpkg-query -W -f='${Status}\n' modelcache | grep -qx 'install ok installed' || fail "not installed"
/usr/bin/modelcache --version | grep -q "^modelcache $version" || fail "--version: $(/usr/bin/modelcache --version)"
unit=/lib/systemd/system/modelcache.service
[ -f "$unit" ] || fail "no $unit"
systemd-analyze verify "$unit" > "$work/verify.log" 2>&1 || { cat "$work/verify.log"; fail "systemd-analyze verify"; }
if grep -q "modelcache.service:" "$work/verify.log"; then cat "$work/verify.log"; fail "warnings about the unit"; fi
getent passwd modelcache >/dev/null || fail "no system user modelcache"
[ -L /etc/systemd/system/multi-user.target.wants/modelcache.service ] || fail "unit not enabled"
if [ -d /run/systemd/system ]; then
  ! systemctl is-active --quiet modelcache || fail "started on install"
fi
[ "$(stat -c %a /etc/modelcache/hf-token)" = 600 ] || fail "hf-token missing or not 0600"
[ -d /etc/modelcache/models ] || fail "no /etc/modelcache/models"
for f in /etc/modelcache/config.yaml /etc/modelcache/modelcache.env; do
  dpkg-query -W -f='${Conffiles}\n' modelcache | grep -q " $f " || fail "$f is not a conffile"
done
[ -f /usr/share/modelcache/crds/modelcache.yaml ] || fail "no CRD in /usr/share/modelcache"
[ -f /usr/share/doc/modelcache/operations.md ] || fail "no docs"

# An upgrade (here: the same version again) keeps an edited conffile and an administrator's
# `systemctl disable`.
echo "# edited" >> /etc/modelcache/config.yaml
systemctl disable --quiet modelcache.service
dpkg -i "$deb" >/dev/null
grep -q "^# edited" /etc/modelcache/config.yaml || fail "the edited conffile was replaced"
[ ! -e /etc/systemd/system/multi-user.target.wants/modelcache.service ] || fail "re-enabled on upgrade"

# The data policy: purge removes configuration and enablement, keeps the store and the user.
install -d -o modelcache -g modelcache /var/lib/modelcache/hub
echo cached > /var/lib/modelcache/hub/kept
echo "a user's manifest" > /etc/modelcache/models/m.yaml
dpkg --purge modelcache >/dev/null
! dpkg-query -W -f='${Status}' modelcache 2>/dev/null | grep -q installed || fail "still installed"
for p in /usr/bin/modelcache "$unit" /usr/lib/systemd/system/modelcache.service /etc/modelcache \
  /etc/systemd/system/multi-user.target.wants/modelcache.service /usr/share/modelcache \
  /usr/share/doc/modelcache /var/cache/modelcache; do
  [ ! -e "$p" ] || fail "$p left after purge"
done
if ls /var/lib/systemd/deb-systemd-helper-enabled/ 2>/dev/null | grep -q modelcache; then
  fail "deb-systemd-helper state left after purge"
fi
[ "$(cat /var/lib/modelcache/hub/kept)" = cached ] || fail "purge removed the store"
getent passwd modelcache >/dev/null || fail "purge removed the system user"
installed=0
rm -rf /var/lib/modelcache
if [ "$user_existed" -eq 0 ]; then deluser --system --quiet modelcache >/dev/null 2>&1 || true; fi
echo "deb: installed, verified, upgraded, purged in $((SECONDS - start)) s"

echo "== check: the image ($out/oci:$version)"
start=$SECONDS
bundle="$work/bundle"
umoci unpack --image "$out/oci:$version" "$bundle" >/dev/null
rootfs="$bundle/rootfs"
# The process the runtime would start: the image's entrypoint, user, environment, directory.
python3 - "$bundle/config.json" > "$work/process" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))["process"]
print(f'{p["user"]["uid"]}:{p["user"]["gid"]}')
print(p["cwd"])
print("\t".join(p["env"]))
print("\t".join(p["args"]))
PY
user="$(sed -n 1p "$work/process")"
cwd="$(sed -n 2p "$work/process")"
IFS=$'\t' read -r -a envs < <(sed -n 3p "$work/process")
IFS=$'\t' read -r -a entry < <(sed -n 4p "$work/process")
# The OCI annotations of the tagged manifest.
python3 - "$out/oci" "$version" <<'PY' || fail "the image's org.opencontainers.image annotations"
import json, sys
layout, version = sys.argv[1], sys.argv[2]
index = json.load(open(f"{layout}/index.json"))
desc = next(m for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == version)
algo, digest = desc["digest"].split(":")
notes = json.load(open(f"{layout}/blobs/{algo}/{digest}")).get("annotations", {})
assert notes.get("org.opencontainers.image.version") == version, notes
assert notes.get("org.opencontainers.image.title") == "modelcache", notes
PY
[ "$user" = "65532:65532" ] || fail "image user $user"
[ "${entry[*]}" = modelcache ] || fail "image entrypoint ${entry[*]}"
if [ -e "$rootfs/bin/sh" ]; then fail "a shell in the image: it holds only modelcache and its libraries"; fi
in_image() {
  (cd "$rootfs$cwd" && env -i "${envs[@]}" chroot --userspec="$user" "$rootfs" "${entry[@]}" "$@")
}
in_image --version | tee "$work/version"
grep -q "^modelcache $version" "$work/version" || fail "--version in the image"

# A real prefetch against the Hub imitation, on 127.0.0.1 (the chroot shares the network).
"$testbuild/tests/fixtures/checkpoint/mc-make-checkpoint" "$work/repos/qwen3-tiny" --arch qwen3 \
  --size tiny >/dev/null
printf '{"repos": [{"type": "model", "id": "demo/Qwen3-Tiny", "refs": {"main": "%s"}}]}\n' \
  "$work/repos/qwen3-tiny" > "$work/hub.json"
"$testbuild/tests/fixtures/hub/mc-fake-hub" --config "$work/hub.json" > "$work/hub.out" 2> "$work/hub.log" &
hub_pid=$!
for _ in $(seq 100); do [ -s "$work/hub.out" ] && break; sleep 0.05; done
hub_url="$(sed -n 's/^hub=\([^ ]*\) .*/\1/p' "$work/hub.out")"
[ -n "$hub_url" ] || fail "the Hub imitation did not start: $(cat "$work/hub.log")"
in_image prefetch demo/Qwen3-Tiny:main --store /var/lib/modelcache --hf-endpoint "$hub_url" \
  --no-progress | tee "$work/prefetch"
grep -q '^qwen3-tiny@sha256:[0-9a-f]\{64\}$' "$work/prefetch" || fail "prefetch printed no artifact id"
artifact="$rootfs/var/lib/modelcache/artifacts/qwen3-tiny/current"
files=0
while read -r f; do
  cmp -s "$work/repos/qwen3-tiny/$f" "$artifact/$f" || fail "$f differs in the image's store"
  files=$((files + 1))
done < <(cd "$work/repos/qwen3-tiny" && find . -type f | sed 's|^\./||')
[ "$files" -gt 0 ] || fail "no files compared"
[ "$(stat -c %u "$artifact/config.json")" = 65532 ] || fail "the store is not the image user's"
echo "image: unpacked, --version and a prefetch of $files files as user 65532 in $((SECONDS - start)) s"
