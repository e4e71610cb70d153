#!/usr/bin/env bash
# tansu: a Kafka-protocol broker written in Rust, installed from crates.io into
# $SLUICE_CACHE/bin. The Kafka tests start it on 127.0.0.1 (tests/src/kafka.rs)
# with its SQLite storage engine (the `libsql` feature), which keeps topics
# and consumer-group offsets across a broker restart.
# Building it takes about 9 minutes on 2 cores, so it is built once and reused.
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
cargo install tansu --version "$version_req" --locked --features "$features" \
    --root "$SLUICE_CACHE" --force
