#!/usr/bin/env bash
# VM test tier: boots a Debian 12 guest under qemu with pure cgroup v2 (cgroup_no_v1=all) and
# runs hack/vm/guest-tests.sh inside it, the repository shared read-only over 9p.
#
# Everything comes from Debian's packages: qemu (unpacked from its .debs, never installed, since
# qemu-system-x86 conflicts with the preinstalled qemu-utils), the kernel (vmlinux and the modules
# taken from linux-image-*-amd64), and a root filesystem made by debootstrap and turned into an
# ext4 image with `mkfs.ext4 -d` (no loop mount). The three are cached in build/vm/, each keyed by
# a hash of its inputs, so a second run goes straight to boot.
#
# Usage: hack/vm-test.sh [--runc-only] [--runtimes "runc nodus"] [--checks "cgroup_v2 ..."]
#                        [--timeout SECONDS] [--rebuild] [--keep] [--build-only]
#   --runc-only      run the runtime checks with runc only (the control), not nodus-runtime
#   --runtimes LIST  runtimes for the runtime checks (default "runc nodus"; NODUS_VM_RUNTIMES)
#   --checks LIST    only these check functions of guest-tests.sh (default all; NODUS_VM_CHECKS)
#   --timeout S      bound of the whole VM run, all boots (default 1200; NODUS_VM_TIMEOUT)
#   --rebuild        drop the cached qemu/kernel/image and build them again
#   --keep           keep the run directory (console log, guest log) even on success
#   --build-only     build or check the cache, do not boot
# Environment: NODUS_VM_ACCEL=auto|kvm|tcg (default auto: KVM only if it really boots),
#   NODUS_VM_MIRROR (Debian mirror for debootstrap), CARGO_TARGET_DIR (where nodus-runtime is),
#   NODUS_VM_GUEST_TIMEOUT (the guest's own bound of guest-tests.sh per boot, default 60 s below
#   --timeout), NODUS_VM_MAX_BOOTS (default 2: the node checks reboot the guest once).
set -euo pipefail

# Bump when the way the cached artifacts are built changes (part of every cache key).
VM_TIER_VERSION=2

repo=$(cd "$(dirname "$0")/.." && pwd)
vmdir=$repo/build/vm
hackvm=$repo/hack/vm

runtimes=${NODUS_VM_RUNTIMES:-runc nodus}
checks=${NODUS_VM_CHECKS:-}
vm_timeout=${NODUS_VM_TIMEOUT:-1200}
accel_mode=${NODUS_VM_ACCEL:-auto}
rebuild=0 keep=0 build_only=0
while [ $# -gt 0 ]; do
  case $1 in
    --runc-only) runtimes=runc ;;
    --runtimes) runtimes=$2; shift ;;
    --checks) checks=$2; shift ;;
    --timeout) vm_timeout=$2; shift ;;
    --rebuild) rebuild=1 ;;
    --keep) keep=1 ;;
    --build-only) build_only=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "vm-test: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# Host packages the tier uses itself (debootstrap builds the root filesystem).
# qemu-img (qemu-utils) makes the per-run disk overlay that survives a guest reboot.
HOST_PACKAGES=(debootstrap e2fsprogs xz-utils busybox-static util-linux coreutils qemu-utils)
# Unpacked into build/vm, never installed (see the header).
QEMU_DEBS=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu)
# The guest's packages (debootstrap --variant=minbase --include=...).
GUEST_PACKAGES=(systemd systemd-sysv dbus containerd runc crun containernetworking-plugins iproute2
  nftables iptables kmod procps iputils-ping busybox-static util-linux jq curl etcd-server conntrack)
# Kernel modules carried in the image (with their dependencies). The first group is loaded by the
# initramfs to reach the root filesystem and the 9p shares; the rest load on demand or through
# /etc/modules-load.d in the guest.
BOOT_MODULES=(virtio_pci virtio_blk crc32c_generic crc32c_intel ext4 9pnet_virtio 9p)
EXTRA_MODULES=(overlay veth bridge br_netfilter dummy tun loop nf_tables nft_chain_nat nft_masq
  nft_nat nft_ct nft_compat nft_fib_inet nft_fib_ipv4 nft_fib_ipv6 nft_reject_inet nf_conntrack
  nf_nat nf_conntrack_netlink nfnetlink_log ip_tables iptable_nat iptable_filter iptable_mangle
  ip6_tables ip6table_nat ip6table_filter ip6table_mangle xt_MASQUERADE xt_conntrack xt_comment
  xt_addrtype xt_mark xt_nat xt_multiport xt_tcpudp xt_statistic xt_set ip_set ip_set_hash_ip
  ip_set_hash_net sch_htb sch_ingress cls_u32 act_mirred virtio_rng)
# Loaded at boot by systemd-modules-load (not autoloaded by the kernel on first use).
AUTOLOAD_MODULES=(overlay br_netfilter)
KERNEL_CMDLINE="console=ttyS0 panic=-1 quiet loglevel=4 cgroup_no_v1=all mitigations=off \
cryptomgr.notests i8042.noaux i8042.nokbd i8042.nopnp root=/dev/vda rw"

log() { printf 'vm-test: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
sha() { sha256sum | cut -c1-16; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot and mkfs need it)"
t_start=$(now)
mkdir -p "$vmdir"
# One builder at a time on this clone's cache; runs proceed in parallel once it is built.
exec 9>"$vmdir/.lock"

ensure_host_packages() {
  local missing=() p
  for p in "${HOST_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing host packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# apt-cache needs package lists; refresh them once if they do not know a package.
apt_known() { apt-cache show "$1" >/dev/null 2>&1; }
ensure_apt_lists() {
  apt_known "$1" || { log "apt-get update (package lists do not know $1)"; apt-get update -qq; }
  apt_known "$1" || die "Debian package $1 not found by apt-cache"
}

# apt-get download into a scratch dir (as root: _apt cannot write into build/).
download_debs() {
  local dest=$1; shift
  mkdir -p "$dest"
  (cd "$dest" && { apt-get download -q "$@" 2>&1 | grep -v -e '^Get:' -e 'unsandboxed' >&2; true; })
  local p
  for p in "$@"; do
    ls "$dest/${p}_"*.deb >/dev/null 2>&1 || die "apt-get download $p failed"
  done
}

# Atomically publish a built cache entry and drop older entries of the same kind.
publish() {
  local kind=$1 tmp=$2 final=$3
  rm -rf "$final"
  mv "$tmp" "$final"
  local d
  for d in "$vmdir/$kind"-*; do
    [ "$d" = "$final" ] || rm -rf "$d"
  done
}

# --- qemu ---------------------------------------------------------------------------------------
build_qemu() {
  ensure_apt_lists qemu-system-x86
  local key; key=$(printf '%s\n' "$VM_TIER_VERSION" "${QEMU_DEBS[@]}" | sha)
  qemu_dir=$vmdir/qemu-$key
  if [ ! -f "$qemu_dir/ok" ]; then
    local t0; t0=$(now)
    local tmp=$vmdir/tmp-qemu-$$
    rm -rf "$tmp"
    download_debs "$tmp/debs" "${QEMU_DEBS[@]}"
    local d
    for d in "$tmp"/debs/*.deb; do dpkg-deb -x "$d" "$tmp/root"; done
    rm -rf "$tmp/debs"
    touch "$tmp/ok"
    publish qemu "$tmp" "$qemu_dir"
    log "qemu unpacked in $(elapsed "$t0") s"
    built+=("qemu")
  fi
  qemu=$qemu_dir/root/usr/bin/qemu-system-x86_64
  # Its shared libraries are installed from Debian normally (those still missing only).
  if ldd "$qemu" | grep 'not found' > /dev/null; then
    local libs=() p
    for p in $(apt-cache depends qemu-system-x86 qemu-system-common | awk '/Depends: lib/ { print $2 }' | sort -u); do
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || libs+=("$p")
    done
    log "installing qemu's shared libraries: ${libs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${libs[@]}" >/dev/null
    ! ldd "$qemu" | grep 'not found' || die "qemu still misses shared libraries"
  fi
  qemu_data=(-L "$qemu_dir/root/usr/share/qemu" -L "$qemu_dir/root/usr/share/seabios"
    -L "$qemu_dir/root/usr/lib/ipxe/qemu")
}

# --- kernel -------------------------------------------------------------------------------------
build_kernel() {
  ensure_apt_lists linux-image-amd64
  # linux-image-amd64 is a metapackage: the kernel is its versioned dependency.
  kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  [ -n "$kpkg" ] || die "cannot resolve linux-image-amd64's kernel package"
  local key; key=$(printf '%s\n' "$VM_TIER_VERSION" "$kpkg" | sha)
  kernel_dir=$vmdir/kernel-$key
  if [ ! -f "$kernel_dir/ok" ]; then
    local t0; t0=$(now)
    local tmp=$vmdir/tmp-kernel-$$
    rm -rf "$tmp"
    download_debs "$tmp/debs" "$kpkg"
    dpkg-deb -x "$tmp"/debs/*.deb "$tmp/root"
    rm -rf "$tmp/debs"
    local vmlinuz; vmlinuz=$(ls "$tmp"/root/boot/vmlinuz-*)
    # bzImage = setup code + decompressor + xz payload: find the xz stream's magic and unpack it
    # (what the kernel's scripts/extract-vmlinux does). qemu then boots the ELF directly (PVH).
    local off
    off=$(LC_ALL=C grep -m1 -obUaP '\xfd7zXZ\x00' "$vmlinuz" | cut -d: -f1)
    [ -n "$off" ] || die "no xz payload in $vmlinuz"
    tail -c +$((off + 1)) "$vmlinuz" > "$tmp/payload.xz"
    # --single-stream: the payload is followed by the decompressor's trailing data.
    xz -dc --single-stream "$tmp/payload.xz" > "$tmp/vmlinux"
    rm -f "$tmp/payload.xz"
    [ "$(od -An -c -N4 "$tmp/vmlinux" | tr -d ' ')" = '177ELF' ] || die "extracted vmlinux is not an ELF file"
    basename "$(ls -d "$tmp"/root/lib/modules/*)" > "$tmp/release"
    touch "$tmp/ok"
    publish kernel "$tmp" "$kernel_dir"
    log "kernel $kpkg unpacked in $(elapsed "$t0") s"
    built+=("kernel")
  fi
  kver=$(cat "$kernel_dir/release")
}

# --- root filesystem image ----------------------------------------------------------------------
build_image() {
  local suite mirror
  suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  mirror=${NODUS_VM_MIRROR:-http://deb.debian.org/debian}
  local baked=("$hackvm/initramfs-init.sh" "$hackvm/guest-run.sh" "$hackvm/nodus-vm.service")
  local key
  key=$( { printf '%s\n' "$VM_TIER_VERSION" "$suite" "$mirror" "$kernel_dir" "${GUEST_PACKAGES[@]}" \
    "${BOOT_MODULES[@]}" "${EXTRA_MODULES[@]}" "${AUTOLOAD_MODULES[@]}"; cat "${baked[@]}"; } | sha)
  image_dir=$vmdir/image-$key
  [ -f "$image_dir/ok" ] && return 0
  local t0; t0=$(now)
  local tmp=$vmdir/tmp-image-$$
  local rootfs=$tmp/rootfs
  rm -rf "$tmp"
  mkdir -p "$tmp"
  log "debootstrap $suite (${#GUEST_PACKAGES[@]} packages) ..."
  if ! debootstrap --variant=minbase --include="$(IFS=,; echo "${GUEST_PACKAGES[*]}")" \
      "$suite" "$rootfs" "$mirror" > "$tmp/debootstrap.log" 2>&1; then
    tail -20 "$tmp/debootstrap.log" >&2
    die "debootstrap failed (log: $tmp/debootstrap.log)"
  fi
  log "debootstrap done in $(elapsed "$t0") s"

  # Kernel modules: the wanted ones and their dependencies, resolved by the guest's own kmod.
  local mods=$rootfs/lib/modules/$kver
  mkdir -p "$rootfs/lib/modules"
  cp -a "$kernel_dir/root/lib/modules/$kver" "$mods"
  # The kernel's config, where Debian puts it (kubeadm's preflight reads it).
  mkdir -p "$rootfs/boot"
  cp "$kernel_dir/root/boot/config-$kver" "$rootfs/boot/"
  chroot "$rootfs" depmod "$kver"
  resolve_modules() { # prints the .ko paths (inside the guest) in load order
    local m
    for m in "$@"; do
      chroot "$rootfs" modprobe -S "$kver" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" { print $2 }' ||
        log "warning: module $m not found in $kver"
    done | awk '!seen[$0]++'
  }
  local boot_list keep_list
  boot_list=$(resolve_modules "${BOOT_MODULES[@]}")
  keep_list=$( { echo "$boot_list"; resolve_modules "${EXTRA_MODULES[@]}"; } | sort -u)
  (cd "$rootfs" && find "lib/modules/$kver/kernel" -name '*.ko*' | sed 's|^|/|' | sort) \
    | comm -23 - <(echo "$keep_list") | sed "s|^|$rootfs|" | xargs rm -f
  find "$mods/kernel" -type d -empty -delete
  chroot "$rootfs" depmod "$kver"
  printf '%s\n' "${AUTOLOAD_MODULES[@]}" > "$rootfs/etc/modules-load.d/nodus-vm.conf"

  # initramfs: static busybox, the boot modules (in load order) and /init, which mounts the
  # root image and hands over to systemd.
  local initrd=$tmp/initramfs
  mkdir -p "$initrd"/{bin,dev,proc,sys,newroot,modules}
  cp "$rootfs/bin/busybox" "$initrd/bin/busybox"
  cp "$hackvm/initramfs-init.sh" "$initrd/init"
  chmod 755 "$initrd/init"
  local ko
  for ko in $boot_list; do
    cp "$rootfs$ko" "$initrd/modules/"
    basename "$ko" >> "$initrd/modules/order"
  done
  (cd "$initrd" && find . | busybox cpio -o -H newc 2>/dev/null) > "$tmp/initrd.img"
  rm -rf "$initrd"

  # The guest's configuration: a quiet, fast boot straight to the test runner.
  echo nodus-vm > "$rootfs/etc/hostname"
  : > "$rootfs/etc/machine-id"   # systemd makes a fresh one on each boot
  install -m 755 "$hackvm/guest-run.sh" "$rootfs/usr/local/sbin/nodus-vm-run"
  install -m 644 "$hackvm/nodus-vm.service" "$rootfs/etc/systemd/system/nodus-vm.service"
  ln -sf /etc/systemd/system/nodus-vm.service "$rootfs/etc/systemd/system/multi-user.target.wants/nodus-vm.service"
  local unit
  for unit in getty@tty1.service serial-getty@ttyS0.service console-getty.service e2scrub_reap.service \
      e2scrub_all.timer fstrim.timer apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
      systemd-timesyncd.service systemd-pstore.service remote-fs.target; do
    ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
  done
  # No swap in the guest; the journal stays in memory.
  mkdir -p "$rootfs/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=volatile\n' > "$rootfs/etc/systemd/journald.conf.d/nodus-vm.conf"
  # Smaller image, faster mkfs.
  rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/info/*

  # ext4 image from the directory, no loop mount; 1 GiB free for containers.
  local used_mb; used_mb=$(du -sm "$rootfs" | cut -f1)
  truncate -s $((used_mb + 1024))M "$tmp/rootfs.img"
  mkfs.ext4 -q -F -L nodus-root -E root_owner=0:0 -d "$rootfs" "$tmp/rootfs.img"
  echo "$kver" > "$tmp/release"
  rm -rf "$rootfs"
  touch "$tmp/ok"
  publish image "$tmp" "$image_dir"
  log "image built in $(elapsed "$t0") s ($used_mb MB used)"
  built+=("image")
}

# --- accelerator ----------------------------------------------------------------------------------
# KVM only when it really boots a kernel: on nested setups without vmx/svm it aborts or hangs.
choose_accel() {
  accel=(-accel "tcg,thread=multi" -cpu max)
  accel_name=tcg
  [ "$accel_mode" = tcg ] && return 0
  if [ "$accel_mode" = auto ] && ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
    return 0
  fi
  if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    local probe; probe=$(mktemp)
    timeout -k 2 15 "$qemu" "${qemu_data[@]}" -accel kvm -cpu host -m 256 -nodefaults -display none \
      -no-reboot -kernel "$kernel_dir/vmlinux" -append "console=ttyS0 panic=-1 loglevel=4" \
      -serial "file:$probe" >/dev/null 2>&1 || true
    if grep -q 'Kernel panic' "$probe"; then
      accel=(-accel kvm -cpu host)
      accel_name=kvm
    elif [ "$accel_mode" = kvm ]; then
      die "NODUS_VM_ACCEL=kvm but KVM does not boot a kernel here"
    fi
    rm -f "$probe"
  elif [ "$accel_mode" = kvm ]; then
    die "NODUS_VM_ACCEL=kvm but /dev/kvm is not usable"
  fi
}

# --- main ---------------------------------------------------------------------------------------
built=()
t_build=$(now)
flock 9
if [ "$rebuild" = 1 ]; then
  rm -rf "$vmdir"/qemu-* "$vmdir"/kernel-* "$vmdir"/image-*
fi
rm -rf "$vmdir"/tmp-*
ensure_host_packages
build_qemu
build_kernel
build_image
flock -u 9
build_s=$(elapsed "$t_build")
cache_note="cached"
[ ${#built[@]} -eq 0 ] || cache_note="built ${built[*]}"
log "qemu, kernel $kver and image ready in $build_s s ($cache_note)"
[ "$build_only" = 1 ] && exit 0

choose_accel

# The run directory: the writable results share and the console log.
mkdir -p "$vmdir/runs"
# Keep the last few kept runs (failures, --keep) for inspection, not all of them.
find "$vmdir/runs" -mindepth 1 -maxdepth 1 -name 'run.*' -printf '%T@ %p\n' | sort -rn | tail -n +6 \
  | cut -d' ' -f2- | xargs -r rm -rf
run=$(mktemp -d "$vmdir/runs/run.XXXXXX")
mkdir -p "$run/results"
target=${CARGO_TARGET_DIR:-$repo/target}
case $(cd "$target" 2>/dev/null && pwd || echo "$target") in
  "$repo"/*) bin_dir=/nodus/${target#"$repo"/}/debug ;;
  *) # a target dir outside the shared repository: hand the binaries over through the results share
    mkdir -p "$run/results/bin"
    find "$target/debug" -maxdepth 1 -type f -perm -u+x -exec cp {} "$run/results/bin/" \; 2>/dev/null || true
    bin_dir=/results/bin ;;
esac
# The node checks install the local images (hack/install.sh takes build/images/*.tar): build them
# with the host's nodus-images (quick, byte-identical on every rebuild). Without it those checks FAIL.
if [ -x "$target/debug/nodus-images" ]; then
  "$target/debug/nodus-images" build --out "$repo/build/images" > /dev/null ||
    log "warning: nodus-images build failed; the node checks will miss the images"
else
  log "warning: $target/debug/nodus-images not built (cargo build --workspace --bins); the node checks will FAIL"
fi
# The kubeadm join check's control plane: kube-apiserver, kube-controller-manager, kube-scheduler
# and kubeadm from Debian's Kubernetes source (cached in build/kube-apiserver), kubectl
# (build/kubectl); the guest reads them from the repository share.
if [ -z "$checks" ] || [[ " $checks " == *" node_kubeadm_join "* ]]; then
  bash "$repo/hack/kube-build.sh" kube-apiserver kube-controller-manager kube-scheduler kubeadm > /dev/null ||
    log "warning: hack/kube-build.sh failed; node_kubeadm_join will FAIL"
  bash "$repo/hack/kubectl.sh" > /dev/null || log "warning: hack/kubectl.sh failed; node_kubeadm_join will FAIL"
fi
# Host e2e test binaries also run in the guest (the newest of each): the CRI parity checks
# (shim/tests/cri_parity.rs) and the pod security fields (kubelet/tests/pod_security.rs).
guest_test_bin() { # name -> the guest's path of the host's newest test binary NAME, or nothing
  local newest
  newest=$(ls -t "$target"/debug/deps/"$1"-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
  if [ -z "$newest" ]; then
    log "warning: no $1 test binary (cargo test --no-run); the $1 check will FAIL"
  elif [ "$bin_dir" = /results/bin ]; then
    cp "$newest" "$run/results/bin/$1"
    echo "/results/bin/$1"
  else
    echo "$bin_dir/deps/${newest##*/}"
  fi
}
# The chaos example (kubelet/examples/chaos.rs; cargo test builds examples) for the chaos check.
chaos_guest=
if [ -x "$target/debug/examples/chaos" ]; then
  if [ "$bin_dir" = /results/bin ]; then
    cp "$target/debug/examples/chaos" "$run/results/bin/chaos"
    chaos_guest=/results/bin/chaos
  else
    chaos_guest=$bin_dir/examples/chaos
  fi
else
  log "warning: no $target/debug/examples/chaos (cargo test builds it); the chaos check will FAIL"
fi
parity_guest=$(guest_test_bin cri_parity)
pod_security_guest=$(guest_test_bin pod_security)
{
  printf 'NODUS_VM_RUNTIMES=%q\n' "$runtimes"
  printf 'NODUS_VM_CRI_PARITY=%q\n' "$parity_guest"
  printf 'NODUS_VM_POD_SECURITY=%q\n' "$pod_security_guest"
  printf 'NODUS_VM_CHAOS=%q\n' "$chaos_guest"
  printf 'NODUS_VM_CHAOS_ROUNDS=%q\n' "${NODUS_VM_CHAOS_ROUNDS:-2}"
  printf 'NODUS_VM_CHAOS_RUNTIMES=%q\n' "${NODUS_VM_CHAOS_RUNTIMES:-runc nodus-shim}"
  printf 'NODUS_VM_CHECKS=%q\n' "$checks"
  printf 'NODUS_VM_BIN_DIR=%q\n' "$bin_dir"
  # The guest stops its checks itself a little before the host's bound.
  printf 'NODUS_VM_GUEST_TIMEOUT=%q\n' "${NODUS_VM_GUEST_TIMEOUT:-$(( vm_timeout > 120 ? vm_timeout - 60 : vm_timeout / 2 ))}"
} > "$run/results/env"

# The guest's disk: a qcow2 overlay of the cached image, private to this run. A guest reboot (the
# node checks reboot the node once) ends qemu (-no-reboot, so a guest panic still ends the run at
# once) and the next qemu boots the same overlay: the disk state survives as it would on a real
# node, and the host sees each boot.
qemu-img create -q -f qcow2 -F raw -b "$image_dir/rootfs.img" "$run/disk.qcow2"
max_boots=${NODUS_VM_MAX_BOOTS:-2}
log "booting ($accel_name, timeout ${vm_timeout} s, runtimes: $runtimes)"
t_boot=$(now)
boots=0
qemu_rc=0
set +e
while :; do
  boots=$((boots + 1))
  left=$(awk -v a="$t_boot" -v b="$(now)" -v t="$vm_timeout" 'BEGIN { l = int(t - (b - a)); print (l > 1 ? l : 1) }')
  rm -f "$run/results/reboot-request"
  # In the background so that an interrupted run takes qemu down with it (timeout passes the
  # signal on to qemu).
  timeout -k 10 "$left" "$qemu" "${qemu_data[@]}" "${accel[@]}" -m 2048 -smp 2 \
    -nodefaults -display none -no-reboot -no-user-config \
    -kernel "$kernel_dir/vmlinux" -initrd "$image_dir/initrd.img" -append "$KERNEL_CMDLINE" \
    -drive "file=$run/disk.qcow2,format=qcow2,if=virtio,cache=unsafe" \
    -virtfs "local,path=$repo,mount_tag=nodus,security_model=none,readonly=on" \
    -virtfs "local,path=$run/results,mount_tag=results,security_model=none" \
    -serial "file:$run/console.$boots.log" > "$run/qemu.log" 2>&1 &
  vm_pid=$!
  trap 'kill "$vm_pid" 2>/dev/null; wait "$vm_pid"; exit 130' INT TERM HUP
  wait "$vm_pid"
  qemu_rc=$?
  trap - INT TERM HUP
  cat "$run/console.$boots.log" >> "$run/console.log" 2>/dev/null
  # The guest asks for a reboot by leaving reboot-request on the results share (no verdict yet).
  if [ "$qemu_rc" = 0 ] && [ -e "$run/results/reboot-request" ] && [ ! -s "$run/results/verdict" ] \
      && [ "$boots" -lt "$max_boots" ]; then
    log "the guest rebooted (boot $boots done after $(elapsed "$t_boot") s); booting again"
    continue
  fi
  break
done
set -e
vm_s=$(elapsed "$t_boot")

# The verdict: the file on the results share, else the marker on the console.
verdict=
if [ -s "$run/results/verdict" ]; then
  verdict=$(tr -dc '0-9' < "$run/results/verdict")
elif grep -q 'NODUS-VM-VERDICT rc=' "$run/console.log" 2>/dev/null; then
  verdict=$(grep -o 'NODUS-VM-VERDICT rc=[0-9]*' "$run/console.log" | tail -1 | cut -d= -f2)
fi

echo
echo "=== VM tier report ==="
printf '  %-22s %s\n' "accelerator" "$accel_name"
printf '  %-22s %s\n' "kernel" "$kver"
printf '  %-22s %s\n' "qemu/kernel/image" "$cache_note ($build_s s)"
if [ -s "$run/results/boots" ]; then
  while read -r n up; do
    printf '  %-22s %s s (kernel start to the test runner)\n' "boot $n (guest uptime)" "$up"
  done < "$run/results/boots"
fi
if [ -s "$run/results/metrics" ]; then
  while IFS=$'\t' read -r name value; do
    printf '  %-22s %s\n' "$name" "$value"
  done < "$run/results/metrics"
fi
passed=0 failed=0
if [ -s "$run/results/checks" ]; then
  while IFS= read -r line; do
    printf '  %s\n' "$line"
    case $line in PASS*) passed=$((passed + 1)) ;; FAIL*) failed=$((failed + 1)) ;; esac
  done < "$run/results/checks"
fi

# A missing verdict or check, or a failing verdict without a FAIL line, counts as a failure of its
# own so the closing count never reads clean when the run was not.
ok=1
if [ -z "$verdict" ]; then
  if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
    reason="the VM did not finish within $vm_timeout s"
  else
    reason="qemu exited $qemu_rc without one"
  fi
  printf '  FAIL verdict: no verdict from the guest: %s\n' "$reason"
  failed=$((failed + 1))
  [ -s "$run/qemu.log" ] && { log "qemu said:"; tail -20 "$run/qemu.log" >&2; }
  log "last console lines:"
  tail -40 "$run/console.log" >&2 2>/dev/null || true
elif [ "$verdict" != 0 ] && [ "$failed" -eq 0 ]; then
  printf '  FAIL verdict: guest exit status %s\n' "$verdict"
  failed=$((failed + 1))
fi
if [ "$passed" -eq 0 ] && [ "$failed" -eq 0 ]; then
  printf '  FAIL verdict: the guest reported no check\n'
  failed=$((failed + 1))
fi
[ "$failed" -eq 0 ] || ok=0
printf '  %-22s %s s, %s boot(s) (last qemu exit %s)\n' "VM run" "$vm_s" "$boots" "$qemu_rc"
printf '  %-22s %s s\n' "total" "$(elapsed "$t_start")"
echo "vm-test: $passed passed, $failed failed"
if [ "$ok" = 1 ] && [ "$keep" = 0 ]; then
  rm -rf "$run"
else
  log "run directory kept: $run (console.log, results/guest.log)"
fi
[ "$ok" = 1 ]
