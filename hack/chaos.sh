#!/usr/bin/env bash
# Chaos benchmark (not a test): pod churn through our kubelet (static pod directory, private
# containerd, nodus-bridge) with a kill -9 of the kubelet, containerd or a shim at a random
# moment of each round; after each round the node must converge (each pod runs exactly once)
# and, once the pods are removed, leave nothing (sandboxes, containers, leases, veths, shims,
# mounts, pod cgroups). Prints the counts per fault; exits non-zero if a round failed.
#
#   hack/chaos.sh          (root; ROUNDS=20 PODS=5 PROFILE=release by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
flag=()
[[ $PROFILE == release ]] && flag=(--release)
cargo build --locked "${flag[@]}" -p nodus-kubelet --bins --example chaos
cargo build --locked "${flag[@]}" -p nodus-cni-bridge --bins
cargo build --locked "${flag[@]}" -p nodus-runtime -p nodus-shim --bins
ROUNDS=${ROUNDS:-20} PODS=${PODS:-5} "target/$PROFILE/examples/chaos"
