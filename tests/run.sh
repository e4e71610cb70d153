#!/usr/bin/env bash
# The one test command: installs what the tests need on a fresh machine (Debian
# packages, a Python venv for test servers, the Kafka-protocol broker), then
# runs every test of the workspace. Safe to run again: installs are skipped
# when already present.
set -euo pipefail
cd "$(dirname "$0")/.."
# The broker's build (minutes on a fresh machine) overlaps the tests' build:
# the first set-up starts it in the background, the second waits for it.
trap 'tests/scripts/setup.sh --stop-background' EXIT
tests/scripts/setup.sh --background
# shellcheck disable=SC1091
source tests/scripts/env.sh
cargo test --workspace --locked --no-run "$@"
tests/scripts/setup.sh
cargo test --workspace --locked "$@"
