#!/usr/bin/env bash
# Benchmark (not a test): kubelet pod startup latency, manifest written -> container started
# (CRI started_at), for 1 pod (RUNS times) and BURSTS bursts of BURST pods, next to the floor
# (the same CRI calls made directly by a small client in the same run, same private
# containerd; for the bursts also the matched floor, whose requests are our kubelet's).
# Prints p50/p99, ratios ours/floor and the kubelet's RSS with the burst running; then ours
# beside the upstream kubelet (burst wall time, kubelet CPU and RSS, ratios upstream/ours).
#
#   hack/bench-kubelet.sh            (root; RUNS=10 BURST=30 PROFILE=release
#                                     RUNTIMES="runc nodus-shim" by default)
#
# Everything runs in a private containerd and node network namespace (nodus-testkit) and is
# removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
flag=()
[[ $PROFILE == release ]] && flag=(--release)
cargo build --locked "${flag[@]}" -p nodus-kubelet --bins --example bench_startup
cargo build --locked "${flag[@]}" -p nodus-cni-bridge --bins || echo "WARNING: nodus-bridge did not build; an older binary or the reference bridge is used" >&2
cargo build --locked "${flag[@]}" -p nodus-runtime -p nodus-shim --bins
# Once per containerd runtime: containerd's runc shim + runc, and our shim v2 (both the
# floor and the kubelet use the same one in a run).
for runtime in ${RUNTIMES:-runc nodus-shim}; do
  echo "== containerd default runtime: $runtime"
  NODUS_TEST_RUNTIME=$runtime RUNS=${RUNS:-10} BURST=${BURST:-30} "target/$PROFILE/examples/bench_startup"
done

# Beside the upstream kubelet 1.20.2 (built from Debian's source by hack/kube-build.sh, cached
# in build/): both on runc, then as whole stacks (ours: our kubelet, shim and runtime; theirs:
# the upstream kubelet, containerd's runc shim and runc). PEER=none skips it.
if [ "${PEER:-upstream}" = upstream ]; then
  NODUS_UPSTREAM_KUBELET=$(bash hack/kube-build.sh kubelet)
  export NODUS_UPSTREAM_KUBELET
  for pair in "runc runc" "nodus-shim runc"; do
    read -r ours theirs <<<"$pair"
    echo "== beside the upstream kubelet: ours on $ours, upstream on $theirs"
    PEER=upstream OURS_RUNTIME=$ours PEER_RUNTIME=$theirs BURST=${BURST:-30} \
      "target/$PROFILE/examples/bench_startup"
  done
fi
