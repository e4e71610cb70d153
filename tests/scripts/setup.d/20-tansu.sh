#!/usr/bin/env bash
# tansu: a Kafka-protocol broker written in Rust, installed from crates.io into
# $SLUICE_CACHE/bin. The Kafka tests start it on 127.0.0.1 (tests/src/kafka.rs).
# Building it takes about 9 minutes on 2 cores, so it is built once and reused.
set -euo pipefail
source tests/scripts/env.sh
version_req='^0.6'
installed_version() {
    # cargo's own record of what it installed under this root.
    [ -x "$SLUICE_CACHE/bin/tansu" ] || return 0
    python3 - "$SLUICE_CACHE/.crates2.json" <<'PY' 2>/dev/null || true
import json, sys
for key in json.load(open(sys.argv[1]))["installs"]:
    name, version = key.split()[:2]
    if name == "tansu":
        print(version)
PY
}
# One install at a time: a second run waits for the first, then finds it done.
mkdir -p "$SLUICE_CACHE"
exec 9>"$SLUICE_CACHE/.tansu-install.lock"
flock 9
case "$(installed_version)" in
    0.6.*) exit 0 ;;
esac
cargo install tansu --version "$version_req" --locked --features dynostore \
    --root "$SLUICE_CACHE" --force
