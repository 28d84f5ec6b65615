#!/usr/bin/env bash
# Builds a real kube-apiserver for the API-server tests from Debian bookworm's source package
# `kubernetes` (1.20.2, the whole tree with vendor/) with Debian's Go 1.19, and prints its path.
# Cached in build/kube-apiserver/ of this clone: a second run prints the path at once.
#
#   bash hack/kube-apiserver.sh          # build if needed, print the binary's path
#
# Only Debian's archive is used: deb-src comes from a private apt directory (build/apt), so
# the machine's own apt sources stay as they are. Debian's vendored modern-go/reflect2 is
# swapped for golang-github-modern-go-reflect2-dev: the vendored one panics on map decoding
# under Go 1.19.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

out=build/kube-apiserver
bin=$out/kube-apiserver
version=v1.20.2
stamp=$out/.built-$version

if [ -x "$bin" ] && [ -f "$stamp" ]; then
  echo "$root/$bin"
  exit 0
fi

log() { echo "kube-apiserver.sh: $*" >&2; }

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
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$out"
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

log "building cmd/kube-apiserver $version with Go 1.19 (a few minutes)"
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
  export PATH=/usr/lib/go-1.19/bin:$PATH CGO_ENABLED=0 GOPROXY=off GOFLAGS=
  export GOCACHE=$root/build/go-cache HOME=$root/build/go-home
  export KUBE_GIT_VERSION_FILE=$root/$out/version.env
  make WHAT=cmd/kube-apiserver GOLDFLAGS="-s -w" >"$root/$out/make.log" 2>&1 || {
    tail -30 "$root/$out/make.log" >&2
    # make trusts what a failed run left in _output: start clean next time.
    rm -rf "$root/$src/_output"
    exit 1
  }
)
cp "$src/_output/bin/kube-apiserver" "$bin.tmp"
mv "$bin.tmp" "$bin"
touch "$stamp"
echo "$root/$bin"
