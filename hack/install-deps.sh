#!/usr/bin/env bash
# Installs from Debian what the node and the tests need. Idempotent: packages already present
# are not fetched again, and apt's index is refreshed only when something is missing.
set -euo pipefail

packages=(
  containerd runc crun            # container runtime and the runtimes we compare with
  containernetworking-plugins     # reference CNI plugins (/usr/lib/cni), loopback for containerd
  protobuf-compiler               # protoc for the CRI definitions (proto/build.rs)
  busybox-static                  # the busybox image's only binary
  iproute2 nftables iptables      # netns, links, masquerade (iptables: the reference bridge's ipMasq)
  iputils-ping util-linux procps  # ping, nsenter/unshare, ps
  ca-certificates curl xz-utils   # fetching crates, unpacking the VM kernel
  time                            # /usr/bin/time -v for peak RSS in benchmarks
  debootstrap e2fsprogs           # the VM tier's root filesystem (hack/vm-test.sh)
  etcd-server                     # the API-server tests' etcd (kube-apiserver: hack/kube-apiserver.sh)
  docker-registry apache2-utils   # hack/conformance.sh and kubelet/tests/registry.rs: a real registry (in the test netns), htpasswd
  netcat-openbsd                  # hack/conformance.sh: the agnhost image's nc, as upstream's has
  g++                             # hack/fuzz.sh: libFuzzer (libfuzzer-sys builds it)
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: run as root (apt-get, network namespaces and cgroups need it)" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-deps: all ${#packages[@]} Debian packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
# The busybox image takes /bin/busybox from busybox-static; make sure it is the static one.
if ! /bin/busybox --list >/dev/null 2>&1; then
  echo "install-deps: /bin/busybox does not run" >&2
  exit 1
fi
