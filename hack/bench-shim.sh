#!/bin/sh
# Benchmark (not a test): N pods (sandbox + one busybox container; run, create, start,
# stop, remove) through CRI on one private containerd, alternating the runtime handlers
# `runc` (io.containerd.runc.v2 shim + runc) and `nodus-shim` (containerd-shim-nodus-v2 +
# nodus-runtime). Prints per-phase medians, the shim's resident memory (RSS and PSS) per
# running pod, and the ratios runc/ours. Release builds; the reference CNI bridge for both.
#
# Usage: hack/bench-shim.sh [N]   (default 20)
set -eu
N="${1:-20}"
cd "$(dirname "$0")/.."
echo "building (release)..."
cargo build --release -q -p nodus-runtime -p nodus-shim --bins
echo "containerd $(containerd --version | awk '{print $3}'), $(runc --version | head -1)"
BENCH_PODS="$N" exec cargo test --release -q -p nodus-shim --test shim_v2_bench -- \
    --ignored --nocapture --test-threads=1
