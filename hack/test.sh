#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this): deps, format, lints, every crate's
# unit and integration tests (root: network namespaces, containerd, cgroups), a short run of
# every fuzz target, Kubernetes' node conformance suite on our kubelet, then the VM tier. Each
# step prints when it started (seconds since the start), so the log shows where the time goes.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
step() { printf '\n==> [%s s] %s\n' "$(($(date +%s) - started))" "$*"; }

step "dependencies"
bash hack/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "a real control plane for the API-server tests (kube-apiserver and kube-controller-manager 1.20.2 from Debian's source, kubectl)"
# Built once into build/ (one make, several minutes the first time; the conformance step
# later reuses them); a binary given by the caller wins.
if [ -z "${NODUS_KUBE_APISERVER:-}" ] || [ -z "${NODUS_KUBE_CONTROLLER_MANAGER:-}" ]; then
  mapfile -t control_plane < <(bash hack/kube-build.sh kube-apiserver kube-controller-manager)
  NODUS_KUBE_APISERVER=${NODUS_KUBE_APISERVER:-${control_plane[0]}}
  NODUS_KUBE_CONTROLLER_MANAGER=${NODUS_KUBE_CONTROLLER_MANAGER:-${control_plane[1]}}
fi
NODUS_KUBECTL=${NODUS_KUBECTL:-$(bash hack/kubectl.sh)}
export NODUS_KUBE_APISERVER NODUS_KUBE_CONTROLLER_MANAGER NODUS_KUBECTL
"$NODUS_KUBE_APISERVER" --version
"$NODUS_KUBE_CONTROLLER_MANAGER" --version

step "cargo test (unit + host integration)"
# Integration tests of one crate use the binaries of others (nodus-bridge, nodus-runtime,
# kubelet): build them all first.
cargo build --workspace --bins --locked
# A hung test must fail the run, not eat the CI budget.
timeout --kill-after=20 2400 cargo test --workspace --locked

step "kubelet end-to-end tests on our shim (nodus-shim as containerd's default runtime)"
NODUS_TEST_RUNTIME=nodus-shim timeout --kill-after=20 1200 \
  cargo test --locked -p nodus-kubelet --test '*'

# cri_parity ran above on runc (the reference); the same assertions on our shim and on runc's
# shim driving our runtime.
for runtime in nodus-shim nodus; do
  step "CRI feature parity through containerd on $runtime"
  NODUS_TEST_RUNTIME=$runtime timeout --kill-after=20 600 \
    cargo test --locked -p nodus-shim --test cri_parity
done

step "fuzzing: every parser target for 15 s (hack/fuzz.sh; a panic fails the run)"
# An unoptimised build of the targets is quicker to make than the runs it would speed up.
FUZZ_DEV=1 timeout --kill-after=20 1200 bash hack/fuzz.sh 15

step "Kubernetes node conformance (1.20.2 [NodeConformance], 143 specs) on our kubelet, runc"
# Builds the rest of the control plane and the suite from the same Debian tree (about 8 min
# once), the suite's images, a registry, and runs the specs on 8 ginkgo nodes (about 7 min).
timeout --kill-after=30 2700 bash hack/conformance.sh

if [ -x hack/vm-test.sh ]; then
  step "VM tier (pure cgroup v2 under qemu)"
  bash hack/vm-test.sh
else
  echo "SKIP: VM tier: hack/vm-test.sh does not exist yet" >&2
fi

echo
echo "all tests passed in $(( $(date +%s) - started )) s"
