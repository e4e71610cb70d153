#!/usr/bin/env bash
# Debian's ClickHouse server (18.16) for the ClickHouse sink tests. The tests
# start it themselves on scratch directories and free ports; the package's own
# service is never used.
set -euo pipefail
if command -v clickhouse-server >/dev/null 2>&1; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends clickhouse-server
