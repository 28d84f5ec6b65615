#!/usr/bin/env bash
# Installs Nodus on this node (idempotent):
#   binaries      /usr/local/bin/{kubelet,nodus-runtime,containerd-shim-nodus-v2}, /opt/cni/bin/nodus-bridge
#   CNI           /etc/cni/net.d/10-nodus.conflist (+ loopback, host-local, portmap in /opt/cni/bin)
#   containerd    /etc/containerd/config.toml (the original kept as config.toml.nodus-orig)
#   kubelet       /var/lib/kubelet/config.yaml, /etc/kubernetes/manifests,
#                 /etc/systemd/system/kubelet.service + kubelet.service.d/10-nodus.conf
#   images        /usr/local/share/nodus/images/*.tar, imported by nodus-images.service
# With systemd running, enables and starts containerd, nodus-images and kubelet.
#
# usage: hack/install.sh [--root DIR] [--no-build] [--bin-dir target/release]
#   --root DIR   install into DIR (an image being built); enables units there, starts nothing
set -euo pipefail
cd "$(dirname "$0")/.."

root=""
build=1
bin_dir=target/release
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="${2:?--root needs a directory}"; shift 2 ;;
    --no-build) build=0; shift ;;
    --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift 2 ;;
    *) echo "install: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

if [ "$build" = 1 ]; then
  [ -z "$root" ] && bash hack/install-deps.sh
  cargo build --release --locked --bins
  "$bin_dir/nodus-images" build --out build/images >/dev/null
fi
for b in kubelet nodus-runtime containerd-shim-nodus-v2 nodus-bridge; do
  [ -x "$bin_dir/$b" ] || { echo "install: $bin_dir/$b missing (build first)" >&2; exit 1; }
done

r="$root"
install -d "$r/usr/local/bin" "$r/opt/cni/bin" "$r/etc/cni/net.d" "$r/etc/containerd" \
  "$r/var/lib/kubelet" "$r/etc/kubernetes/manifests" "$r/etc/systemd/system/kubelet.service.d" \
  "$r/usr/local/share/nodus/images" "$r/var/log/pods"
install -m 0755 "$bin_dir/kubelet" "$bin_dir/nodus-runtime" "$bin_dir/containerd-shim-nodus-v2" "$r/usr/local/bin/"
install -m 0755 "$bin_dir/nodus-bridge" "$r/opt/cni/bin/"
for p in loopback host-local portmap; do ln -sfn "/usr/lib/cni/$p" "$r/opt/cni/bin/$p"; done
install -m 0644 hack/deploy/10-nodus.conflist "$r/etc/cni/net.d/10-nodus.conflist"

cfg="$r/etc/containerd/config.toml"
if [ -f "$cfg" ] && ! cmp -s "$cfg" hack/deploy/containerd-config.toml && [ ! -f "$cfg.nodus-orig" ]; then
  cp -p "$cfg" "$cfg.nodus-orig"
fi
install -m 0644 hack/deploy/containerd-config.toml "$cfg"

# The operator's kubelet config is kept if it exists.
[ -f "$r/var/lib/kubelet/config.yaml" ] || install -m 0644 hack/deploy/kubelet-config.yaml "$r/var/lib/kubelet/config.yaml"
install -m 0644 hack/deploy/kubelet.service "$r/etc/systemd/system/kubelet.service"
install -m 0644 hack/deploy/kubelet.service.d/10-nodus.conf "$r/etc/systemd/system/kubelet.service.d/10-nodus.conf"
install -m 0644 hack/deploy/nodus-images.service "$r/etc/systemd/system/nodus-images.service"
install -m 0644 build/images/pause.tar build/images/busybox.tar "$r/usr/local/share/nodus/images/"

if [ -n "$root" ]; then
  systemctl --root="$root" enable containerd.service nodus-images.service kubelet.service >/dev/null 2>&1 || {
    ln -sfn /lib/systemd/system/containerd.service "$root/etc/systemd/system/multi-user.target.wants/containerd.service"
    ln -sfn /etc/systemd/system/nodus-images.service "$root/etc/systemd/system/multi-user.target.wants/nodus-images.service"
    ln -sfn /etc/systemd/system/kubelet.service "$root/etc/systemd/system/multi-user.target.wants/kubelet.service"
  }
  echo "install: installed into $root (units enabled, nothing started)"
elif [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable containerd.service nodus-images.service kubelet.service
  systemctl restart containerd.service
  systemctl restart nodus-images.service
  systemctl restart kubelet.service
  echo "install: containerd, nodus-images and kubelet enabled and started"
else
  echo "install: files installed; systemd is not running here, so start containerd and" \
       "/usr/local/bin/kubelet --config=/var/lib/kubelet/config.yaml yourself"
fi
