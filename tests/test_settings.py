"""Settings: sources and their priority, and one clear line for every wrong setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.adapters.filestore import FileBlobStore
from gateway.adapters.sqlite_index import SqliteIndex
from gateway.services.bundle import build_gateway
from gateway.settings import SettingsError, load_settings


def test_defaults_are_the_embedded_server() -> None:
    s = load_settings(environ={})
    assert (s.host, s.port, s.base_path) == ("127.0.0.1", 8080, "/dicomweb")
    assert s.effective_storage_url.startswith("file://")
    assert s.effective_storage_url.endswith("/data/objects")
    assert s.effective_index_url.startswith("sqlite:///")


def test_priority_file_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('port = 9001\nbase_path = "/dw"\n[s3]\nregion = "eu-1"\n[limits]\nmax_parts = 5\n')
    s = load_settings(config_file=config, environ={})
    assert (s.port, s.base_path, s.s3.region, s.limits.max_parts) == (9001, "/dw", "eu-1", 5)

    env = {"DICOMWEB_GATEWAY_PORT": "9002", "DICOMWEB_GATEWAY_LIMITS__MAX_PARTS": "6", "AWS_REGION": "us-2"}
    s = load_settings(config_file=config, environ=env)
    assert (s.port, s.limits.max_parts, s.s3.region) == (9002, 6, "eu-1")  # the file's s3.region beats AWS_*

    s = load_settings(config_file=config, environ=env, overrides={"port": 9003, "host": None})
    assert s.port == 9003
    assert s.host == "127.0.0.1"


def test_aws_variables_fill_s3_credentials() -> None:
    s = load_settings(environ={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "x", "AWS_ENDPOINT_URL": "http://s3"})
    assert (s.s3.access_key, s.s3.secret_key, s.s3.endpoint_url) == ("k", "x", "http://s3")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"DICOMWEB_GATEWAY_PORT": "http"}, "setting port has an invalid value"),
        ({"DICOMWEB_GATEWAY_PORT": "0"}, "port 0 is out of range"),
        ({"DICOMWEB_GATEWAY_BASE_PATH": "dicomweb/"}, "base_path"),
        ({"DICOMWEB_GATEWAY_STORAGE_URL": "ftp://x"}, "storage_url"),
        ({"DICOMWEB_GATEWAY_STORAGE_URL": "s3://"}, "names no bucket"),
        ({"DICOMWEB_GATEWAY_INDEX_URL": "mysql://x"}, "index_url"),
        ({"DICOMWEB_GATEWAY_PUBLIC_BASE_URL": "example.org"}, "public_base_url"),
        ({"DICOMWEB_GATEWAY_LIMITS__MAX_PARTS": "-1"}, "limits.max_parts must be positive"),
        ({"DICOMWEB_GATEWAY_NO_SUCH_THING": "1"}, "unknown setting no_such_thing"),
        ({"DICOMWEB_GATEWAY_LOG_LEVEL": "loud"}, "log_level"),
        ({"DICOMWEB_GATEWAY_FRAME_CACHE_BYTES": "-1"}, "frame_cache_bytes"),
        ({"DICOMWEB_GATEWAY_MEMORY_TRIM_INTERVAL": "-5"}, "memory_trim_interval"),
    ],
)
def test_wrong_settings_are_one_clear_error(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(environ=environ)


def test_bad_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(config_file=tmp_path / "missing.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("port = [")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(config_file=broken, environ={})


def test_root_base_path_serves_at_the_root() -> None:
    assert load_settings(environ={"DICOMWEB_GATEWAY_BASE_PATH": "/"}).base_path == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--port", "70000"],
        ["serve", "--storage-url", "gopher://x"],
        ["serve", "--data", "/proc/forbidden/place"],
    ],
)
def test_cli_stops_with_one_line(argv: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *argv], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dicomweb-gateway: ")
    assert "Traceback" not in result.stderr


def test_cache_sizes_reach_the_caches(tmp_path: Path) -> None:
    settings = load_settings(
        environ={"DICOMWEB_GATEWAY_FRAME_CACHE_BYTES": "1048576", "DICOMWEB_GATEWAY_RENDERED_CACHE_BYTES": "4096"},
        overrides={"data_dir": tmp_path},
    )
    gateway = build_gateway(settings, FileBlobStore(tmp_path / "objects"), SqliteIndex(tmp_path / "index.sqlite3"))
    assert gateway.retrieval.reader.frame_cache.max_bytes == 1 << 20
    assert gateway.retrieval.renderer.cache.max_bytes == 4096
