"""One frozen, typed Settings object, read once at start-up.

Sources, in rising priority: defaults < TOML file (``--config FILE``) < environment variables
``DICOMWEB_GATEWAY_<NAME>`` (plus the standard ``AWS_*`` variables for S3 credentials) < CLI
flags. Every problem is reported as one :class:`SettingsError` line; nothing reads the
environment after start-up.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

ENV_PREFIX = "DICOMWEB_GATEWAY_"


class SettingsError(Exception):
    """A setting is missing, malformed or inconsistent; the message is one line for the user."""


@dataclass(frozen=True)
class Limits:
    """Hard limits on client input (each enforced with a 4xx; see the README)."""

    max_body_bytes: int = 4 << 30  # one STOW request
    max_parts: int = 10_000  # parts in one STOW request
    max_part_bytes: int = 2 << 30  # one instance
    max_part_header_bytes: int = 16 << 10
    max_sequence_depth: int = 32
    max_inflated_bytes: int = 1 << 30  # deflated transfer syntax cap
    max_qido_results: int = 1000  # default and ceiling for QIDO limit


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    max_threads: int = 16


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    base_path: str = "/dicomweb"
    data_dir: Path = Path("./data")
    storage_url: str = ""  # default: file://{data_dir}/objects
    index_url: str = ""  # default: sqlite:///{data_dir}/index.sqlite3
    public_base_url: str | None = None  # e.g. https://pacs.example.org/dicomweb behind a proxy
    log_level: str = "info"
    spool_dir: Path | None = None  # where STOW parts are spooled; default {data_dir}/spool
    s3: S3Settings = field(default_factory=S3Settings)
    limits: Limits = field(default_factory=Limits)

    # Derived, validated views -------------------------------------------------------------

    @property
    def effective_storage_url(self) -> str:
        return self.storage_url or f"file://{(self.data_dir / 'objects').resolve()}"

    @property
    def effective_index_url(self) -> str:
        return self.index_url or f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"

    @property
    def effective_spool_dir(self) -> Path:
        return self.spool_dir or (self.data_dir / "spool")


def load_settings(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge every source into a validated :class:`Settings` (raises SettingsError)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file is not None:
        values = _deep_merge(values, _read_toml(config_file))
    values = _deep_merge(values, _from_env(env))
    values = _deep_merge(values, {k: v for k, v in (overrides or {}).items() if v is not None})
    settings = _build(Settings, values, "")
    return _validate(settings)


# -------------------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``DICOMWEB_GATEWAY_PORT=9000`` → port; ``DICOMWEB_GATEWAY_S3__ENDPOINT_URL`` → s3.endpoint_url."""
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    # The standard AWS variables, so boto3 users need nothing new (lowest priority of env).
    s3 = out.setdefault("s3", {})
    for aws, ours in (
        ("AWS_ACCESS_KEY_ID", "access_key"),
        ("AWS_SECRET_ACCESS_KEY", "secret_key"),
        ("AWS_DEFAULT_REGION", "region"),
        ("AWS_REGION", "region"),
        ("AWS_ENDPOINT_URL_S3", "endpoint_url"),
        ("AWS_ENDPOINT_URL", "endpoint_url"),
    ):
        if aws in env and ours not in s3:
            s3[ours] = env[aws]
    if not s3:
        del out["s3"]
    return out


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build(cls: type[Any], values: Mapping[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SettingsError(f"unknown setting {where}{unknown[0]!s} (known: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for name, raw in values.items():
        kwargs[name] = _coerce(hints[name], raw, f"{where}{name}")
    return cls(**kwargs)


def _coerce(hint: Any, raw: Any, name: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(raw, Mapping):
            raise SettingsError(f"setting {name} must be a table")
        return _build(hint, raw, f"{name}.")
    text_hint = str(hint)
    optional = "None" in text_hint
    if raw is None or (optional and raw == ""):
        if optional:
            return None
        raise SettingsError(f"setting {name} must not be empty")
    try:
        if hint is int or text_hint.startswith("int"):
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError
        if "Path" in text_hint:
            return Path(str(raw)).expanduser()
        return str(raw)
    except ValueError:
        raise SettingsError(f"setting {name} has an invalid value {raw!r}") from None


def _validate(s: Settings) -> Settings:
    if not 0 < s.port < 65536:
        raise SettingsError(f"port {s.port} is out of range 1-65535")
    base = s.base_path
    if not base.startswith("/") or (len(base) > 1 and base.endswith("/")) or "//" in base:
        raise SettingsError(f"base_path {base!r} must start with '/' and not end with '/' (e.g. /dicomweb)")
    if base == "/":
        s = dataclasses.replace(s, base_path="")
    storage = urlsplit(s.effective_storage_url)
    if storage.scheme not in {"file", "s3"}:
        raise SettingsError(f"storage_url {s.effective_storage_url!r} must be file://DIR or s3://bucket/prefix")
    if storage.scheme == "s3" and not storage.netloc:
        raise SettingsError(f"storage_url {s.effective_storage_url!r} names no bucket")
    index = urlsplit(s.effective_index_url)
    if index.scheme not in {"sqlite"}:
        raise SettingsError(f"index_url {s.effective_index_url!r} must be sqlite:///path")
    if s.public_base_url is not None:
        pub = urlsplit(s.public_base_url)
        if pub.scheme not in {"http", "https"} or not pub.netloc:
            raise SettingsError(f"public_base_url {s.public_base_url!r} must be an absolute http(s) URL")
    if s.log_level.lower() not in {"critical", "error", "warning", "info", "debug"}:
        raise SettingsError(f"log_level {s.log_level!r} must be one of critical, error, warning, info, debug")
    for f in dataclasses.fields(s.limits):
        if getattr(s.limits, f.name) <= 0:
            raise SettingsError(f"limits.{f.name} must be positive")
    return s
