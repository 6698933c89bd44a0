#!/usr/bin/env bash
# Builds the two artifacts users install from a release build tree (configured with
# -DCMAKE_INSTALL_PREFIX=/usr, e.g. `cmake --preset release -DCMAKE_INSTALL_PREFIX=/usr`):
#   OUT/modelcache_<version>-1_<arch>.deb   the Debian package (CPack; Depends from dpkg-shlibdeps)
#   OUT/oci/                                 an OCI image layout, tag <version>, built offline with
#                                            umoci: the installed binary, the shared libraries it
#                                            loads (ldd), CA certificates and a non-root user 65532,
#                                            the same image the Containerfile builds with a registry
# Usage: scripts/package.sh BUILD_DIR OUT_DIR. The image part needs root (file ownership in the
# layers); without root only the .deb is built.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
build="$(cd "$1" && pwd)"
mkdir -p "$2"
out="$(cd "$2" && pwd)"
version="$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$build/CMakeCache.txt")"
# The Containerfile labels its image with its own copy of the version; keep them equal.
containerfile_version="$(sed -n 's/^ARG VERSION=//p' "$here/Containerfile")"
if [ "$containerfile_version" != "$version" ]; then
  echo "package: Containerfile says ARG VERSION=$containerfile_version, the project $version" >&2
  exit 1
fi

echo "== package: the .deb (cpack -G DEB)"
(cd "$build" && cpack -G DEB -B "$out/cpack" >/dev/null)
rm -f "$out"/modelcache_*.deb
mv "$out"/cpack/modelcache_*.deb "$out/"
rm -rf "$out/cpack"
deb="$(ls "$out"/modelcache_*.deb)"
echo "$deb: $(stat -c %s "$deb") bytes"
dpkg-deb -f "$deb" Package Version Architecture Installed-Size Depends

if [ "$(id -u)" -ne 0 ]; then
  echo "== package: not root, no image (umoci needs root to set the layers' file owners)"
  exit 0
fi

echo "== package: the OCI image $out/oci:$version (umoci)"
stage="$(mktemp -d)"
bundle="$(mktemp -d)"
trap 'rm -rf "$stage" "$bundle"' EXIT
DESTDIR="$stage" cmake --install "$build" --strip >/dev/null
rm -rf "$out/oci"
umoci init --layout "$out/oci"
umoci new --image "$out/oci:$version"
rmdir "$bundle" && umoci unpack --image "$out/oci:$version" "$bundle" >/dev/null
rootfs="$bundle/rootfs"
# Debian 12's merged /usr: /bin, /lib and /lib64 are links into /usr, so that the loader and
# libraries are found under the paths ldd prints.
mkdir -p "$rootfs"/usr/{bin,sbin,lib,lib64}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$rootfs/$d"; done
install -m 0755 "$stage/usr/bin/modelcache" "$rootfs/usr/bin/modelcache"
# Every shared object the binary loads, under the path the loader finds it at.
ldd "$stage/usr/bin/modelcache" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' |
  while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nmodelcache:x:65532:65532:modelcache:/var/lib/modelcache:/usr/sbin/nologin\n' \
  > "$rootfs/etc/passwd"
printf 'root:x:0:\nmodelcache:x:65532:\n' > "$rootfs/etc/group"
install -d -m 1777 "$rootfs/tmp"
install -d -m 0755 -o 65532 -g 65532 "$rootfs/var/lib/modelcache"
umoci repack --image "$out/oci:$version" "$bundle"

commit="$("$rootfs/usr/bin/modelcache" --version | sed -n 's/.*(commit \(.*\))$/\1/p')"
# The OCI image-spec's pre-defined annotation keys, as labels (what `podman inspect` shows) and
# as manifest annotations.
annotations=(
  "org.opencontainers.image.title=modelcache"
  "org.opencontainers.image.description=Declarative, verified, versioned caching of HuggingFace models"
  "org.opencontainers.image.version=$version"
  "org.opencontainers.image.revision=$commit"
)
config_args=(--config.user 65532:65532 --config.entrypoint modelcache --config.workingdir /var/lib/modelcache
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
for a in "${annotations[@]}"; do
  config_args+=(--config.label "$a" --manifest.annotation "$a")
done
umoci config --image "$out/oci:$version" "${config_args[@]}"
umoci gc --layout "$out/oci"
echo "image $out/oci:$version: $(du -sb "$out/oci" | cut -f1) bytes as layers (gzip)," \
  "$(du -sb "$rootfs" | cut -f1) bytes unpacked"
