#!/usr/bin/env bash
# Benchmark (not a test): API-server mode, pod request -> phase Running as an API watch sees
# it, for a pod created through the API server and for a static pod (through its mirror pod),
# 1 pod RUNS times and a burst of BURST, in the same run on the same node; prints the ratio
# and the kubelet's RSS with the burst running.
#
#   hack/bench-apiserver.sh     (root; RUNS=10 BURST=30 PROFILE=node, the shipped build)
#
# The control plane is a real etcd + kube-apiserver: $NODUS_KUBE_APISERVER, else the one
# hack/kube-apiserver.sh builds. Everything runs in a private containerd and node network
# namespace and is removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-node}
flag=(--profile "$PROFILE")
export NODUS_KUBE_APISERVER=${NODUS_KUBE_APISERVER:-$(bash hack/kube-apiserver.sh)}
cargo build --locked "${flag[@]}" -p nodus-kubelet --bins --example bench_apiserver
cargo build --locked "${flag[@]}" -p nodus-cni-bridge --bins
RUNS=${RUNS:-10} BURST=${BURST:-30} "target/$PROFILE/examples/bench_apiserver"
