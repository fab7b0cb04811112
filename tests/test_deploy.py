"""The deployment artifacts, checked statically (no container engine and no Kubernetes here):
the Dockerfile under hadolint, and the Helm chart — yamllint, values against values.schema.json,
every settings key a setting the gateway accepts, ``helm lint`` through helm-sdkpy's bundled Helm
library, and Kubernetes schema validation of rendered manifests where a renderer exists."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
CHART = ROOT / "helm" / "dicomweb-gateway"
VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))


def _tool(name: str) -> str:
    found = Path(sys.executable).with_name(name)
    return str(found) if found.exists() else (shutil.which(name) or pytest.fail(f"{name} is not installed"))


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both else value
    return merged


def _values(path: Path | None = None) -> dict[str, Any]:
    """The chart's values as Helm computes them: values.yaml, then a -f file on top."""
    base: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return base if path is None else _merge(base, yaml.safe_load(path.read_text()) or {})


# -- Dockerfile -----------------------------------------------------------------------------------


def test_dockerfile_is_clean_under_hadolint() -> None:
    run = subprocess.run(
        [_tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_is_multi_stage_slim_non_root_with_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE | re.IGNORECASE)
    assert len(stages) >= 2
    assert all("slim" in image for image, _ in stages)
    final = text[text.rindex("\nFROM ") :]
    assert re.search(r"^COPY --from=build ", final, flags=re.MULTILINE)
    user = re.findall(r"^USER\s+(\S+)", final, flags=re.MULTILINE)
    assert user
    assert user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", final, flags=re.MULTILINE)
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", final, flags=re.MULTILINE) for p in line.split()}
    assert {8080, 11112} <= exposed  # HTTP and the DIMSE storage SCP
    # Runtime dependencies only: no compilers or dev headers in the final stage.
    assert not re.search(r"apt-get install|build-essential|gcc|-dev\b", final)
    assert "pyproject.toml" in (ROOT / ".dockerignore").read_text()


# -- Helm chart -----------------------------------------------------------------------------------


def test_chart_yaml_files_pass_yamllint() -> None:
    config = (
        "{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}}}"
    )
    files = [CHART / "Chart.yaml", CHART / "values.yaml", *VALUES_FILES]
    run = subprocess.run(
        [_tool("yamllint"), "--strict", "-d", config, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("values_file", [None, *VALUES_FILES], ids=lambda p: "defaults" if p is None else p.name)
def test_values_match_the_schema_and_the_gateway_settings(values_file: Path | None, tmp_path: Path) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    values = _values(values_file)
    jsonschema.validate(values, schema)
    # What the ConfigMap and the Deployment put in the environment is a valid gateway setting
    # (an unknown DICOMWEB_GATEWAY_* variable stops start-up). Secrets stand in as placeholders.
    env = {f"DICOMWEB_GATEWAY_{k.upper()}": str(v) for k, v in values["settings"].items() if str(v) != ""}
    env |= {"DICOMWEB_GATEWAY_HOST": "0.0.0.0", "DICOMWEB_GATEWAY_PORT": "8080"}
    env["DICOMWEB_GATEWAY_DATA_DIR"] = str(tmp_path)
    if values["dimse"]["enabled"]:
        env |= {"DICOMWEB_GATEWAY_SCP_PORT": str(values["dimse"]["port"])}
        env |= {"DICOMWEB_GATEWAY_AE_TITLE": values["dimse"]["aeTitle"]}
    secrets = values["secrets"]
    if secrets["s3"]["existingSecret"]:
        env |= {"DICOMWEB_GATEWAY_S3__ACCESS_KEY": "k", "DICOMWEB_GATEWAY_S3__SECRET_KEY": "s"}
    if secrets["index"]["existingSecret"]:
        env["DICOMWEB_GATEWAY_INDEX_URL"] = "postgresql://gateway:secret@postgres:5432/dicomweb"
    if secrets["oidc"]["existingSecret"]:  # envFrom with a prefix: the Secret's keys, lower-case
        env |= {
            "DICOMWEB_GATEWAY_AUTH__OIDC__issuer": "https://id.example.org",
            "DICOMWEB_GATEWAY_AUTH__OIDC__audience": "dicomweb",
            "DICOMWEB_GATEWAY_AUTH__OIDC__jwks_url": "https://id.example.org/jwks",
        }
    if secrets["apiKeys"]["existingSecret"]:  # mounted from the Secret; here a file in tmp
        env["DICOMWEB_GATEWAY_AUTH__API_KEYS_FILE"] = str(tmp_path / secrets["apiKeys"]["key"])
    if values_file is None:
        # Serving beyond loopback needs authentication (gateway/settings_security.py): the bare
        # defaults cannot start until the user names an OIDC or API-key Secret, and say so.
        with pytest.raises(SettingsError, match="without authentication"):
            load_settings(environ=env)
        return
    settings = load_settings(environ=env)
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)


@pytest.mark.parametrize(
    "change",
    [
        {"replicaCount": 0},
        {"image": {"pullPolicy": "Sometimes"}},
        {"surprise": True},
        {"settings": {"index_url": "postgresql://u:password@db/x"}},  # belongs in a Secret
        {"settings": {"Bad-Key": "x"}},
        {"securityContext": {"readOnlyRootFilesystem": False}},
        {"podSecurityContext": {"runAsNonRoot": False}},
        {"ingress": {"hosts": [{"host": "x", "paths": [{"path": "nope", "pathType": "Prefix"}]}]}},
        {"service": {"port": 70000}},
    ],
)
def test_the_schema_refuses_bad_values(change: dict[str, Any]) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_merge(_values(), change), schema)


def test_deployment_template_essentials() -> None:
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    # Service links would inject DICOMWEB_GATEWAY_PORT=tcp://... and stop start-up.
    assert re.search(r"^\s+enableServiceLinks: false$", deployment, flags=re.MULTILINE)
    assert re.search(r"livenessProbe:\s+httpGet:\s+path: /healthz", deployment)
    assert re.search(r"readinessProbe:\s+httpGet:\s+path: /readyz", deployment)
    values = _values()
    assert values["securityContext"]["readOnlyRootFilesystem"] is True
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    assert values["podSecurityContext"]["runAsUser"] == 10001  # the image's user
    names = {p.name for p in (CHART / "templates").iterdir()}
    expected = {"deployment.yaml", "service.yaml", "ingress.yaml", "configmap.yaml", "hpa.yaml", "pdb.yaml"}
    assert expected | {"servicemonitor.yaml"} <= names


def _helm_lint(chart: Path) -> dict[str, Any]:
    helm_sdkpy = pytest.importorskip("helm_sdkpy", reason="scripts/test.sh installs helm-sdkpy")
    config = helm_sdkpy.Configuration(namespace="default")
    result: dict[str, Any] = asyncio.run(helm_sdkpy.Lint(config).run(str(chart)))
    return result


@pytest.mark.parametrize("values_file", [None, *VALUES_FILES], ids=lambda p: "defaults" if p is None else p.name)
def test_helm_lint(values_file: Path | None, tmp_path: Path) -> None:
    # helm-sdkpy's Lint takes no values files: lint a copy whose values.yaml is the merged values.
    chart = tmp_path / CHART.name
    shutil.copytree(CHART, chart)
    (chart / "values.yaml").write_text(yaml.safe_dump(_values(values_file)))
    result = _helm_lint(chart)
    problems = [m for m in result.get("Messages") or [] if m["Severity"] >= 2]  # warnings and errors
    assert problems == [], result
    assert not result.get("Errors"), result


def test_helm_lint_catches_a_broken_template(tmp_path: Path) -> None:
    chart = tmp_path / CHART.name
    shutil.copytree(CHART, chart)
    (chart / "templates" / "broken.yaml").write_text("kind: {{ .Values.nothing.here }}\n")
    result = _helm_lint(chart)
    assert any(m["Severity"] == 3 for m in result.get("Messages") or []), result


def test_rendered_manifests_match_kubernetes_schemas(tmp_path: Path) -> None:
    helm = shutil.which("helm")
    if helm is None:
        pytest.skip("no Helm renderer here (helm-sdkpy has no template action); helm lint renders and checks instead")
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for values_file in [None, *VALUES_FILES]:
        args = [helm, "template", "gw", str(CHART)] + ([] if values_file is None else ["-f", str(values_file)])
        rendered = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
        for doc in yaml.safe_load_all(rendered):
            if doc and doc.get("apiVersion", "").startswith("monitoring.coreos.com"):
                continue  # a CRD: no schema in kubernetes-validate
            if doc:
                kubernetes_validate.validate(doc, "1.30", strict=True)
