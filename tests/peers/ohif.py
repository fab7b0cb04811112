"""The real OHIF viewer (npm ``@ohif/app``, its prebuilt ``dist/``) and headless Chromium driven by
playwright-core, for the viewer tests and the benchmark. See /work/shared/OHIF.md.

What is installed where (all of it gitignored under ``.peers/``, fetched on first use so a fresh
clone needs nothing but the registries):

* ``.peers/ohif/package/dist``: ``npm pack @ohif/app@OHIF_VERSION``, unpacked;
* ``.peers/node/node_modules/playwright-core``: ``npm install playwright-core@PLAYWRIGHT_VERSION``;
* ``/usr/bin/chromium``: Debian's ``chromium`` package (scripts/test.sh installs it; here it
  is installed with apt-get when missing and we are root).

:class:`ViewerServer` serves ``dist/`` at ``/`` as the OHIF docs ask (unknown extension-less
paths fall back to ``index.html``, ``.wasm`` as ``application/wasm``), with an
``app-config.js`` written for the gateway under test (:func:`app_config`), and the COOP/COEP
headers a production deployment sends (so SharedArrayBuffer is available and cross-origin
gateway responses need ``Cross-Origin-Resource-Policy``).
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.peers.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / ".peers"
OHIF_VERSION = "3.13.2"
PLAYWRIGHT_VERSION = "1.65.1"
CHROMIUM = "/usr/bin/chromium"
OHIF_DIR = PEERS / "ohif"
NODE_DIR = PEERS / "node"
# Flags that work here: root, no GPU, closed network (OHIF.md).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


def ensure_ohif_dist() -> Path:
    """``dist/`` of ``@ohif/app`` at :data:`OHIF_VERSION`, fetched with ``npm pack`` when missing."""
    dist = OHIF_DIR / "package" / "dist"
    marker = OHIF_DIR / f".unpacked-{OHIF_VERSION}"
    if marker.exists() and (dist / "index.html").is_file():
        return dist
    OHIF_DIR.mkdir(parents=True, exist_ok=True)
    tarball = OHIF_DIR / f"ohif-app-{OHIF_VERSION}.tgz"
    if not tarball.is_file():
        _run(["npm", "pack", f"@ohif/app@{OHIF_VERSION}", "--silent"], OHIF_DIR)
    shutil.rmtree(OHIF_DIR / "package", ignore_errors=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(OHIF_DIR, filter="data")
    marker.touch()
    return dist


def ensure_playwright() -> Path:
    """The ``node_modules`` folder holding playwright-core (installed with npm when missing)."""
    modules = NODE_DIR / "node_modules"
    if (modules / "playwright-core" / "package.json").is_file():
        return modules
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    _run(["npm", "install", "--no-audit", "--no-fund", "--silent", f"playwright-core@{PLAYWRIGHT_VERSION}"], NODE_DIR)
    return modules


def ensure_chromium() -> str:
    """Debian's Chromium; installed with apt-get when missing and running as root."""
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=900)
    if not Path(CHROMIUM).is_file():
        raise RuntimeError("chromium is not installed: apt-get install -y chromium (scripts/test.sh does it)")
    return CHROMIUM


def app_config(
    dicomweb_url: str,
    *,
    token: str | None = None,
    thumbnails: str = "thumbnail",
    stack_retrieve_options: dict[str, Any] | None = None,
    supports_reject: bool = False,
) -> str:
    """``app-config.js`` with one DICOMweb data source pointing at ``dicomweb_url``.

    With ``token``, every request of the data source carries ``Authorization: Bearer token``
    (OHIF's ``requestOptions.auth``: a function returning the header value).
    ``stack_retrieve_options``: the data source's ``stackRetrieveOptions`` (Cornerstone3D's
    progressive loading stages and retrieve options for stack viewports; docs/dicomweb.md).
    ``supports_reject``: the data source's ``supportsReject``, which gives it ``reject.series``
    (``POST .../series/{series}/reject/113001%5EDCM``; docs/dicomweb.md, "Deleting and rejecting").
    """
    source: dict[str, Any] = {
        "friendlyName": "dicomweb-gateway",
        "name": "gateway",
        "wadoUriRoot": dicomweb_url,
        "qidoRoot": dicomweb_url,
        "wadoRoot": dicomweb_url,
        "qidoSupportsIncludeField": True,
        "supportsReject": supports_reject,
        "imageRendering": "wadors",
        "thumbnailRendering": thumbnails,
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": False,
        "supportsWildcard": True,
        "staticWado": False,
        "singlepart": "video",
        "omitQuotationForMultipartRequest": True,
        "bulkDataURI": {"enabled": True},
    }
    if stack_retrieve_options is not None:
        source["stackRetrieveOptions"] = stack_retrieve_options
    source_js = json.dumps(source, indent=2)
    if token is not None:
        # A function, as OHIF's UserAuthenticationService would provide: JSON cannot carry it.
        auth = f"function () {{ return {json.dumps('Bearer ' + token)}; }}"
        source_js = source_js[:-1].rstrip() + f',\n  "requestOptions": {{"auth": {auth}}}\n}}'
    return f"""window.config = {{
  routerBasename: null,
  extensions: [],
  modes: [],
  customizationService: {{}},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: false,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: {{ option: 'never' }},
  defaultDataSourceName: 'gateway',
  dataSources: [{{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'gateway',
    configuration: {source_js},
  }}],
}};
"""


class ViewerServer:
    """``dist/`` and an ``app-config.js`` over HTTP on a free port (a thread in this process)."""

    def __init__(
        self,
        dist: Path,
        config_js: str,
        *,
        headers: Mapping[str, str] | None = None,
        proxy: tuple[str, str] | None = None,
    ) -> None:
        """``proxy=(prefix, origin)``: requests under ``prefix`` (e.g. ``/dicomweb``) are passed to
        ``origin`` (``http://127.0.0.1:PORT``) as a reverse proxy would, so the viewer and the
        gateway share one origin."""
        self.dist = dist
        self.config_js = config_js.encode()
        self.proxy = proxy
        extra = dict(
            headers
            if headers is not None
            else {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
        )
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if outer.proxy is not None and self.path.startswith(outer.proxy[0] + "/"):
                    self._forward()
                    return
                path = self.path.split("?", 1)[0].split("#", 1)[0]
                if path == "/app-config.js":
                    self._send(200, outer.config_js, "application/javascript")
                    return
                target = (outer.dist / path.lstrip("/")).resolve()
                if not target.is_relative_to(outer.dist.resolve()):
                    self._send(404, b"not found", "text/plain")
                    return
                if target.is_dir():
                    target = target / "index.html"
                if not target.is_file():
                    if "." in path.rsplit("/", 1)[-1]:
                        self._send(404, b"not found", "text/plain")
                        return
                    target = outer.dist / "index.html"  # a client-side route of the single-page app
                kind = "application/wasm" if target.suffix == ".wasm" else mimetypes.guess_type(target.name)[0]
                self._send(200, target.read_bytes(), kind or "application/octet-stream")

            def do_OPTIONS(self) -> None:
                self._forward()

            def do_POST(self) -> None:
                self._forward()

            def _forward(self) -> None:
                assert outer.proxy is not None
                origin = urlsplit(outer.proxy[1])
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                skip = {"host", "connection", "keep-alive", "transfer-encoding"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                conn = http.client.HTTPConnection(origin.hostname or "127.0.0.1", origin.port, timeout=120)
                try:
                    self._relay(conn, body, headers, skip)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the browser went away (navigation): nothing to do
                finally:
                    conn.close()

            def _relay(
                self, conn: http.client.HTTPConnection, body: bytes | None, headers: dict[str, str], skip: set[str]
            ) -> None:
                conn.request(self.command, self.path, body=body, headers=headers)
                upstream = conn.getresponse()
                self.send_response(upstream.status)
                for name, value in upstream.getheaders():
                    if name.lower() not in skip | {"content-length"}:
                        self.send_header(name, value)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while chunk := upstream.read1(1 << 16):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-cache")
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_driver(script: Path, payload: Mapping[str, Any], *, timeout: float) -> dict[str, Any]:
    """Run a playwright-core driver (``node script``) with ``payload`` as JSON on stdin; its last
    stdout line is a JSON report."""
    modules = ensure_playwright()
    env = {**os.environ, "NODE_PATH": str(modules)}
    result = subprocess.run(
        ["node", str(script)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"driver produced no report ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    report: dict[str, Any] = json.loads(lines[-1])
    report["stderr"] = result.stderr[-5000:]
    report["returncode"] = result.returncode
    return report
