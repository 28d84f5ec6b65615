#!/usr/bin/env bash
# Benchmark (not a test): the kubelet API on 10250. `exec -- true` round trip through
# kubectl and the API server, through the kubelet's /exec directly, and the floor (CRI Exec +
# containerd's stream, what crictl exec does); log streaming throughput of a 20 MB log the
# same three ways (the floor reads the CRI log file, as crictl logs). Prints floor/ours.
#
#   hack/bench-kubelet-api.sh     (root; RUNS=20 PROFILE=node, the shipped build)
#
# Control plane: $NODUS_KUBE_APISERVER, else the one hack/kube-apiserver.sh builds; kubectl
# from hack/kubectl.sh. Everything runs in a private containerd and node network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-node}
flag=(--profile "$PROFILE")
export NODUS_KUBE_APISERVER=${NODUS_KUBE_APISERVER:-$(bash hack/kube-apiserver.sh)}
export NODUS_KUBECTL=${NODUS_KUBECTL:-$(bash hack/kubectl.sh)}
cargo build --locked "${flag[@]}" -p nodus-kubelet --bins --example bench_kubelet_api
cargo build --locked "${flag[@]}" -p nodus-cni-bridge --bins
RUNS=${RUNS:-20} "target/$PROFILE/examples/bench_kubelet_api"
