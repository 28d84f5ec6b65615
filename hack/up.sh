#!/usr/bin/env bash
# The main job: install deps, build, and bring up a node running the demo static pods
# (hack/deploy/manifests). The node's pod network lives in a private network namespace and
# its containerd is private (own root, state, sockets): this machine's network and any
# containerd it runs are left alone. Ctrl-C stops the node and removes what it made.
# For a real node (systemd, /etc/cni/net.d, pods on the host network) use hack/install.sh.
#
# usage: hack/up.sh [nodus-node flags, e.g. --until-running --runtime nodus --cni reference]
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/install-deps.sh
cargo build --locked --workspace --bins
exec target/debug/nodus-node --manifests hack/deploy/manifests "$@"
