#!/bin/bash
# The VM tier's runner inside the guest (baked into the image as /usr/local/sbin/nodus-vm-run,
# started by nodus-vm.service once systemd reaches multi-user): mounts the repository (read-only)
# and the results directory over 9p, runs hack/vm/guest-tests.sh from the repository, writes the
# verdict to the results share, prints it as a marker on the serial console and powers off; or,
# when the checks ask for it (results/reboot-request), reboots and runs them again on the next boot
# (NODUS_VM_BOOT tells them which boot it is).
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
# Boots are counted on the guest's disk (it survives the reboot the node checks ask for).
boot=$(( $(cat /var/lib/nodus-vm/boot-count 2>/dev/null || echo 0) + 1 ))
mkdir -p /var/lib/nodus-vm
echo "$boot" > /var/lib/nodus-vm/boot-count
echo "$boot $boot_s" >> /results/boots

# Settings from the host (runtimes, checks, where the binaries are).
set -a
# shellcheck disable=SC1091
[ -f /results/env ] && . /results/env
set +a
export NODUS_VM_RESULTS=/results NODUS_VM_REPO=/nodus NODUS_VM_BOOT=$boot

tests=/nodus/hack/vm/guest-tests.sh
if [ ! -f "$tests" ]; then
  say "nodus-vm: $tests not found on the repository share"
  finish 125
fi
# A heartbeat straight to the console (not through 9p): tells a frozen guest from a stuck check.
( while sleep 30; do say "nodus-vm: alive at $(cut -d' ' -f1 /proc/uptime)s"; done ) &
heartbeat=$!
# The guest's own bound, below the host's, so that a stuck check still leaves a verdict and
# what was running.
timeout -k 5 "${NODUS_VM_GUEST_TIMEOUT:-500}" bash "$tests" 2>&1 | tee -a /results/guest.log > "$console"
rc=${PIPESTATUS[0]}
kill "$heartbeat" 2>/dev/null
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  say "nodus-vm: guest-tests.sh did not finish within ${NODUS_VM_GUEST_TIMEOUT:-500} s; processes:"
  ps --ppid 2 -p 2 --deselect -o pid,ppid,stat,wchan:30,etime,args > "$console" 2>&1  # no kernel threads
  dmesg -n 7
  echo w > /proc/sysrq-trigger   # blocked tasks with their stacks, to the console
  sleep 1
fi
# The checks asked for a reboot (and will carry on on the next boot): reboot as a user would, the
# host boots the same disk again. No verdict yet.
if [ -e /results/reboot-request ] && [ "$rc" != 124 ] && [ "$rc" != 137 ]; then
  say "nodus-vm: rebooting as the checks asked (boot $boot, uptime $(cut -d' ' -f1 /proc/uptime)s)"
  sync
  systemctl reboot --no-block
  exit 0
fi
finish "$rc"
