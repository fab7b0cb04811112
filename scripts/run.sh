#!/usr/bin/env bash
# Start the gateway on its embedded defaults: objects in ./data/objects, SQLite index in
# ./data/index.sqlite3, http://127.0.0.1:8080/dicomweb. Extra arguments go to `serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/dicomweb-gateway ] || bash scripts/venv.sh
exec .venv/bin/dicomweb-gateway serve "$@"
