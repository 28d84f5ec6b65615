#!/usr/bin/env bash
# Chaos benchmark (not a test): pod churn through our kubelet (static pod directory, private
# containerd, nodus-bridge) with a kill -9 at a random moment of each round: of the kubelet,
# containerd, a shim, or the CNI plugin in the middle of ADD (once the pod's interface exists)
# and of DEL (a wrapper in the CNI bin dir runs and kills it). After each round the node must
# converge (each pod runs exactly once) and, once the pods are removed, leave nothing
# (sandboxes, containers, leases, veths, nft chains and rules, netns, shims, runtime state
# dirs, mounts, pod cgroups). Prints the kills that landed and the counts per fault; exits
# non-zero if a round failed. The VM tier runs the same binary (hack/vm-test.sh --checks chaos).
#
#   hack/chaos.sh          (root; ROUNDS=20 PODS=5 PROFILE=release by default;
#                           FAULTS="kubelet containerd shim cniadd cnidel" picks faults;
#                           NODUS_TEST_RUNTIME=nodus-shim runs the pods on our shim)
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
flag=()
[[ $PROFILE == release ]] && flag=(--release)
cargo build --locked "${flag[@]}" -p nodus-kubelet --bins --example chaos
cargo build --locked "${flag[@]}" -p nodus-cni-bridge --bins
cargo build --locked "${flag[@]}" -p nodus-runtime -p nodus-shim --bins
ROUNDS=${ROUNDS:-20} PODS=${PODS:-5} "target/$PROFILE/examples/chaos"
