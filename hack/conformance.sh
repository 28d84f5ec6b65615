#!/usr/bin/env bash
# Kubernetes' node conformance suite against one private node (issue 22).
#
#   bash hack/conformance.sh                       # our kubelet, all 143 specs, 8 ginkgo nodes
#   bash hack/conformance.sh --kubelet upstream    # the upstream kubelet 1.20.2, same harness
#   bash hack/conformance.sh --focus 'Downward API' --nodes 4
#   bash hack/conformance.sh --kubelet-bin /path/to/kubelet --runtime nodus-shim
#
# Builds what it needs from Debian's kubernetes 1.20.2 source (hack/kube-build.sh, cached in
# build/): kube-apiserver, kube-controller-manager, kube-scheduler, e2e.test, ginkgo, agnhost,
# nonewprivs and the upstream kubelet; builds our binaries (cargo); then runs
# nodus-conformance (testkit/src/bin/nodus-conformance.rs), which brings the cluster up in a
# private network namespace, runs the suite and tears everything down. Reports go to
# build/conformance/<kubelet>/ (JUnit, logs, summary.txt). The last line printed is
# `N passed, N failed, N skipped`; the exit status is non-zero when a spec failed that
# hack/conformance-skips.txt does not list.
#
# Options (all passed on to nodus-conformance): --kubelet nodus|upstream, --kubelet-bin PATH,
# --focus REGEX (default '\[NodeConformance\]'), --skip REGEX (default
# '\[Serial\]|\[Flaky\]|\[Slow\]|\[Disruptive\]'), --nodes N (default 8), --runtime
# runc|nodus|nodus-shim (default runc), --report-dir DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

kubelet=nodus
args=()
report_dir=
while [ $# -gt 0 ]; do
  case "$1" in
    --kubelet) kubelet=$2; args+=("$1" "$2"); shift 2 ;;
    --kubelet=*) kubelet=${1#*=}; args+=("$1"); shift ;;
    --report-dir) report_dir=$2; shift 2 ;;
    --report-dir=*) report_dir=${1#*=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
report_dir=${report_dir:-build/conformance/$kubelet}

for tool in docker-registry htpasswd nc.openbsd curl iptables etcd; do
  command -v "$tool" >/dev/null || {
    echo "conformance.sh: $tool missing (hack/install-deps.sh installs it)" >&2
    exit 1
  }
done

t0=$(date +%s)
mapfile -t bins < <(bash hack/kube-build.sh kube-apiserver kube-controller-manager \
  kube-scheduler kubelet e2e.test ginkgo agnhost nonewprivs)
kube_apiserver=${bins[0]}
kube_bin_dir=$(dirname "${bins[1]}")
kubectl=$(bash hack/kubectl.sh 2>/dev/null || true)
t1=$(date +%s)
flock /tmp/nodus-build.lock cargo build --workspace --bins --locked
t2=$(date +%s)
echo "conformance.sh: Go binaries ready in $((t1 - t0)) s, ours in $((t2 - t1)) s"

# In its own session: Ctrl-C (or SIGTERM to this script) reaches this script, which passes it
# on, so nodus-conformance stops the suite and tears the node down in order. (A script started
# in the background by a non-interactive shell ignores SIGINT: stop it with SIGTERM.)
setsid target/debug/nodus-conformance \
  --kube-apiserver "$kube_apiserver" --kube-bin-dir "$kube_bin_dir" \
  --repo-root "$root/build/kube-apiserver/src" ${kubectl:+--kubectl "$kubectl"} \
  --skips-file hack/conformance-skips.txt --report-dir "$report_dir" \
  ${args[@]+"${args[@]}"} &
pid=$!
trap 'kill -INT $pid 2>/dev/null || true' INT TERM
status=0
wait $pid || status=$?
# A signal interrupts the first wait; wait again for the teardown.
while kill -0 $pid 2>/dev/null; do wait $pid || status=$?; done
exit $status
