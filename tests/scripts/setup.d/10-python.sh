#!/usr/bin/env bash
# A Python venv with the test services from PyPI (moto_server: a real S3
# endpoint; chdb-core: the current ClickHouse engine; osmem-server: an
# OpenSearch-compatible server, whose bundled binary is linked into
# $SLUICE_CACHE/bin).
set -euo pipefail
source tests/scripts/env.sh
stamp="$SLUICE_VENV/.requirements"
if ! { [ -x "$SLUICE_VENV/bin/python" ] && cmp -s tests/requirements.txt "$stamp"; }; then
    python3 -m venv "$SLUICE_VENV"
    "$SLUICE_VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
    cp tests/requirements.txt "$stamp"
fi
mkdir -p "$SLUICE_CACHE/bin"
ln -sf "$("$SLUICE_VENV/bin/python" -c 'import osmem_server; print(osmem_server.resolve_binary())')" \
    "$SLUICE_CACHE/bin/osmem-server"
