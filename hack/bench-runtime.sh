#!/bin/sh
# Benchmark (not a test): create+start+wait+delete of a busybox /bin/true bundle, N times
# (default 50) with nodus-runtime (two builds), runc and crun in alternation; prints
# medians, peak RSS and ratios against the first (nodus-lean).
#
# All three run under the same conditions: a private mount namespace where
# /sys/fs/cgroup/unified is unmounted (crun refuses this host's hybrid cgroups otherwise;
# the host's own mounts are untouched). The bundle uses an absolute cgroupsPath below
# /nodus-bench-<pid>, removed at the end.
#
# Usage: hack/bench-runtime.sh [N]
set -eu
N="${1:-50}"
cd "$(dirname "$0")/.."
# Two builds of ours: the workspace's release profile ("nodus"), and the build we ship
# ("nodus-lean", what hack/install.sh installs: the `lean` profile of the root Cargo.toml,
# opt-level s, fat LTO, one codegen unit, panic=abort, with static glibc), which drops the
# dynamic loader and shared libc from every start. The lean build goes to
# target/<triple>/lean/: the explicit --target keeps RUSTFLAGS off every other artifact.
cargo build --release --locked -q -p nodus-runtime --bin nodus-runtime --example bench_lifecycle
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --profile lean --locked -q --target "$TRIPLE" -p nodus-runtime --bin nodus-runtime
TARGET="${CARGO_TARGET_DIR:-target}"
OURS="$(cd "$TARGET" && pwd)/release/nodus-runtime"
LEAN="$(cd "$TARGET" && pwd)/$TRIPLE/lean/nodus-runtime"
DRIVER="$(cd "$TARGET" && pwd)/release/examples/bench_lifecycle"

WORK="$(mktemp -d /tmp/nodus-bench.XXXXXX)"
CG="nodus-bench-$$"
cleanup() {
    rm -rf "$WORK"
    for c in /sys/fs/cgroup/*/"$CG" /sys/fs/cgroup/"$CG"; do
        [ -d "$c" ] && rmdir "$c" 2>/dev/null || true
    done
}
trap cleanup EXIT INT TERM

# Rootfs: Debian's static busybox with its applet links.
mkdir -p "$WORK/bundle/rootfs/bin" "$WORK/bundle/rootfs/proc" "$WORK/bundle/rootfs/dev" \
    "$WORK/bundle/rootfs/sys" "$WORK/bundle/rootfs/tmp" "$WORK/bundle/rootfs/etc"
cp /bin/busybox "$WORK/bundle/rootfs/bin/busybox"
for a in $("$WORK/bundle/rootfs/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -sf busybox "$WORK/bundle/rootfs/bin/$a"
done
# The default spec of runc (the same for everyone), running /bin/true, no terminal.
(cd "$WORK/bundle" && runc spec)
python3 - "$WORK/bundle/config.json" "$CG" <<'PY'
import json, sys
p, cg = sys.argv[1], sys.argv[2]
c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/true"]
c["linux"]["cgroupsPath"] = "/" + cg + "/c"
json.dump(c, open(p, "w"), indent=1)
PY

echo "nodus-runtime: $("$OURS" --version | head -1), binary $(stat -c %s "$OURS") bytes, lean $(stat -c %s "$LEAN") bytes"
echo "runc: $(runc --version | head -1)"
echo "crun: $(crun --version | head -1)"
unshare --mount --propagation private sh -c \
    "umount -l /sys/fs/cgroup/unified && exec '$DRIVER' '$N' '$WORK/bundle' nodus-lean='$LEAN' nodus='$OURS' runc=/usr/sbin/runc crun=/usr/bin/crun"
