#!/bin/bash
# The VM tier's runner inside the guest (baked into the image as /usr/local/sbin/nodus-vm-run,
# started by nodus-vm.service once systemd reaches multi-user): mounts the repository (read-only)
# and the results directory over 9p, runs hack/vm/guest-tests.sh from the repository, writes the
# verdict to the results share, prints it as a marker on the serial console and powers off.
set -u
console=/dev/ttyS0
say() { echo "$*" > "$console"; }
finish() {
  local rc=$1
  [ -d /results ] && mountpoint -q /results && echo "$rc" > /results/verdict
  sync
  say "NODUS-VM-VERDICT rc=$rc"
  systemctl poweroff --force --force
  exit "$rc"
}

boot_s=$(cut -d' ' -f1 /proc/uptime)
say "nodus-vm: runner started at ${boot_s}s of uptime"
mkdir -p /nodus /results
opts=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o "$opts,ro" nodus /nodus || { say "nodus-vm: cannot mount the repository share"; finish 125; }
mount -t 9p -o "$opts" results /results || { say "nodus-vm: cannot mount the results share"; finish 125; }
echo "$boot_s" > /results/boot-seconds

# Settings from the host (runtimes, checks, where the binaries are).
set -a
# shellcheck disable=SC1091
[ -f /results/env ] && . /results/env
set +a
export NODUS_VM_RESULTS=/results NODUS_VM_REPO=/nodus

tests=/nodus/hack/vm/guest-tests.sh
if [ ! -f "$tests" ]; then
  say "nodus-vm: $tests not found on the repository share"
  finish 125
fi
bash "$tests" 2>&1 | tee /results/guest.log > "$console"
finish "${PIPESTATUS[0]}"
