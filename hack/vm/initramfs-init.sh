#!/bin/busybox sh
# /init of the VM tier's initramfs (hack/vm-test.sh builds it): the Debian kernel has virtio-blk
# and ext4 as modules, so load them (in the order resolved on the host), mount root= and hand
# over to systemd. On any failure, print a verdict marker so the host stops waiting.
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
  echo "initramfs: $*"
  echo "NODUS-VM-VERDICT rc=126"
  poweroff -f
}

mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys

while read -r ko; do
  # "File exists": already loaded as a dependency; other errors show up as a missing device.
  insmod "/modules/$ko" 2>/dev/null
done < /modules/order

root=/dev/vda
for arg in $(cat /proc/cmdline); do
  case $arg in root=*) root=${arg#root=} ;; esac
done

i=0
while [ ! -b "$root" ]; do
  i=$((i + 1))
  [ $i -gt 100 ] && fail "root device $root did not appear"
  sleep 0.05
done
mount -t ext4 -o rw "$root" /newroot || fail "cannot mount $root"

mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /sbin/init
