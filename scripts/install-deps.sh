#!/usr/bin/env bash
# Installs the Debian 12 packages modelcache needs to build, test and run its demo.
# Idempotent: only missing packages are installed. Needs root (or sudo).
set -euo pipefail

packages=(
  build-essential cmake pkg-config git ca-certificates python3
  libcurl4-openssl-dev nlohmann-json3-dev libyaml-cpp-dev libssl-dev
  zlib1g-dev  # gzip bombs of the hostile Hub imitation (tests/fixtures/hub/hostile_hub.cpp)
  libspdlog-dev libfmt-dev libsystemd-dev libcpp-httplib-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang-tidy  # clang-tidy 14: scripts/lint.sh and the ctest lint_test (.clang-tidy)
  nginx-light
  radosgw ceph-mon ceph-osd ceph-common uuid-runtime curl python3-boto3
  faketime  # libfaketime: a skewed clock against radosgw (RequestTimeTooSkewed) in an S3 test
  systemd  # systemd-analyze verifies manifests/systemd/modelcache.service in a unit test
  umoci    # scripts/package.sh builds the container image as an OCI layout without a registry
)

# kubectl for tests/integration/kubectl_test.cpp: Debian's kubernetes-client (1.20) unless a
# kubectl is already on PATH (e.g. a newer one from the Kubernetes or Google Cloud apt repos, whose
# package would conflict with Debian's over /usr/bin/kubectl).
if ! command -v kubectl >/dev/null 2>&1; then
  packages+=(kubernetes-client)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
