#!/usr/bin/env bash
# Benchmark (not a test): ADD+DEL of N pod network namespaces with nodus-bridge and with the
# reference bridge + host-local (Debian's containernetworking-plugins), same config shape
# (isGateway, ipMasq on), alternating call by call, all inside a private "host" network
# namespace created here. Prints medians of ADD, DEL and ADD+DEL, the peak RSS of one call
# (the largest process of the call tree: plugin, IPAM plugin, iptables/nft), and the
# reference/ours ratios.
#
#   hack/bench-cni.sh [N]      (default N=50; root; leaves nothing behind)
#
# The reference bridge masquerades with iptables: Debian's `iptables` package is installed
# if missing. Ours runs `nft` (package nftables).
set -euo pipefail

if [[ "${1:-}" == "--inner" ]]; then
    # Runs inside the private host netns. Args: N WORK OURS
    N=$2 WORK=$3 OURS=$4
    REF=/usr/lib/cni/bridge
    export CNI_PATH=/usr/lib/cni
    conf() { # type bridge subnet dataDir
        printf '{"cniVersion":"1.0.0","name":"bench-%s","type":"%s","bridge":"%s","isGateway":true,"ipMasq":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"%s"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":"%s"}}' \
            "$1" "$1" "$2" "$3" "$4"
    }
    conf nodus-bridge br-ours 10.251.0.0/16 "$WORK/data-ours" >"$WORK/ours.json"
    conf bridge br-ref 10.252.0.0/16 "$WORK/data-ref" >"$WORK/ref.json"
    now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }
    # call KIND CMD I [rss] -> appends "us" to $WORK/KIND.CMD (and "kB" to .rss)
    call() {
        local kind=$1 cmd=$2 i=$3 rss=${4:-}
        local bin=$OURS
        [[ $kind == ref ]] && bin=$REF
        local t0 t1 rc=0
        t0=$(now_us)
        if [[ -n $rss ]]; then
            CNI_COMMAND=$cmd CNI_CONTAINERID="bench-$kind-$i" CNI_NETNS="/run/netns/$PODPFX-$i" CNI_IFNAME=eth0 \
                /usr/bin/time -f %M -o "$WORK/rss.tmp" "$bin" <"$WORK/$kind.json" >"$WORK/out.tmp" 2>&1 || rc=$?
        else
            CNI_COMMAND=$cmd CNI_CONTAINERID="bench-$kind-$i" CNI_NETNS="/run/netns/$PODPFX-$i" CNI_IFNAME=eth0 \
                "$bin" <"$WORK/$kind.json" >"$WORK/out.tmp" 2>&1 || rc=$?
        fi
        t1=$(now_us)
        if [[ $rc != 0 ]]; then
            echo "$kind $cmd #$i failed:" >&2
            cat "$WORK/out.tmp" >&2
            exit 1
        fi
        if [[ -n $rss ]]; then
            echo "$(tail -n1 "$WORK/rss.tmp")" >>"$WORK/$kind.rss"
        else
            echo $((t1 - t0)) >>"$WORK/$kind.$cmd"
            echo $((t1 - t0)) >>"$WORK/$kind.$cmd.$i"
        fi
    }
    # Warm-up (page cache, bridge creation, nft/iptables tables) not counted.
    for k in ours ref; do call "$k" ADD 0; call "$k" DEL 0; done
    rm -f "$WORK"/*.ADD* "$WORK"/*.DEL*
    for ((i = 1; i <= N; i++)); do
        for k in ours ref; do
            call "$k" ADD "$i"
            call "$k" DEL "$i"
        done
    done
    # Peak RSS, measured in a separate pass so /usr/bin/time does not skew the timings.
    for ((i = 1; i <= N; i++)); do
        for k in ours ref; do
            call "$k" ADD "$i" rss
            call "$k" DEL "$i" rss
        done
    done
    median() { sort -n "$1" | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%d\n", (a[NR/2]+a[NR/2+1])/2}'; }
    for k in ours ref; do
        : >"$WORK/$k.BOTH"
        for ((i = 1; i <= N; i++)); do
            echo $(($(cat "$WORK/$k.ADD.$i") + $(cat "$WORK/$k.DEL.$i"))) >>"$WORK/$k.BOTH"
        done
    done
    ms() { awk -v us="$1" 'BEGIN {printf "%.2f ms", us / 1000}'; }
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a / b}'; }
    printf '\nCNI ADD/DEL benchmark, N=%d per plugin, ipMasq on, alternating\n' "$N"
    printf '%-14s %14s %14s %10s\n' "median" "reference" "nodus-bridge" "ref/ours"
    for what in ADD DEL BOTH; do
        r=$(median "$WORK/ref.$what") o=$(median "$WORK/ours.$what")
        label=$what; [[ $what == BOTH ]] && label="ADD+DEL"
        printf '%-14s %14s %14s %10s\n' "$label" "$(ms "$r")" "$(ms "$o")" "$(ratio "$r" "$o")"
    done
    r=$(sort -n "$WORK/ref.rss" | tail -n1) o=$(sort -n "$WORK/ours.rss" | tail -n1)
    printf '%-14s %14s %14s %10s\n' "peak RSS" "$r kB" "$o kB" "$(ratio "$r" "$o")"
    exit 0
fi

N=${1:-${N:-50}}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ $(id -u) == 0 ]] || { echo "bench-cni.sh: needs root (network namespaces)" >&2; exit 1; }
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || {
    echo "bench-cni.sh: /usr/lib/cni/bridge missing: apt-get install containernetworking-plugins" >&2
    exit 1
}
if ! command -v iptables >/dev/null; then
    echo "bench-cni.sh: installing Debian's iptables (the reference bridge's ipMasq uses it)" >&2
    apt-get install -y -q iptables >/dev/null
fi
command -v nft >/dev/null || { echo "bench-cni.sh: nft missing: apt-get install nftables" >&2; exit 1; }

echo "building nodus-bridge (release)..." >&2
(cd "$ROOT" && cargo build --release -q -p nodus-cni-bridge --bin nodus-bridge)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OURS=$TARGET/release/nodus-bridge
echo "binary: $(stat -c %s "$OURS") bytes" >&2

WORK=$(mktemp -d /tmp/nodus-bench-cni.XXXXXX)
HOSTNS=nodus-bench-host-$$
export PODPFX=nodus-bench-pod-$$
cleanup() {
    for ((i = 0; i <= N; i++)); do ip netns delete "$PODPFX-$i" 2>/dev/null || true; done
    ip netns delete "$HOSTNS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$HOSTNS"
nsenter --net="/run/netns/$HOSTNS" ip link set lo up
for ((i = 0; i <= N; i++)); do ip netns add "$PODPFX-$i"; done
nsenter --net="/run/netns/$HOSTNS" bash "${BASH_SOURCE[0]}" --inner "$N" "$WORK" "$OURS"
