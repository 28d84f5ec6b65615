#!/usr/bin/env bash
# Removes what hack/install.sh put in place and restores containerd's original config.
# Leaves containerd itself (a Debian package) and the pods' data in containerd alone.
set -euo pipefail
r="${1:-}"
if [ -z "$r" ] && [ -d /run/systemd/system ]; then
  systemctl disable --now kubelet.service nodus-images.service 2>/dev/null || true
fi
rm -f "$r/usr/local/bin/kubelet" "$r/usr/local/bin/nodus-runtime" "$r/usr/local/bin/containerd-shim-nodus-v2" \
  "$r/opt/cni/bin/nodus-bridge" "$r/etc/cni/net.d/10-nodus.conflist" \
  "$r/etc/systemd/system/kubelet.service" "$r/etc/systemd/system/nodus-images.service" \
  "$r/etc/systemd/system/kubelet.service.d/10-nodus.conf" "$r/var/lib/kubelet/config.yaml"
for p in loopback host-local portmap; do
  [ -L "$r/opt/cni/bin/$p" ] && rm -f "$r/opt/cni/bin/$p"
done
rmdir "$r/etc/systemd/system/kubelet.service.d" 2>/dev/null || true
rm -rf "$r/usr/local/share/nodus"
cfg="$r/etc/containerd/config.toml"
if [ -f "$cfg.nodus-orig" ]; then
  mv -f "$cfg.nodus-orig" "$cfg"
elif cmp -s "$cfg" "$(dirname "$0")/deploy/containerd-config.toml" 2>/dev/null; then
  rm -f "$cfg"
fi
if [ -z "$r" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl restart containerd.service || true
fi
echo "uninstall: done"
