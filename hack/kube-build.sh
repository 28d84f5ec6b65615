#!/usr/bin/env bash
# Builds Kubernetes binaries from Debian bookworm's source package `kubernetes` (1.20.2, the
# whole tree with vendor/) with Debian's Go 1.19, and prints their paths, one a line.
# Cached in build/kube-apiserver/ of this clone (the tree is in src/, binaries in bin/; the
# API server stays at build/kube-apiserver/kube-apiserver, where hack/kube-apiserver.sh
# always put it): a second run prints the paths at once.
#
#   bash hack/kube-build.sh kube-apiserver kube-controller-manager kube-scheduler kubelet kubeadm \
#        e2e.test ginkgo agnhost nonewprivs
#
# Only Debian's archive is used: deb-src comes from a private apt directory (build/apt), so
# the machine's own apt sources stay as they are. Debian's vendored modern-go/reflect2 is
# swapped for golang-github-modern-go-reflect2-dev: the vendored one panics on map decoding
# under Go 1.19. Everything missing is built by one `make`, under a lock (one make at a
# time: they share src/_output).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

out=build/kube-apiserver
version=v1.20.2
log() { echo "kube-build.sh: $*" >&2; }

# The make target (package path in the tree) of each binary we know.
what_of() {
  case "$1" in
    kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kubeadm) echo "cmd/$1" ;;
    e2e.test) echo test/e2e/e2e.test ;;
    ginkgo) echo vendor/github.com/onsi/ginkgo/ginkgo ;;
    agnhost | nonewprivs) echo "test/images/$1" ;;
    *) return 1 ;;
  esac
}
bin_of() {
  if [ "$1" = kube-apiserver ]; then echo "$out/kube-apiserver"; else echo "$out/bin/$1"; fi
}
stamp_of() {
  if [ "$1" = kube-apiserver ]; then echo "$out/.built-$version"; else echo "$out/bin/.built-$1-$version"; fi
}

[ $# -gt 0 ] || { log "usage: $0 NAME..."; exit 2; }
missing_bins=()
for name in "$@"; do
  what_of "$name" >/dev/null || { log "unknown binary $name"; exit 2; }
  if [ ! -x "$(bin_of "$name")" ] || [ ! -f "$(stamp_of "$name")" ]; then
    missing_bins+=("$name")
  fi
done

if [ ${#missing_bins[@]} -gt 0 ]; then
  mkdir -p "$out/bin"
  exec 9>"$out/.make.lock"
  flock 9

  need=(golang-1.19-go golang-github-modern-go-reflect2-dev dpkg-dev rsync jq)
  missing=()
  for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    }
  fi

  apt_dir=$root/build/apt
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" \
    >"$apt_dir/sources.list"
  apt_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/nonexistent
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o Debug::NoLocking=1
  )

  src=$out/src
  if [ ! -d "$src" ]; then
    log "fetching Debian's kubernetes source package"
    apt-get "${apt_opts[@]}" update -qq
    work=$(mktemp -d "$root/build/kube-src.XXXXXX")
    (cd "$work" && apt-get "${apt_opts[@]}" source -qq kubernetes >/dev/null 2>&1)
    tree=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -1)
    [ -n "$tree" ] || { log "apt-get source kubernetes gave no tree"; exit 1; }
    mv "$tree" "$src"
    rm -rf "$work"
  fi

  gosrc=/usr/share/gocode/src/github.com/modern-go/reflect2
  if [ ! -L "$src/vendor/github.com/modern-go/reflect2" ]; then
    rm -rf "$src/vendor/github.com/modern-go/reflect2"
    ln -s "$gosrc" "$src/vendor/github.com/modern-go/reflect2"
  fi

  whats=()
  for name in "${missing_bins[@]}"; do whats+=("$(what_of "$name")"); done
  log "building ${whats[*]} $version with Go 1.19 (minutes; see $out/make.log)"
  # Kubernetes' own make rules (as Debian's debian/rules uses them): they run the code
  # generators (openapi, deepcopy...) first and build in GOPATH mode against vendor/.
  cat >"$out/version.env" <<EOV
KUBE_GIT_COMMIT=''
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_VERSION='$version'
KUBE_GIT_MAJOR='1'
KUBE_GIT_MINOR='20'
EOV
  (
    cd "$src"
    # Static binaries (agnhost and nonewprivs go into images without a libc).
    export PATH=/usr/lib/go-1.19/bin:$PATH CGO_ENABLED=0 GOPROXY=off GOFLAGS=
    export GOCACHE=$root/build/go-cache HOME=$root/build/go-home
    export KUBE_GIT_VERSION_FILE=$root/$out/version.env
    make WHAT="${whats[*]}" GOLDFLAGS="-s -w" >"$root/$out/make.log" 2>&1 || {
      tail -30 "$root/$out/make.log" >&2
      # make trusts what a failed run left in _output: start clean next time.
      rm -rf "$root/$src/_output"
      exit 1
    }
  )
  for name in "${missing_bins[@]}"; do
    bin=$(bin_of "$name")
    cp "$src/_output/bin/$name" "$bin.tmp"
    mv "$bin.tmp" "$bin"
    touch "$(stamp_of "$name")"
  done
fi

for name in "$@"; do echo "$root/$(bin_of "$name")"; done
