#!/usr/bin/env bash
# Soak benchmark (not a test): CYCLES pod create/delete cycles through our kubelet (static pod
# directory, private containerd, nodus-bridge), printing the kubelet's RSS and open file
# descriptors at the start, middle and end, the shims, sandboxes, IPAM leases and veths left,
# and the kubelet's CPU per cycle over the first and last tenth of the run.
#
#   hack/soak.sh          (root; CYCLES=500 PARALLEL=1 PROFILE=release by default)
#
# Everything runs in a private containerd and node network namespace (nodus-testkit) and is
# removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
flag=()
[[ $PROFILE == release ]] && flag=(--release)
cargo build --locked "${flag[@]}" -p nodus-kubelet --bins --example soak
cargo build --locked "${flag[@]}" -p nodus-cni-bridge --bins
cargo build --locked "${flag[@]}" -p nodus-runtime -p nodus-shim --bins
CYCLES=${CYCLES:-500} PARALLEL=${PARALLEL:-1} "target/$PROFILE/examples/soak"
