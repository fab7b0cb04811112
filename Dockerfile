# dicomweb-gateway container image: a multi-stage build on the slim Python base.
#
#   docker build -t dicomweb-gateway .
#   docker run -p 8080:8080 -p 11112:11112 dicomweb-gateway
#
# The build stage installs the gateway and its runtime dependencies (binary wheels only: numpy,
# psycopg, the pylibjpeg decoder plugins, uvicorn's uvloop/httptools) into a virtual environment;
# the runtime stage copies just that environment, runs as an unprivileged user and keeps its
# state in /var/lib/dicomweb-gateway (mount a volume there, or a tmpfs under a read-only root
# file system: with S3 and PostgreSQL it holds only disposable spool files and caches).
# Checked by tests/test_deploy.py with hadolint.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ONLY_BINARY=:all:
WORKDIR /src
RUN python -m venv /opt/dicomweb-gateway
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# PIP_ONLY_BINARY applies to dependencies; the gateway itself is built from this source tree.
RUN /opt/dicomweb-gateway/bin/pip install --no-cache-dir --no-binary dicomweb-gateway . \
    && /opt/dicomweb-gateway/bin/python -c "import gateway.app, psycopg, pylibjpeg, libjpeg, openjpeg, rle"

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="dicomweb-gateway" \
      org.opencontainers.image.description="DICOMweb (PS3.18) gateway over S3-compatible storage and legacy DIMSE PACS" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
       --home-dir /var/lib/dicomweb-gateway --shell /usr/sbin/nologin gateway \
    && mkdir -p /var/lib/dicomweb-gateway \
    && chown gateway:gateway /var/lib/dicomweb-gateway
COPY --from=build /opt/dicomweb-gateway /opt/dicomweb-gateway
ENV PATH=/opt/dicomweb-gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DICOMWEB_GATEWAY_HOST=0.0.0.0 \
    DICOMWEB_GATEWAY_PORT=8080 \
    DICOMWEB_GATEWAY_DATA_DIR=/var/lib/dicomweb-gateway
WORKDIR /var/lib/dicomweb-gateway
USER 10001:10001
# HTTP (DICOMweb, probes, metrics) and the DIMSE listener: the DIMSE front door and C-MOVE
# arrivals (set scp_port = 11112).
EXPOSE 8080 11112
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DICOMWEB_GATEWAY_PORT', '8080') + '/healthz', timeout=4)"]
ENTRYPOINT ["dicomweb-gateway"]
CMD ["serve"]
