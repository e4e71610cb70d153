#!/usr/bin/env bash
# The one test command: installs what the tests need on a fresh machine (Debian
# packages, a Python venv for test servers, the Kafka-protocol broker), then
# runs every test of the workspace. Safe to run again: installs are skipped
# when already present.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/scripts/setup.sh
# shellcheck disable=SC1091
source tests/scripts/env.sh
cargo test --workspace --locked "$@"
