#!/usr/bin/env bash
# Installs the real services the tests talk to. Idempotent. Everything lands
# under $SLUICE_CACHE (default ~/.cache/sluice) so later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC1091
source tests/scripts/env.sh
mkdir -p "$SLUICE_CACHE"

for step in tests/scripts/setup.d/*.sh; do
    [ -e "$step" ] || continue
    echo "setup: $step"
    bash "$step"
done
