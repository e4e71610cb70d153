#!/usr/bin/env bash
# Installs the real services the tests talk to. Idempotent. Everything lands
# under $SLUICE_CACHE (default ~/.cache/sluice) so later runs reuse it.
#
#   setup.sh                    runs every step of setup.d/ in order
#   setup.sh --background       the same, but a step marked with the line
#                               `# setup: may run in the background` (a long
#                               build that only the tests' run needs, not
#                               their build) is started in the background,
#                               its output in $SLUICE_CACHE/logs/<step>.log
#   setup.sh --stop-background  stops such steps that are still running
#
# tests/run.sh starts the set-up with --background, builds the tests
# meanwhile, then runs setup.sh again: each marked step holds a lock while it
# installs, so the second run waits for it (or runs it again if it failed).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC1091
source tests/scripts/env.sh
mkdir -p "$SLUICE_CACHE/logs"
mode="${1:-}"

running() {
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

if [ "$mode" = "--stop-background" ]; then
    for pidfile in "$SLUICE_CACHE"/logs/*.pid; do
        if running "$pidfile"; then
            echo "setup: stopping $(basename "$pidfile" .pid)"
            # Its own process group (setsid): the step and the build it runs.
            kill -- "-$(cat "$pidfile")" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
    exit 0
fi

for step in tests/scripts/setup.d/*.sh; do
    [ -e "$step" ] || continue
    name=$(basename "$step" .sh)
    if [ "$mode" = "--background" ] && grep -qx '# setup: may run in the background' "$step"; then
        pidfile="$SLUICE_CACHE/logs/$name.pid"
        log="$SLUICE_CACHE/logs/$name.log"
        if running "$pidfile"; then
            echo "setup: $step (already running in the background, log: $log)"
            continue
        fi
        echo "setup: $step (in the background, log: $log)"
        # A process group of its own, so that --stop-background ends the
        # build with it; it removes its pid file when it ends by itself.
        setsid bash -c 'bash "$1"; status=$?; rm -f "$2"; exit "$status"' \
            step "$step" "$pidfile" >"$log" 2>&1 </dev/null &
        echo $! >"$pidfile"
        continue
    fi
    echo "setup: $step"
    bash "$step"
done
