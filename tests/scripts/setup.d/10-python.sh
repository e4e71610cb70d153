#!/usr/bin/env bash
# A Python venv with the test services from PyPI (moto_server: a real S3
# endpoint; chdb-core: the current ClickHouse engine).
set -euo pipefail
source tests/scripts/env.sh
stamp="$SLUICE_VENV/.requirements"
if [ -x "$SLUICE_VENV/bin/python" ] && cmp -s tests/requirements.txt "$stamp"; then
    exit 0
fi
python3 -m venv "$SLUICE_VENV"
"$SLUICE_VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
cp tests/requirements.txt "$stamp"
