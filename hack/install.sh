#!/usr/bin/env bash
# Installs Nodus on this node (idempotent: a second run changes nothing and restarts only what
# changed):
#   binaries      /usr/local/bin/{kubelet,nodus-runtime,containerd-shim-nodus-v2}, /opt/cni/bin/nodus-bridge
#                 (nodus-runtime: its lean static build, profile `lean`, when this script builds)
#   CNI           /etc/cni/net.d/10-nodus.conflist (+ loopback, host-local, portmap in /opt/cni/bin)
#   containerd    /etc/containerd/config.toml (the original kept as config.toml.nodus-orig)
#   kubelet       /var/lib/kubelet/config.yaml (kept if present), /etc/kubernetes/manifests,
#                 /etc/systemd/system/kubelet.service + kubelet.service.d/10-nodus.conf
#   images        /usr/local/share/nodus/images/*.tar, imported by nodus-images.service
#   --demo        the example static pods (hack/deploy/manifests) in /etc/kubernetes/manifests
#   --kubeconfig  joins a cluster: FILE becomes /etc/kubernetes/kubelet.conf (0600), its CA
#                 /etc/kubernetes/pki/ca.crt, and the drop-in 20-kubeconfig.conf passes
#                 --kubeconfig and the kubelet API's webhook authn/authz flags (as kubeadm)
#   --join ARGS...  joins a cluster with `kubeadm join ARGS...` (kubeadm from PATH or $KUBEADM;
#                 every argument after --join is kubeadm's): installs kubeadm's kubelet drop-in
#                 (20-kubeadm.conf: bootstrap and node kubeconfigs, kubeadm-flags.env), starts
#                 containerd but not the kubelet (kubeadm's preflight wants port 10250 free),
#                 then kubeadm writes config.yaml from the cluster, restarts the kubelet and waits
#                 for its TLS bootstrap
#   --bootstrap-kubeconfig  joins by TLS bootstrap, as after `kubeadm join`: FILE (a bootstrap
#                 token's kubeconfig) becomes /etc/kubernetes/bootstrap-kubelet.conf and the
#                 kubelet writes /etc/kubernetes/kubelet.conf itself from the certificate the
#                 cluster signs (kept in /var/lib/kubelet/pki)
#   cgroups       the systemd cgroup driver where systemd is the init system (kubeadm's default:
#                 pod slices, container scopes; cgroupfs elsewhere): the kubelet's cgroupDriver
#                 and containerd's SystemdCgroup always agree; a kept config.yaml's cgroupDriver
#                 decides
# With systemd running, enables and starts containerd, nodus-images and kubelet.
#
# usage: hack/install.sh [--root DIR] [--no-build] [--bin-dir target/release] [--demo]
#                        [--kubeconfig FILE | --bootstrap-kubeconfig FILE]
#                        [--cgroup-driver systemd|cgroupfs] [--join KUBEADM-JOIN-ARGS...]
#   --root DIR     install into DIR (an image being built); enables units there, starts nothing
#   --no-build     use the binaries in --bin-dir and the images in build/images as they are
#   --bin-dir DIR  where the binaries are (default target/release)
#   --demo         also install the example static pods
#   --kubeconfig   the node's kubeconfig (client certificate of system:node:<name>)
#   --cgroup-driver  for a new config.yaml (default: systemd if systemd runs, or is in --root)
set -euo pipefail
cd "$(dirname "$0")/.."

root=""
build=1
demo=0
kubeconfig=""
bootstrap=""
driver=""
join_args=()
joining=0
bin_dir=target/release
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="${2:?--root needs a directory}"; shift 2 ;;
    --no-build) build=0; shift ;;
    --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift 2 ;;
    --demo) demo=1; shift ;;
    --kubeconfig) kubeconfig="${2:?--kubeconfig needs a file}"; shift 2 ;;
    --bootstrap-kubeconfig) bootstrap="${2:?--bootstrap-kubeconfig needs a file}"; shift 2 ;;
    --cgroup-driver) driver="${2:?--cgroup-driver needs systemd or cgroupfs}"; shift 2 ;;
    --join) shift; joining=1; join_args=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "install: run as root" >&2; exit 1; }

runtime_bin="$bin_dir/nodus-runtime"
kubelet_bin="$bin_dir/kubelet"
if [ "$build" = 1 ]; then
  [ -z "$root" ] && bash hack/install-deps.sh
  cargo build --release --locked --bins
  "$bin_dir/nodus-images" build --out build/images >/dev/null
  # nodus-runtime runs once per container operation: install its lean build (profile `lean`,
  # static glibc; see the root Cargo.toml). The explicit --target puts it in
  # target/<triple>/lean/ and keeps RUSTFLAGS off the other binaries.
  triple="$(rustc -vV | sed -n 's/^host: //p')"
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --profile lean --locked --target "$triple" -p nodus-runtime --bin nodus-runtime
  runtime_bin="${CARGO_TARGET_DIR:-target}/$triple/lean/nodus-runtime"
  # The kubelet's resident size is mostly its code: profile `node` (size-optimized, LTO).
  cargo build --profile node --locked -p nodus-kubelet --bin kubelet
  kubelet_bin="${CARGO_TARGET_DIR:-target}/node/kubelet"
fi
[ -x "$kubelet_bin" ] || { echo "install: $kubelet_bin missing (build first)" >&2; exit 1; }
[ -z "$kubeconfig" ] || [ -f "$kubeconfig" ] || { echo "install: --kubeconfig $kubeconfig: no such file" >&2; exit 1; }
[ -z "$bootstrap" ] || [ -f "$bootstrap" ] || { echo "install: --bootstrap-kubeconfig $bootstrap: no such file" >&2; exit 1; }
[ -z "$kubeconfig" ] || [ -z "$bootstrap" ] || { echo "install: --kubeconfig and --bootstrap-kubeconfig: give one" >&2; exit 2; }
if [ "$joining" = 1 ]; then
  [ -z "$kubeconfig$bootstrap$root" ] || { echo "install: --join goes without --kubeconfig, --bootstrap-kubeconfig and --root" >&2; exit 2; }
  [ ${#join_args[@]} -gt 0 ] || { echo "install: --join needs kubeadm join's arguments (API server endpoint, --token, discovery)" >&2; exit 2; }
  kubeadm_bin=${KUBEADM:-$(command -v kubeadm || true)}
  [ -n "$kubeadm_bin" ] && [ -x "$kubeadm_bin" ] || { echo "install: --join: no kubeadm in PATH (or set KUBEADM)" >&2; exit 1; }
  [ -d /run/systemd/system ] || { echo "install: --join: kubeadm join restarts kubelet.service, so systemd must be running" >&2; exit 1; }
  # A second run must not stop a joined node's kubelet only to have kubeadm's preflight refuse.
  [ ! -f /etc/kubernetes/kubelet.conf ] || { echo "install: --join: this node has joined a cluster already (/etc/kubernetes/kubelet.conf exists); run kubeadm reset first, or hack/install.sh without --join to update Nodus" >&2; exit 2; }
fi
for b in containerd-shim-nodus-v2 nodus-bridge; do
  [ -x "$bin_dir/$b" ] || { echo "install: $bin_dir/$b missing (build first)" >&2; exit 1; }
done
[ -x "$runtime_bin" ] || { echo "install: $runtime_bin missing (build first)" >&2; exit 1; }
for i in pause busybox; do
  [ -f "build/images/$i.tar" ] || { echo "install: build/images/$i.tar missing (nodus-images build --out build/images)" >&2; exit 1; }
done

r="$root"
case "$driver" in
  ""|systemd|cgroupfs) ;;
  *) echo "install: --cgroup-driver $driver: supported values: systemd, cgroupfs" >&2; exit 2 ;;
esac
# The cgroup driver: a kept config.yaml's, else --cgroup-driver, else systemd where it is the
# init system (of this machine, or of the --root image).
# cgroup_driver_of FILE: the cgroupDriver a KubeletConfiguration sets (quoted or not), if any.
cgroup_driver_of() { sed -n "s/^cgroupDriver: *[\"']\{0,1\}\([a-z]*\).*/\1/p" "$1" | head -n1; }
kept_driver=""
[ -f "$r/var/lib/kubelet/config.yaml" ] && kept_driver=$(cgroup_driver_of "$r/var/lib/kubelet/config.yaml")
if [ -f "$r/var/lib/kubelet/config.yaml" ]; then
  if [ -n "$driver" ] && [ "$driver" != "${kept_driver:-cgroupfs}" ]; then
    echo "install: --cgroup-driver $driver, but the kept $r/var/lib/kubelet/config.yaml says cgroupDriver: ${kept_driver:-cgroupfs}" >&2
    exit 2
  fi
  driver=${kept_driver:-cgroupfs}
elif [ -z "$driver" ]; then
  # Nodus runs the systemd driver on pure cgroup v2 only (as the kubelet and runtime check).
  if [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ] &&
      { { [ -z "$root" ] && [ -d /run/systemd/system ]; } || { [ -n "$root" ] && [ -x "$root/lib/systemd/systemd" ]; }; }; then
    driver=systemd
  else
    driver=cgroupfs
  fi
fi
systemd_cgroup=false
[ "$driver" = systemd ] && systemd_cgroup=true
# What changed, to restart only the services concerned (a re-run on an installed node is a no-op).
changed_containerd=0 changed_kubelet=0 changed_images=0 changed_units=0
# put MODE SRC DST [flag]: install SRC as DST if it differs; sets changed_<flag>=1 when it did.
put() {
  local mode=$1 src=$2 dst=$3 flag=${4:-}
  cmp -s "$src" "$dst" && return 0
  install -m "$mode" "$src" "$dst.nodus-new"
  mv -f "$dst.nodus-new" "$dst"   # atomic: a running binary is replaced, not overwritten
  [ -z "$flag" ] || printf -v "changed_$flag" 1
}

install -d "$r/usr/local/bin" "$r/opt/cni/bin" "$r/etc/cni/net.d" "$r/etc/containerd" \
  "$r/var/lib/kubelet" "$r/etc/kubernetes/manifests" "$r/etc/systemd/system/kubelet.service.d" \
  "$r/usr/local/share/nodus/images" "$r/var/log/pods"
put 0755 "$kubelet_bin" "$r/usr/local/bin/kubelet" kubelet
put 0755 "$runtime_bin" "$r/usr/local/bin/nodus-runtime"
put 0755 "$bin_dir/containerd-shim-nodus-v2" "$r/usr/local/bin/containerd-shim-nodus-v2"
put 0755 "$bin_dir/nodus-bridge" "$r/opt/cni/bin/nodus-bridge"
# Debian's reference plugins live in /usr/lib/cni; containerd looks in /opt/cni/bin.
for p in loopback host-local portmap; do
  [ -e "$r/opt/cni/bin/$p" ] || ln -sfn "/usr/lib/cni/$p" "$r/opt/cni/bin/$p"
done
put 0644 hack/deploy/10-nodus.conflist "$r/etc/cni/net.d/10-nodus.conflist"

cfg="$r/etc/containerd/config.toml"
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
sed "s/^\( *SystemdCgroup = \).*/\1$systemd_cgroup/" hack/deploy/containerd-config.toml > "$gen/containerd.toml"
# Ours with either driver is not the original to keep.
if [ -f "$cfg" ] && [ ! -f "$cfg.nodus-orig" ] &&
    ! sed 's/^\( *SystemdCgroup = \).*/\1false/' "$cfg" | cmp -s - hack/deploy/containerd-config.toml; then
  cp -p "$cfg" "$cfg.nodus-orig"
fi
put 0644 "$gen/containerd.toml" "$cfg" containerd

# The operator's kubelet config is kept if it exists; kubeadm join writes the cluster's.
if [ "$joining" = 0 ] && [ ! -f "$r/var/lib/kubelet/config.yaml" ]; then
  sed "s/^cgroupDriver: .*/cgroupDriver: $driver/" hack/deploy/kubelet-config.yaml > "$gen/kubelet.yaml"
  install -m 0644 "$gen/kubelet.yaml" "$r/var/lib/kubelet/config.yaml"
  changed_kubelet=1
fi
put 0644 hack/deploy/kubelet.service "$r/etc/systemd/system/kubelet.service" units
put 0644 hack/deploy/kubelet.service.d/10-nodus.conf "$r/etc/systemd/system/kubelet.service.d/10-nodus.conf" units
join="${kubeconfig:-$bootstrap}"
if [ "$joining" = 1 ]; then
  put 0644 hack/deploy/kubelet.service.d/20-kubeadm.conf "$r/etc/systemd/system/kubelet.service.d/20-kubeconfig.conf" units
elif [ -n "$join" ]; then
  if [ -n "$kubeconfig" ]; then
    put 0600 "$kubeconfig" "$r/etc/kubernetes/kubelet.conf" kubelet
    dropin=hack/deploy/kubelet.service.d/20-kubeconfig.conf
  else
    put 0600 "$bootstrap" "$r/etc/kubernetes/bootstrap-kubelet.conf" kubelet
    dropin=hack/deploy/kubelet.service.d/20-bootstrap-kubeconfig.conf
  fi
  # The cluster CA verifies the API server's client certificate on 10250 (clientCAFile,
  # /etc/kubernetes/pki/ca.crt as kubeadm): taken from the kubeconfig's cluster.
  install -d "$r/etc/kubernetes/pki"
  ca_tmp=$(mktemp)
  ca_data=$(sed -n 's/^ *certificate-authority-data: *//p' "$join" | head -n1)
  ca_file=$(sed -n 's/^ *certificate-authority: *//p' "$join" | head -n1)
  if [ -n "$ca_data" ]; then
    printf '%s' "$ca_data" | base64 -d > "$ca_tmp"
  elif [ -n "$ca_file" ] && [ -f "$ca_file" ]; then
    cp "$ca_file" "$ca_tmp"
  else
    rm -f "$ca_tmp"
    echo "install: $join: no certificate-authority(-data) for the kubelet's clientCAFile" >&2
    exit 1
  fi
  put 0644 "$ca_tmp" "$r/etc/kubernetes/pki/ca.crt" kubelet
  rm -f "$ca_tmp"
  put 0644 "$dropin" "$r/etc/systemd/system/kubelet.service.d/20-kubeconfig.conf" units
fi
put 0644 hack/deploy/nodus-images.service "$r/etc/systemd/system/nodus-images.service" units
for i in pause busybox; do
  put 0644 "build/images/$i.tar" "$r/usr/local/share/nodus/images/$i.tar" images
done
if [ "$demo" = 1 ]; then
  for m in hack/deploy/manifests/*.yaml; do
    put 0644 "$m" "$r/etc/kubernetes/manifests/$(basename "$m")"
  done
fi

units=(containerd.service nodus-images.service kubelet.service)
if [ -n "$root" ]; then
  systemctl --root="$root" enable "${units[@]}" >/dev/null 2>&1 || {
    install -d "$root/etc/systemd/system/multi-user.target.wants"
    ln -sfn /lib/systemd/system/containerd.service "$root/etc/systemd/system/multi-user.target.wants/containerd.service"
    ln -sfn /etc/systemd/system/nodus-images.service "$root/etc/systemd/system/multi-user.target.wants/nodus-images.service"
    ln -sfn /etc/systemd/system/kubelet.service "$root/etc/systemd/system/multi-user.target.wants/kubelet.service"
  }
  echo "install: installed into $root (units enabled, nothing started)"
elif [ "$joining" = 1 ]; then
  [ "$changed_units" = 0 ] || systemctl daemon-reload
  systemctl enable --quiet "${units[@]}"
  systemctl stop kubelet.service
  if [ "$changed_containerd" = 1 ]; then systemctl restart containerd.service; else systemctl start containerd.service; fi
  systemctl restart nodus-images.service
  # Not the arguments: they hold the bootstrap token.
  echo "install: Nodus installed (cgroup driver $driver); running $kubeadm_bin join"
  "$kubeadm_bin" join "${join_args[@]}"
  # kubeadm wrote the cluster's kubelet config: its cgroupDriver must be containerd's.
  joined_driver=$(cgroup_driver_of /var/lib/kubelet/config.yaml)
  if [ "${joined_driver:-cgroupfs}" != "$driver" ]; then
    echo "install: WARNING: the cluster's kubelet config says cgroupDriver: ${joined_driver:-cgroupfs}, containerd was set up for $driver;" \
      "run hack/install.sh --cgroup-driver ${joined_driver:-cgroupfs} (or set cgroupDriver in the kubelet-config ConfigMap)" >&2
  fi
  echo "install: joined; kubelet.service runs with /etc/kubernetes/kubelet.conf"
elif [ -d /run/systemd/system ]; then
  [ "$changed_units" = 0 ] || systemctl daemon-reload
  systemctl enable --quiet "${units[@]}"
  # Restarting containerd or the kubelet leaves running containers alone (their shims and
  # cgroups are their own); still, only what changed is restarted.
  if [ "$changed_containerd" = 1 ]; then systemctl restart containerd.service; else systemctl start containerd.service; fi
  if [ "$changed_images" = 1 ] || [ "$changed_containerd" = 1 ]; then
    systemctl restart nodus-images.service
  else
    systemctl start nodus-images.service
  fi
  if [ "$changed_kubelet" = 1 ] || [ "$changed_units" = 1 ]; then systemctl restart kubelet.service; else systemctl start kubelet.service; fi
  echo "install: containerd, nodus-images and kubelet enabled and running, cgroup driver $driver" \
    "(restarted: containerd=$changed_containerd images=$changed_images kubelet=$((changed_kubelet | changed_units)))"
else
  echo "install: files installed; systemd is not running here, so start containerd and" \
       "/usr/local/bin/kubelet --config=/var/lib/kubelet/config.yaml yourself"
fi
