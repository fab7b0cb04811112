#!/usr/bin/env bash
# Create the project's virtual environment and install the gateway into it.
# Usage: scripts/venv.sh [test]   ("test" adds the test and lint tools)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "dicomweb-gateway needs Python >= 3.11 ($PYTHON is older or missing)" >&2
  exit 1
fi
if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
  # Debian ships venv/ensurepip separately.
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if [ "${1:-}" = "test" ]; then
  "$VENV/bin/python" -m pip install -q -e '.[test]'
else
  "$VENV/bin/python" -m pip install -q -e .
fi
