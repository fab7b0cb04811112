"""One frozen, typed Settings object, read once at start-up.

Sources, in rising priority: defaults < the standard ``AWS_*`` variables (S3 endpoint, region,
credentials) < TOML file (``--config FILE``) < environment variables ``DICOMWEB_GATEWAY_<NAME>``
< CLI flags. Every problem is reported as one :class:`SettingsError` line; nothing reads the
environment after start-up.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

# Re-exported: defined beside the other errors so that the validators of a settings section
# (gateway.settings_security) can raise it without importing this module, which calls them.
from gateway.dicom.deidentify import PROFILES as DEIDENTIFY_PROFILES
from gateway.dicom.restriction import Restriction, RestrictionError, parse_restriction
from gateway.errors import SettingsError as SettingsError
from gateway.settings_retention import RetentionRule, validate_retention

ENV_PREFIX = "DICOMWEB_GATEWAY_"


@dataclass(frozen=True)
class Limits:
    """Hard limits on client input (each enforced with a 4xx; see docs/security.md)."""

    max_body_bytes: int = 4 << 30  # one STOW request
    max_parts: int = 10_000  # parts in one STOW request
    max_part_bytes: int = 2 << 30  # one instance
    max_part_header_bytes: int = 16 << 10
    max_sequence_depth: int = 32
    max_inflated_bytes: int = 1 << 30  # deflated transfer syntax cap
    max_qido_results: int = 1000  # default and ceiling for QIDO limit
    max_decoded_frame_bytes: int = 256 << 20  # a compressed frame is not decoded past this size
    # Process-wide: what transcoding, whole-object frame reads and deflated bulk data may hold at
    # once (estimated per object); past it requests wait briefly, then 503 (gateway.services.budget).
    whole_object_bytes: int = 512 << 20
    # UT, UC and UR values (no PS3.5 maximum) are refused at ingest beyond this (gateway.dicom.textlimits).
    max_text_value_bytes: int = 64 << 10
    rate_per_second: float = 100.0  # per authenticated principal (token subject or API key): token bucket
    rate_burst: int = 1000  # OHIF asks for every frame of a series at once
    header_timeout: float = 10.0  # seconds to send a complete request head (slowloris)
    keep_alive_timeout: int = 15  # seconds an idle keep-alive connection stays open
    body_timeout: float = 60.0  # seconds a request body may stall between two chunks
    # After its first body_timeout seconds a request body must average at least this many bytes
    # per second of waiting for the client (a trickle of one byte per chunk gap is cut: 408).
    min_body_rate: float = 1024.0
    max_head_bytes: int = 64 << 10  # request line + headers of one request (431 beyond)
    max_header_fields: int = 100  # header lines in one request head (431 beyond)
    max_connections: int = 1000  # open HTTP connections; more are answered 503 and closed at once


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    max_threads: int = 16
    # Objects above this size are sent as multipart uploads of part_size bytes (S3 minimum 5 MiB).
    multipart_threshold: int = 64 << 20
    part_size: int = 16 << 20
    # Each S3 call: connect and read timeouts (seconds) and attempts. A timeout is not retried, so
    # a hung store fails a call after one read_timeout (a STOW answers 503 within 10 s); refused
    # and throttled calls are retried with backoff. read_timeout bounds silence, not a transfer:
    # slow uploads that keep moving never hit it. See gateway.adapters.s3 and s3_retry.
    connect_timeout: float = 3.0
    read_timeout: float = 6.0
    max_attempts: int = 3


@dataclass(frozen=True)
class TlsSettings:
    """HTTPS served by uvicorn itself (``gateway.security.tls``): TLS 1.2+ with AEAD suites only."""

    cert_file: Path | None = None  # PEM certificate chain
    key_file: Path | None = None  # PEM private key
    min_version: str = "1.2"  # "1.2" or "1.3"


@dataclass(frozen=True)
class OidcSettings:
    """Bearer JWTs from an OpenID Connect provider (RFC 7519, RFC 8725 best practices)."""

    issuer: str | None = None
    audience: str | None = None
    jwks_url: str | None = None
    algorithms: tuple[str, ...] = ("RS256",)  # pinned: the token's alg header must be one of these
    leeway: float = 30.0  # seconds of clock skew allowed on exp / nbf / iat
    scope_claim: str = "scope"  # space-separated string (RFC 8693) or a JSON list
    scope_prefix: str = ""  # e.g. "dicomweb." when the provider's scopes are "dicomweb.read"
    restriction_claim: str | None = None  # claim limiting a token to studies; see docs/security.md
    # Claim naming the de-identification profile applied to all a token sees ("basic"); none: off.
    deidentify_claim: str | None = None
    jwks_min_refresh: float = 30.0  # seconds between JWKS refetches caused by unknown kids
    jwks_max_age: float = 3600.0  # seconds before the JWKS is refetched anyway


@dataclass(frozen=True)
class AuthSettings:
    """``mode``: "none" or "required"; empty means "required" as soon as a method is configured."""

    mode: str = ""
    oidc: OidcSettings = field(default_factory=OidcSettings)
    api_keys_file: Path | None = None  # JSON written by ``dicomweb-gateway apikey``


@dataclass(frozen=True)
class CorsSettings:
    """Browser viewers on other origins (OHIF): an allowlist, never ``*`` with credentials."""

    origins: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: int = 600
    corp: str | None = None  # Cross-Origin-Resource-Policy value, e.g. "cross-origin" for COEP viewers


@dataclass(frozen=True)
class AuditSettings:
    """Audit trail (PS3.15 A.5 fields as JSON lines): "stdout", "off", or a file path.

    Empty means "stdout" when authentication is required and "off" otherwise."""

    destination: str = ""
    include_query_values: bool = False  # QIDO values are patient data (names, IDs): out by default


@dataclass(frozen=True)
class PacsTls:
    """DICOM TLS (PS3.15 B.1) on the associations the gateway opens to one PACS or to one DIMSE
    client's SCP: enabled when ``ca_file`` is set; ``cert_file`` and ``key_file`` add a client
    certificate; ``server_name`` is the name to verify (default: host)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    @property
    def enabled(self) -> bool:
        return self.ca_file is not None


@dataclass(frozen=True)
class PacsNode:
    """One legacy PACS (a ``[[pacs]]`` table): where it is and how to talk to it."""

    name: str = ""  # used in logs, origin "pacs:<name>" and the {base}/pacs/{name} selector path
    ae_title: str = ""
    host: str = ""
    port: int = 104
    retrieve: str = "get"  # "get" (C-GET) or "move" (C-MOVE to the gateway's storage SCP)
    max_associations: int = 4
    connect_timeout: float = 3.0  # TCP connect
    acse_timeout: float = 10.0  # association request/release
    dimse_timeout: float = 30.0  # the longest wait for any one DIMSE message
    operation_timeout: float = 600.0  # a whole C-FIND / C-GET / C-MOVE / C-STORE, however lively
    tls: PacsTls = field(default_factory=PacsTls)
    # What it may do on the front door besides answering the gateway: ["write"] lets a PACS that
    # auto-routes new studies to the gateway C-STORE them under the same AE title (one entry per
    # node, as Orthanc's DicomModalities). None: it only sends the gateway's own C-MOVEs back.
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DimseClient:
    """One DIMSE client of the gateway's front door (a ``[[dimse_clients]]`` table): a modality,
    a PACS routing to the cloud, a workstation or a mobile viewer (gateway.dimse.peers)."""

    name: str = ""  # in logs, metrics and the audit trail (origin "dimse:<name>")
    ae_title: str = ""  # the calling AE title it must use
    host: str | None = None  # associations from other addresses are refused
    port: int | None = None  # its own storage SCP: the C-MOVE destination, storage commitment reports
    scopes: tuple[str, ...] = ()  # "read" (C-FIND, C-MOVE, C-GET), "write" (C-STORE); C-ECHO always
    # The studies it may see and write, as an HTTP principal's (gateway.dicom.restriction):
    # {PatientID = [...], StudyInstanceUID = [...]}; none: every study.
    restriction: Restriction | None = None
    deidentify: str | None = None  # "basic": every answer de-identified (gateway.dicom.deidentify)
    # DICOM TLS when the gateway calls its port (C-MOVE sub-associations, commitment reports).
    tls: PacsTls = field(default_factory=PacsTls)


@dataclass(frozen=True)
class DeidentifySettings:
    """De-identified views (PS3.15 E.1, docs/security.md): the key of the keyed-hash UIDs and
    dummies, and the profile options the site switches on."""

    # Secret of the UID mapping; several replicas must share it. Empty: a random key kept in
    # {data_dir}/deidentify.key (created on first use, mode 0600).
    key: str = ""
    retain_full_dates: bool = False  # PS3.15 E.3.6 Retain Longitudinal Temporal Information, Full Dates
    retain_modified_dates: bool = False  # PS3.15 E.3.6, Modified Dates (shifted by a keyed number of days)
    retain_patient_characteristics: bool = False  # PS3.15 E.3.7
    retain_device_identity: bool = False  # PS3.15 E.3.8
    retain_institution_identity: bool = False  # PS3.15 E.3.9
    serve_burned_in_annotation: bool = False  # instances with Burned In Annotation YES are withheld unless true


@dataclass(frozen=True)
class DimseSettings:
    """The DIMSE listener's limits (gateway.dimse.listener)."""

    max_associations: int = 16  # open associations at once; more are rejected "local limit exceeded"
    acse_timeout: float = 30.0  # seconds: association request, release
    dimse_timeout: float = 60.0  # seconds: the longest wait for any one DIMSE message
    network_timeout: float = 60.0  # seconds an association may be silent before it is aborted
    operation_timeout: float = 600.0  # seconds one request may spend in the gateway's services
    max_pdu_length: int = 1 << 20  # the largest P-DATA PDU accepted (PS3.8 D.1)
    max_pending_commitments: int = 64  # storage commitment requests waiting for their report


@dataclass(frozen=True)
class DimseTls:
    """DICOM TLS on the listener (PS3.15 B.9): enabled when ``cert_file`` is set; with
    ``ca_file`` clients must present a certificate that CA signed."""

    cert_file: Path | None = None  # PEM certificate chain
    key_file: Path | None = None  # PEM private key
    ca_file: Path | None = None  # PEM CA certificates that sign client certificates
    min_version: str = "1.2"  # "1.2" or "1.3"

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True)
class Webhook:
    """One receiver of the change feed (a ``[[webhooks]]`` table; gateway.services.webhooks)."""

    name: str = ""  # in logs, metrics, /readyz and the cursor kept in the index
    url: str = ""  # https://...; http:// only with allow_http
    allow_http: bool = False  # e.g. a receiver on the same host or a private network
    secret: str | None = None  # the HMAC-SHA256 key of X-Gateway-Signature
    secret_env: str | None = None  # or: the environment variable that holds it
    actions: tuple[str, ...] = ()  # "create", "delete", "update", "series-stable"; none: all of them
    origins: tuple[str, ...] = ()  # e.g. "stow", "dimse", "pacs:main", "delete"; none: all
    include_metadata: bool = False  # each entry's Metadata (the instance's DICOM JSON)
    # Seconds without a new entry of a series after which a "series-stable" event is sent; 0: none.
    series_stable_seconds: float = 0.0
    timeout: float = 10.0  # seconds one POST may take before it counts as failed


DIMSE_SCOPES = frozenset({"read", "write"})
PACS_SCOPES = frozenset({"write"})  # a [[pacs]] node's front-door scopes (PacsNode.scopes)

# storage_compression values -> the lossless transfer syntax stored ("" keeps what was received).
# "htj2k" is HTJ2K with RPCL Options (PS3.5 A.4.11, 10.18): lossless, and progressive for viewers.
STORAGE_COMPRESSION = {
    "": None,
    "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "jpeg2000": "1.2.840.10008.1.2.4.90",
    "htj2k": "1.2.840.10008.1.2.4.202",
}


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
    log_format: str = "json"  # json (one object per line, with the request id) or text
    spool_dir: Path | None = None  # where STOW parts are spooled; default {data_dir}/spool
    s3: S3Settings = field(default_factory=S3Settings)
    # QIDO and metadata answers coded (gzip, br, zstd) for clients that accept it, when at least
    # this many bytes: below about one TCP segment coding saves no time on the wire.
    json_compression: bool = True
    json_compression_min_bytes: int = 1024
    limits: Limits = field(default_factory=Limits)
    tls: TlsSettings = field(default_factory=TlsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    cors: CorsSettings = field(default_factory=CorsSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    trusted_proxies: tuple[str, ...] = ()  # addresses / networks whose X-Forwarded-* headers are honoured
    # Host header values accepted (port ignored; "*.example.org" matches subdomains; "*" any).
    # Empty: the public_base_url host, the bound address, and localhost names on loopback.
    trusted_hosts: tuple[str, ...] = ()
    ae_title: str = "DICOMWEB_GW"  # the gateway's own AE title: towards every PACS, and its DIMSE front door
    # The DIMSE listener (gateway.dimse): C-MOVE sub-operations from [[pacs]] nodes (needed by
    # retrieve = "move") and the front door for [[dimse_clients]]; none: no DIMSE listener.
    scp_port: int | None = None
    # Address the DIMSE listener binds; "" (default): the HTTP ``host``, so a gateway on
    # 127.0.0.1 does not open its DIMSE port to the network behind the operator's back.
    scp_host: str = ""
    dimse_clients: tuple[DimseClient, ...] = ()  # [[dimse_clients]] tables
    dimse: DimseSettings = field(default_factory=DimseSettings)
    dimse_tls: DimseTls = field(default_factory=DimseTls)
    deidentify: DeidentifySettings = field(default_factory=DeidentifySettings)
    forward_to: str | None = None  # name of a PACS that receives every STOWed instance (C-STORE)
    ready_requires_pacs: bool = False  # /readyz fails while a PACS does not answer C-ECHO (else only reported)
    pacs: tuple[PacsNode, ...] = ()  # [[pacs]] tables
    # Seconds an instance cached from a PACS is kept (then removed; fetched again when asked
    # for). 0: kept forever. Instances stored by STOW are never expired.
    pacs_cache_max_age: float = 0.0
    # [[retention]] rules (gateway.settings_retention) and the seconds between their sweeps.
    retention: tuple[RetentionRule, ...] = ()
    retention_interval_seconds: float = 60.0
    # Seconds between a DELETE or rejection taking instances out of the index (they are gone for
    # every new request at once) and deleting their objects: retrieves already sending them finish.
    delete_grace: float = 30.0
    # Seconds the version an instance had before a metadata correction ($bulkUpdate) stays
    # retrievable (GET .../instances/{sop}/original); then it is deleted.
    bulk_update_keep_original_seconds: float = 7 * 86400.0
    # Seconds between the heartbeats of a replica running a $bulkUpdate operation, and since its
    # last heartbeat after which another replica marks the operation failed and removes the
    # objects it had not committed (its replica stopped and did not start again).
    bulk_update_heartbeat_seconds: float = 10.0
    bulk_update_stale_seconds: float = 60.0
    # Store uncompressed uploads losslessly compressed: "" (as received), "jpeg-ls", "jpeg2000" or
    # "htj2k". With storage_compression_small_below > 0, instances whose frames are smaller than
    # that many bytes (uncompressed) are stored as storage_compression_small says instead (e.g.
    # JPEG-LS for small frames, which it encodes and decodes faster; HTJ2K for large ones).
    storage_compression: str = ""
    storage_compression_small: str = ""
    storage_compression_small_below: int = 0
    # Per-process in-memory caches (bytes): decoded or transcoded frames, and rendered images and
    # thumbnails. Each bounds the memory it may hold (dicomweb_gateway_cache_bytes).
    frame_cache_bytes: int = 256 << 20
    rendered_cache_bytes: int = 64 << 20
    # Seconds between returns of freed heap memory to the kernel (glibc malloc_trim; see
    # gateway.malloc). 0: never.
    memory_trim_interval: float = 30.0
    webhooks: tuple[Webhook, ...] = ()  # [[webhooks]] tables: the change feed POSTed to receivers

    # Derived, validated views -------------------------------------------------------------

    @property
    def effective_storage_url(self) -> str:
        return self.storage_url or f"file://{(self.data_dir / 'objects').resolve()}"

    @property
    def effective_index_url(self) -> str:
        return self.index_url or f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"

    @property
    def effective_scp_host(self) -> str:
        return self.scp_host or self.host

    @property
    def effective_spool_dir(self) -> Path:
        return self.spool_dir or (self.data_dir / "spool")

    @property
    def auth_required(self) -> bool:
        if self.auth.mode:
            return self.auth.mode == "required"
        return bool(self.auth.oidc.issuer or self.auth.api_keys_file)

    @property
    def audit_destination(self) -> str:
        return self.audit.destination or ("stdout" if self.auth_required else "off")


def load_settings(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge every source into a validated :class:`Settings` (raises SettingsError)."""
    env = os.environ if environ is None else environ
    # The standard AWS variables rank lowest: anything the gateway's own settings say wins.
    values: dict[str, Any] = _from_aws_env(env)
    if config_file is not None:
        values = _deep_merge(values, _read_toml(config_file))
    values = _deep_merge(values, _from_env(env))
    values = _deep_merge(values, {k: v for k, v in (overrides or {}).items() if v is not None})
    settings = _build(Settings, values, "")
    from gateway.settings_webhooks import resolve_secrets

    return _validate(resolve_secrets(settings, env))


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
    return out


def _from_aws_env(env: Mapping[str, str]) -> dict[str, Any]:
    """S3 settings from the standard AWS variables, so boto3 users need nothing new."""
    s3: dict[str, Any] = {}
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
    return {"s3": s3} if s3 else {}


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
    table: Any = (typing.get_args(hint) or (None,))[0]
    if typing.get_origin(hint) is tuple and isinstance(table, type) and dataclasses.is_dataclass(table):
        # An array of tables, e.g. [[pacs]] (TOML only).
        if not isinstance(raw, list) or not all(isinstance(item, Mapping) for item in raw):
            raise SettingsError(f"setting {name} must be an array of tables ([[{name}]])")
        return tuple(_build(table, item, f"{name}[{i}].") for i, item in enumerate(raw))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(raw, Mapping):
            raise SettingsError(f"setting {name} must be a table")
        return _build(hint, raw, f"{name}.")
    text_hint = str(hint)
    if "Restriction" in text_hint:
        return _restriction(raw, name)
    optional = "None" in text_hint
    if raw is None or (optional and raw == ""):
        if optional:
            return None
        raise SettingsError(f"setting {name} must not be empty")
    try:
        if text_hint.startswith("tuple[str"):
            items = raw.split(",") if isinstance(raw, str) else raw
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise ValueError
            return tuple(i.strip() for i in items if i.strip())
        if hint is float or text_hint.startswith("float"):
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
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


def _restriction(raw: Any, name: str) -> Restriction | None:
    """A restriction table, in the object form tokens and API keys use (gateway.dicom.restriction)."""
    if raw is None:
        return None
    try:
        return parse_restriction(raw)
    except RestrictionError as exc:
        raise SettingsError(f"setting {name}: {str(exc).replace('restriction claim', 'restriction')}") from None


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
    if index.scheme not in {"sqlite", "postgresql", "postgres"}:
        raise SettingsError(
            f"index_url {s.effective_index_url!r} must be sqlite:///path or postgresql://user@host/dbname"
        )
    if s.public_base_url is not None:
        pub = urlsplit(s.public_base_url)
        if pub.scheme not in {"http", "https"} or not pub.netloc:
            raise SettingsError(f"public_base_url {s.public_base_url!r} must be an absolute http(s) URL")
    if s.log_level.lower() not in {"critical", "error", "warning", "info", "debug"}:
        raise SettingsError(f"log_level {s.log_level!r} must be one of critical, error, warning, info, debug")
    if s.log_format not in {"json", "text"}:
        raise SettingsError(f"log_format {s.log_format!r} must be json or text")
    if s.json_compression_min_bytes < 0:
        raise SettingsError("json_compression_min_bytes must be 0 or more")
    for f in dataclasses.fields(s.limits):
        if getattr(s.limits, f.name) <= 0:
            raise SettingsError(f"limits.{f.name} must be positive")
    for name in ("storage_compression", "storage_compression_small"):
        if getattr(s, name) not in STORAGE_COMPRESSION:
            raise SettingsError(
                f"{name} {getattr(s, name)!r} must be one of: {', '.join(map(repr, STORAGE_COMPRESSION))}"
            )
    if s.storage_compression_small_below < 0:
        raise SettingsError("storage_compression_small_below must be 0 (no size policy) or a frame size in bytes")
    _validate_s3(s.s3)
    _validate_pacs(s)
    _validate_dimse(s)
    if s.deidentify.retain_full_dates and s.deidentify.retain_modified_dates:
        raise SettingsError("deidentify.retain_full_dates and deidentify.retain_modified_dates exclude each other")
    from gateway.settings_security import validate_security

    validate_security(s)
    validate_retention(s)
    from gateway.settings_webhooks import validate_webhooks

    validate_webhooks(s)
    return s


def _validate_s3(s3: S3Settings) -> None:
    for name in ("max_threads", "max_attempts", "connect_timeout", "read_timeout"):
        if getattr(s3, name) <= 0:
            raise SettingsError(f"s3.{name} must be positive")
    if s3.part_size < 5 << 20:
        raise SettingsError("s3.part_size must be at least 5 MiB (5242880 bytes), the S3 minimum part size")
    if s3.multipart_threshold < s3.part_size:
        raise SettingsError("s3.multipart_threshold must be at least s3.part_size")


def _valid_ae_title(value: str) -> bool:
    # PS3.5 Table 6.2-1 (AE): at most 16 characters of the default repertoire, no backslash or
    # control characters; leading and trailing spaces are not significant.
    return len(value.strip(" ")) > 0 and len(value) <= 16 and all(32 <= ord(c) < 127 and c != "\\" for c in value)


def _validate_pacs(s: Settings) -> None:
    """The [[pacs]] nodes, the gateway's AE title, its storage SCP and forward_to."""
    if s.frame_cache_bytes < 0 or s.rendered_cache_bytes < 0:
        raise SettingsError("frame_cache_bytes and rendered_cache_bytes must be 0 (no cache) or positive")
    if s.memory_trim_interval < 0:
        raise SettingsError("memory_trim_interval must be 0 (never) or positive seconds")
    if s.pacs_cache_max_age < 0:
        raise SettingsError("pacs_cache_max_age must be 0 (keep cached instances forever) or positive seconds")
    if not 0 <= s.delete_grace <= 3600:
        raise SettingsError("delete_grace must be between 0 and 3600 seconds")
    if not 0 <= s.bulk_update_keep_original_seconds < float("inf"):
        raise SettingsError("bulk_update_keep_original_seconds must be zero or positive seconds")
    if not 0 < s.bulk_update_heartbeat_seconds < float("inf"):
        raise SettingsError("bulk_update_heartbeat_seconds must be positive seconds")
    if not 2 * s.bulk_update_heartbeat_seconds <= s.bulk_update_stale_seconds < float("inf"):
        raise SettingsError("bulk_update_stale_seconds must be at least twice bulk_update_heartbeat_seconds")
    if not _valid_ae_title(s.ae_title):
        raise SettingsError(f"ae_title {s.ae_title!r} must be 1-16 printable ASCII characters without backslash")
    if s.scp_port is not None and not 0 < s.scp_port < 65536:
        raise SettingsError(f"scp_port {s.scp_port} is out of range 1-65535")
    seen: set[str] = set()
    for i, node in enumerate(s.pacs):
        where = f"pacs[{i}]" if not node.name else f"pacs {node.name!r}"
        if not _valid_name(node.name):
            raise SettingsError(f"{where}: name must be letters, digits, '-', '_' or '.' (it appears in URLs)")
        if node.name.lower() in seen:
            raise SettingsError(f"{where}: the name is used by another [[pacs]] entry")
        seen.add(node.name.lower())
        if not _valid_ae_title(node.ae_title):
            raise SettingsError(f"{where}: ae_title {node.ae_title!r} must be 1-16 printable ASCII characters")
        if not node.host:
            raise SettingsError(f"{where}: host is required")
        if not 0 < node.port < 65536:
            raise SettingsError(f"{where}: port {node.port} is out of range 1-65535")
        if node.retrieve not in ("get", "move"):
            raise SettingsError(f'{where}: retrieve must be "get" or "move", not {node.retrieve!r}')
        if node.retrieve == "move" and s.scp_port is None:
            raise SettingsError(f'{where}: retrieve = "move" needs scp_port (the storage SCP of the gateway)')
        if node.max_associations < 1:
            raise SettingsError(f"{where}: max_associations must be at least 1")
        for timeout in ("connect_timeout", "acse_timeout", "dimse_timeout", "operation_timeout"):
            if getattr(node, timeout) <= 0:
                raise SettingsError(f"{where}: {timeout} must be positive")
        _validate_call_tls(node.tls, where, "the PACS")
    if s.forward_to is not None and s.forward_to.lower() not in seen:
        raise SettingsError(f"forward_to {s.forward_to!r} names no [[pacs]] entry")


def _validate_call_tls(tls: PacsTls, where: str, peer: str) -> None:
    if (tls.cert_file is None) != (tls.key_file is None):
        raise SettingsError(f"{where}: tls.cert_file and tls.key_file go together")
    if tls.cert_file is not None and tls.ca_file is None:
        raise SettingsError(f"{where}: tls.ca_file is required to verify {peer} when TLS is used")
    for label, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file), ("key_file", tls.key_file)):
        if path is not None and not path.is_file():
            raise SettingsError(f"{where}: tls.{label} {path} does not exist")


def _valid_name(name: str) -> bool:
    return bool(name) and all(c.isascii() and (c.isalnum() or c in "-_.") for c in name)


def _validate_dimse(s: Settings) -> None:
    """The DIMSE front door: [[dimse_clients]], [dimse] limits and [dimse_tls]."""
    if (s.dimse_clients or s.dimse_tls.enabled) and s.scp_port is None:
        raise SettingsError("[[dimse_clients]] and [dimse_tls] need scp_port (the port of the DIMSE listener)")
    taken = {node.ae_title.strip(): f"[[pacs]] {node.name!r}" for node in s.pacs}
    for node in s.pacs:
        unknown = sorted(set(node.scopes) - PACS_SCOPES)
        if unknown:
            raise SettingsError(
                f'pacs {node.name!r}: scope {unknown[0]!r} is not "write" (a PACS that queries the gateway'
                " is a [[dimse_clients]] entry under its own AE title)"
            )
        if node.scopes and s.scp_port is None:
            raise SettingsError(f"pacs {node.name!r}: scopes need scp_port (the port of the DIMSE listener)")
    # Peer names label the front door's metrics and audit lines: one name, one peer.
    names: set[str] = {node.name.lower() for node in s.pacs}
    for i, client in enumerate(s.dimse_clients):
        where = f"dimse_clients[{i}]" if not client.name else f"dimse_clients {client.name!r}"
        if not _valid_name(client.name):
            raise SettingsError(
                f"{where}: name must be letters, digits, '-', '_' or '.' (it appears in the audit trail)"
            )
        if client.name.lower() in names:
            raise SettingsError(f"{where}: the name is used by another [[dimse_clients]] or [[pacs]] entry")
        names.add(client.name.lower())
        if not _valid_ae_title(client.ae_title):
            raise SettingsError(
                f"{where}: ae_title {client.ae_title!r} must be 1-16 printable ASCII characters without backslash"
            )
        # Associations are told apart by calling AE title alone (PS3.8 7.1.1.3): one per peer.
        other = taken.get(client.ae_title.strip())
        if other is not None:
            raise SettingsError(f"{where}: ae_title {client.ae_title!r} is used by {other} too")
        taken[client.ae_title.strip()] = f"[[dimse_clients]] {client.name!r}"
        if client.host is not None and not client.host.strip():
            raise SettingsError(f"{where}: host must not be empty (leave it out to accept any address)")
        if client.port is not None and not 0 < client.port < 65536:
            raise SettingsError(f"{where}: port {client.port} is out of range 1-65535")
        unknown = sorted(set(client.scopes) - DIMSE_SCOPES)
        if unknown:
            raise SettingsError(f'{where}: scope {unknown[0]!r} is not one of "read", "write"')
        _validate_call_tls(client.tls, where, "its SCP")
        if client.tls.enabled and client.port is None:
            raise SettingsError(f"{where}: tls is for calling its port, and no port is set")
        if client.deidentify is not None and client.deidentify not in DEIDENTIFY_PROFILES:
            raise SettingsError(f'{where}: deidentify {client.deidentify!r} is not "basic"')
    limits = s.dimse
    for f in dataclasses.fields(limits):
        if getattr(limits, f.name) <= 0:
            raise SettingsError(f"dimse.{f.name} must be positive")
    if limits.max_pdu_length < 4096:
        raise SettingsError("dimse.max_pdu_length must be at least 4096 bytes")
    tls = s.dimse_tls
    if (tls.cert_file is None) != (tls.key_file is None):
        raise SettingsError("dimse_tls.cert_file and dimse_tls.key_file go together")
    if tls.ca_file is not None and tls.cert_file is None:
        raise SettingsError("dimse_tls.ca_file needs dimse_tls.cert_file and key_file (the listener's own)")
    if tls.min_version not in ("1.2", "1.3"):
        raise SettingsError(f'dimse_tls.min_version {tls.min_version!r} must be "1.2" or "1.3"')
    for label, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file), ("key_file", tls.key_file)):
        if path is not None and not path.is_file():
            raise SettingsError(f"dimse_tls.{label} {path} does not exist")
