"""openapi/dicomweb.yaml is true: every route of the app is in it and every path in it is served,
with the validator's UID pattern; and schemathesis, run against a live gateway, finds no server
error and no response that breaks the spec."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.routing import BaseRoute, Mount, Route

from gateway.app import create_app
from gateway.dicom.uids import UID_MAX_LENGTH, UID_PATTERN, is_valid_uid
from gateway.settings import load_settings
from tests import factory
from tests.fixtures_gateway import start_gateway, stop_gateway
from tests.http_helpers import stow

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "openapi" / "dicomweb.yaml"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Per operation; the whole run stays around a minute on two cores.
MAX_EXAMPLES = 15
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    return loaded


def app_operations(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(OpenAPI path template, method) of every endpoint of the app, mounts included."""
    for route in routes:
        if isinstance(route, Mount):
            yield from app_operations(list(route.routes), prefix + route.path)
        elif isinstance(route, Route):
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", prefix + route.path)  # {path:path} -> {path}
            for method in sorted((route.methods or {"GET"}) - {"HEAD"}):  # Starlette adds HEAD to GET
                yield path, method.lower()
        else:  # a WebSocket route or an unknown kind: must be documented too, by whoever adds it
            yield prefix + str(getattr(route, "path", route)), "?"


def spec_operations(spec: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method


def test_every_route_is_documented_and_every_documented_path_is_served(spec: dict[str, Any]) -> None:
    app = create_app(load_settings(environ={}))  # default settings: base path /dicomweb, as the spec
    served = set(app_operations(list(app.routes)))
    documented = set(spec_operations(spec))
    assert sorted(served - documented) == [], "routes missing from openapi/dicomweb.yaml"
    assert sorted(documented - served) == [], "openapi/dicomweb.yaml documents what the app does not serve"


def test_spec_shape_and_uid_pattern(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    uid = spec["components"]["schemas"]["UID"]
    assert (uid["pattern"], uid["maxLength"]) == (UID_PATTERN, UID_MAX_LENGTH)
    for name in ("study", "series", "instance"):
        assert spec["components"]["parameters"][name]["schema"] == {"$ref": "#/components/schemas/UID"}
    # Every UID example is valid, and every path parameter is declared.
    pattern = re.compile(uid["pattern"])
    for name in ("study", "series", "instance"):
        example = spec["components"]["parameters"][name]["example"]
        assert pattern.fullmatch(example)
        assert is_valid_uid(example)
    for path, item in spec["paths"].items():
        declared = {p["$ref"].rsplit("/", 1)[1] if "$ref" in p else p["name"] for p in item.get("parameters", [])}
        for method in METHODS:
            if method in item:
                ops = item[method].get("parameters", [])
                declared |= {p["$ref"].rsplit("/", 1)[1] if "$ref" in p else p["name"] for p in ops}
                assert "responses" in item[method], (path, method)
                assert item[method].get("operationId"), (path, method)
        assert set(re.findall(r"\{(\w+)\}", path)) <= declared, path
    ids = [item[m]["operationId"] for item in spec["paths"].values() for m in METHODS if m in item]
    assert len(ids) == len(set(ids))


def test_schemathesis_finds_no_server_error_and_no_schema_violation(spec: dict[str, Any], tmp_path: Path) -> None:
    params = spec["components"]["parameters"]
    gw = start_gateway(tmp_path)
    try:
        # The spec's example UIDs name a stored instance, so the examples phase reaches real
        # data (multipart responses, metadata) and not only 404s.
        seeded = factory.ct_instance(
            seed=1,
            rows=8,
            cols=8,
            study_uid=params["study"]["example"],
            series_uid=params["series"]["example"],
            sop_uid=params["instance"]["example"],
        )
        assert stow(gw.url, [seeded]).status_code == 200
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                str(SPEC_PATH),
                "--url",
                gw.root,
                "--checks",
                ",".join(CHECKS),
                "--phases",
                "examples,fuzzing",
                "--max-examples",
                str(MAX_EXAMPLES),
                "--seed",
                "20261121",
                "--workers",
                "2",
                "--generation-database",
                "none",
                "--request-timeout",
                "30",
                "--no-color",
                "--suppress-health-check",
                "all",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        stop_gateway(gw)
    output = run.stdout[-20000:] + run.stderr[-5000:]
    print(output)  # shown with -s or on failure: what was tested
    assert run.returncode == 0, output
    summary = re.search(r"(\d+) generated, (\d+) passed", output)
    assert summary, output
    assert summary.group(1) == summary.group(2), output
    assert int(summary.group(1)) > 100, output
    assert "Traceback" not in gw.log()
