#!/usr/bin/env bash
# Removes what hack/install.sh put in place and restores containerd's original config.
# The example pods (install.sh --demo) are removed through the kubelet first (their manifests
# go, the kubelet stops them); pods from other manifests in /etc/kubernetes/manifests are the
# operator's: their manifests and pods stay (a warning names how many sandboxes remain).
# Leaves containerd itself (a Debian package) and its images alone.
#
# usage: hack/uninstall.sh [ROOT]   (ROOT: an image install.sh --root installed into)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
r="${1:-}"
live=0
[ -z "$r" ] && [ -d /run/systemd/system ] && live=1

ctr_k8s() { timeout 20 ctr --namespace k8s.io "$@"; }
# The example pods' manifests, if they are still ours.
demo=()
for m in "$here"/deploy/manifests/*.yaml; do
  f="$r/etc/kubernetes/manifests/$(basename "$m")"
  cmp -s "$m" "$f" && demo+=("$f")
done
if [ ${#demo[@]} -gt 0 ]; then
  rm -f "${demo[@]}"
  if [ "$live" = 1 ] && systemctl is-active --quiet kubelet.service; then
    # The kubelet sees the manifests go and stops their pods (grace period, then sandbox removal).
    names=$(sed -n 's/^  name: \(.*\)$/\1/p' "$here"/deploy/manifests/*.yaml | paste -sd'|')
    for _ in $(seq 120); do
      left=$(ctr_k8s containers ls -q "labels.\"io.kubernetes.pod.name\"~=^($names)-" 2>/dev/null | wc -l) || left=0
      [ "$left" -eq 0 ] && break
      sleep 0.5
    done
    [ "$left" -eq 0 ] || echo "uninstall: warning: the example pods still have $left containers after 60 s" >&2
  fi
fi
if [ "$live" = 1 ]; then
  systemctl disable --quiet --now kubelet.service nodus-images.service 2>/dev/null || true
fi
rm -f "$r/usr/local/bin/kubelet" "$r/usr/local/bin/nodus-runtime" "$r/usr/local/bin/containerd-shim-nodus-v2" \
  "$r/opt/cni/bin/nodus-bridge" "$r/etc/cni/net.d/10-nodus.conflist" \
  "$r/etc/systemd/system/kubelet.service" "$r/etc/systemd/system/nodus-images.service" \
  "$r/etc/systemd/system/kubelet.service.d/10-nodus.conf" "$r/var/lib/kubelet/config.yaml" \
  "$r/etc/systemd/system/kubelet.service.d/20-kubeconfig.conf" \
  "$r/var/lib/kubelet/pki/kubelet.crt" "$r/var/lib/kubelet/pki/kubelet.key"
# The cluster's kubeconfig and CA (/etc/kubernetes/kubelet.conf, pki/ca.crt) are the
# operator's credentials and stay (remove them by hand to leave the cluster for good).
rmdir "$r/var/lib/kubelet/pki" 2>/dev/null || true
for p in loopback host-local portmap; do
  [ -L "$r/opt/cni/bin/$p" ] && [ "$(readlink "$r/opt/cni/bin/$p")" = "/usr/lib/cni/$p" ] && rm -f "$r/opt/cni/bin/$p"
done
# Offline (ROOT given) the units' enable links go by hand; containerd stays enabled (Debian's).
rm -f "$r/etc/systemd/system/multi-user.target.wants/kubelet.service" \
  "$r/etc/systemd/system/multi-user.target.wants/nodus-images.service"
rmdir "$r/etc/systemd/system/kubelet.service.d" 2>/dev/null || true
rm -rf "$r/usr/local/share/nodus"
cfg="$r/etc/containerd/config.toml"
if [ -f "$cfg.nodus-orig" ]; then
  mv -f "$cfg.nodus-orig" "$cfg"
elif [ -f "$cfg" ] && sed 's/^\( *SystemdCgroup = \).*/\1false/' "$cfg" |
    cmp -s - "$here/deploy/containerd-config.toml"; then
  # Ours, with either cgroup driver.
  rm -f "$cfg"
fi
if [ "$live" = 1 ]; then
  systemctl daemon-reload
  # Only the config changes: running containers survive a containerd restart.
  systemctl restart containerd.service || true
  left=$(ctr_k8s containers ls -q 2>/dev/null | wc -l) || left=0
  [ "$left" -eq 0 ] || echo "uninstall: $left containers of other static pods remain in containerd (k8s.io);" \
    "remove their manifests from /etc/kubernetes/manifests before uninstalling to have them stopped" >&2
fi
echo "uninstall: done"
