#!/usr/bin/env bash
# Benchmark (not a test): Nodus's hand-written netlink (cni-bridge/src/netlink.rs + nlmsg.rs),
# netns (cni-bridge/src/netns.rs) and cgroups (runtime/src/cgroups/) against the crates, with
# hack/crate-compare (its own Cargo project and target dir, not a workspace member).
#
#   hack/bench-crates.sh [N]     (default N=200; root; leaves nothing behind)
#
# Operations, each done the same way by ours and the crate's binary:
#   nl-npr    veth pair into a pod netns + link up + address + default route + delete,
#             ours vs netlink-packet-route on a synchronous netlink-sys socket (netavark's way)
#   nl-rtnl   the same, ours vs rtnetlink (tokio current-thread runtime)
#   nl-get-*  open a socket, look the bridge up by name (cheap in the kernel: the client's
#             own cost), ours vs each of the two
#   ns-enter  open a netns by path, enter, open a netlink socket, leave: ours vs netns-rs
#   ns-life   create a named netns, enter/leave, delete: ours vs netns-rs
#   cg        cgroup v1 on 7 controllers: create, memory/cpu/pids limits, read stats, remove:
#             ours vs cgroups-rs
#   cg-setup  the same without reading stats (cgroups-rs's stats calls read more files)
# Columns: stripped binary size (bytes), peak RSS of one call (KiB, median of N), wall time of
# one call as a process (median and p90, ms), the median time of one operation inside one
# process (CC_REPEAT=N, µs), then crate/ours ratios (above 1: the crate costs more).
#
# Everything happens in namespaces and cgroups made here: a "node" and a "pod" network
# namespace (the bridge and veths live there, never in the root netns), the netns binaries in
# a private mount namespace (their bind mounts die with it), and a cgroup nodus-cc-<pid> in
# each v1 hierarchy, removed at the end, also on failure.
set -euo pipefail

N=${1:-200}
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "bench-crates: N must be a positive number" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "bench-crates: run as root" >&2; exit 1; }
cd "$(dirname "$0")/crate-compare"

triple="$(rustc -vV | sed -n 's/^host: //p')"
target=../../build/crate-compare-target
lock=/tmp/nodus-build.lock
# Netlink and netns as nodus-bridge ships (profile release); cgroups as nodus-runtime ships
# (profile lean, static glibc). The same profile for ours and the crate's.
flock "$lock" nice -n 10 cargo build --release --locked --bins >&2
RUSTFLAGS="-C target-feature=+crt-static" flock "$lock" nice -n 10 \
    cargo build --profile lean --locked --target "$triple" --bin cg-ours --bin cg-crate >&2

WORK=$(mktemp -d /tmp/bench-crates.XXXXXX)
NODE=cc-node-$$ POD=cc-pod-$$ BR=cc-br0 CG=nodus-cc-$$
cleanup() {
    ip netns del "$NODE" 2>/dev/null || true
    ip netns del "$POD" 2>/dev/null || true
    for d in /sys/fs/cgroup/*/"$CG" /sys/fs/cgroup/"$CG"; do
        [ -d "$d" ] && rmdir "$d" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Stripped copies: the size column is code and data, not symbols (RSS does not map symbols).
for b in nl-ours nl-npr nl-crate ns-ours ns-crate; do
    strip -o "$WORK/$b" "$target/release/$b"
done
for b in cg-ours cg-crate; do
    strip -o "$WORK/$b" "$target/$triple/lean/$b"
done
RUNNER=$target/release/runner

ip netns add "$NODE"
ip netns add "$POD"
innode() { nsenter --net="/run/netns/$NODE" "$@"; }
innode ip link set lo up
innode ip link add "$BR" type bridge
innode ip link set "$BR" up

# One-off check that the three netlink binaries leave the same state behind (indices and
# the veth's peer index vary, so they are cut).
state() {
    {
        nsenter --net="/run/netns/$POD" ip -o link show eth0
        nsenter --net="/run/netns/$POD" ip -o -4 addr show dev eth0
        nsenter --net="/run/netns/$POD" ip route show
        innode ip -o link show master "$BR"
    } | sed -E 's/^[0-9]+: //; s/@if[0-9]+//; s/ link-netns(id)? [^ ]+//; s/ (qlen|group) [^ ]+//g; s/\\ +/ /'
}
for b in nl-ours nl-npr nl-crate; do
    innode "$WORK/$b" "/run/netns/$POD" "$BR" keep
    state >"$WORK/state.$b"
    nsenter --net="/run/netns/$POD" ip link del eth0
done
for b in nl-npr nl-crate; do
    if ! diff -u "$WORK/state.nl-ours" "$WORK/state.$b" >&2; then
        echo "bench-crates: $b leaves a different state than nl-ours (above)" >&2
        exit 1
    fi
done
echo "# the three netlink binaries leave the same state:"
sed 's/^/#   /' "$WORK/state.nl-ours"

printf '%-10s %-6s %10s %8s %9s %9s %10s\n' op who size_B rss_KiB call_ms call_p90 op_us
CC_SHOW_FLOOR=1 innode "$RUNNER" "$N" nl-npr "$WORK/nl-ours" "$WORK/nl-npr" "/run/netns/$POD" "$BR"
innode "$RUNNER" "$N" nl-rtnl "$WORK/nl-ours" "$WORK/nl-crate" "/run/netns/$POD" "$BR"
innode "$RUNNER" "$N" nl-get-npr "$WORK/nl-ours" "$WORK/nl-npr" get "$BR"
innode "$RUNNER" "$N" nl-get-rtnl "$WORK/nl-ours" "$WORK/nl-crate" get "$BR"

# The netns binaries mount (bind-mounted namespace files; netns-rs also makes its directory
# a shared bind mount of itself): a private mount namespace keeps that off the host.
mkdir "$WORK/ns"
unshare --mount --propagation private sh -c '
    set -e
    "$1" "$2" ns-enter "$3/ns-ours" "$3/ns-crate" enter "$4"
    "$1" "$2" ns-life "$3/ns-ours" "$3/ns-crate" life "$3/ns"
' sh "$RUNNER" "$N" "$WORK" "/run/netns/$POD"

"$RUNNER" "$N" cg "$WORK/cg-ours" "$WORK/cg-crate" "$CG"
CC_CG=setup "$RUNNER" "$N" cg-setup "$WORK/cg-ours" "$WORK/cg-crate" "$CG"
