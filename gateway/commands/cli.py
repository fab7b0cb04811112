"""The ``dicomweb-gateway`` command: ``serve``, ``reindex``, ``import``, ``changes`` and the others.

The environment and flags are read here, at the edge, and nowhere else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway import package_version
from gateway.commands.apikey import add_apikey_parser, run_apikey
from gateway.settings import Settings, SettingsError, load_settings


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML settings file")
    p.add_argument("--data", dest="data_dir", help="data directory for the embedded store and index (./data)")
    p.add_argument("--storage-url", help="file://DIR (default {data}/objects) or s3://bucket/prefix")
    p.add_argument("--s3-endpoint-url", help="S3 endpoint URL (else AWS_ENDPOINT_URL or AWS's default)")
    p.add_argument("--s3-region", help="S3 region (else AWS_REGION)")
    p.add_argument("--index-url", help="sqlite:///path (default {data}/index.sqlite3) or postgresql://user@host/db")
    p.add_argument("--log-level", help="critical, error, warning, info (default) or debug")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomweb-gateway", description="DICOMweb gateway")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server")
    _common_flags(serve)
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8080)")
    serve.add_argument("--base-path", help="DICOMweb base path (default /dicomweb)")
    serve.add_argument("--public-base-url", help="absolute base URL clients see (behind a reverse proxy)")
    serve.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS (TLS 1.2+, AEAD suites only)")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--api-keys-file", help="API key file (dicomweb-gateway apikey create); enables auth")

    reindex = sub.add_parser(
        "reindex", help="rebuild the index from the object store, or with --repair reconcile the two in place"
    )
    _common_flags(reindex)
    reindex.add_argument(
        "--repair",
        action="store_true",
        help="keep the index and remove what crashed writes left: objects without an index row, unfinished"
        " uploads, spool files of stopped processes; index rows whose object is missing are reported and removed"
        " (safe beside running gateways)",
    )
    reindex.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help="with --repair: leave objects and uploads younger than this alone, they may be in flight (default 900)",
    )
    reindex.add_argument("--dry-run", action="store_true", help="with --repair: only report what would be removed")
    reindex.add_argument("--quiet", action="store_true", help="no progress bar")

    echo = sub.add_parser("echo", help="C-ECHO each configured PACS (or the one named)")
    _common_flags(echo)
    echo.add_argument("name", nargs="?", help="the [[pacs]] name to test (default: all)")

    migrate = sub.add_parser("migrate", help="create or upgrade the index schema, then exit")
    _common_flags(migrate)

    changes = sub.add_parser("changes", help="print the change feed (what entered and left the gateway)")
    _common_flags(changes)
    changes.add_argument("--after", type=int, default=0, metavar="SEQUENCE", help="only entries after this one")
    changes.add_argument("--follow", action="store_true", help="keep printing new entries until interrupted")
    changes.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="with --follow: how often to look (default 1)"
    )
    changes.add_argument("--json", action="store_true", help="one JSON object per line, as the HTTP feed spells it")

    imp = sub.add_parser(
        "import",
        help="store the DICOM files of folders, ZIPs, DICOMDIR media or s3://bucket/prefix, resumably",
    )
    _common_flags(imp)
    imp.add_argument("sources", nargs="+", metavar="SOURCE", help="a folder, a ZIP file, or s3://bucket/prefix")
    imp.add_argument("--report", type=Path, help="write the JSON-lines report here (default: standard output)")
    imp.add_argument(
        "--state",
        type=Path,
        help="the file recording what is done, for resuming (default: {data}/import/state-*.jsonl, one per store)",
    )
    imp.add_argument("--jobs", type=int, help="files imported at once (default: the number of CPUs)")
    imp.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="when stderr is not a terminal: seconds between progress lines (default 10)",
    )
    imp.add_argument("--quiet", action="store_true", help="no progress on stderr")

    retention = sub.add_parser("retention", help="list what the retention rules would remove now, and why")
    _common_flags(retention)
    retention.add_argument("--dry-run", action="store_true", help="only list (required: the sweep runs in serve)")

    add_apikey_parser(sub)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        name: getattr(args, name, None)
        for name in (
            "host",
            "port",
            "base_path",
            "data_dir",
            "storage_url",
            "index_url",
            "public_base_url",
            "log_level",
        )
    }
    s3 = {"endpoint_url": getattr(args, "s3_endpoint_url", None), "region": getattr(args, "s3_region", None)}
    overrides["s3"] = {k: v for k, v in s3.items() if v is not None} or None
    tls = {"cert_file": getattr(args, "tls_cert", None), "key_file": getattr(args, "tls_key", None)}
    overrides["tls"] = {k: v for k, v in tls.items() if v is not None} or None
    keys_file = getattr(args, "api_keys_file", None)
    overrides["auth"] = {"api_keys_file": keys_file} if keys_file else None
    return load_settings(config_file=args.config, overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "apikey":
        try:
            return run_apikey(args)
        except SettingsError as exc:
            print(f"dicomweb-gateway: {exc}", file=sys.stderr)
            return 2
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"dicomweb-gateway: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from gateway.commands.serve import serve

        return serve(settings)
    if args.command == "reindex":
        from gateway.commands.reindex import run_reindex

        if not args.repair and (args.grace is not None or args.dry_run):
            print("dicomweb-gateway: --grace and --dry-run go with --repair", file=sys.stderr)
            return 2
        if args.grace is not None and not args.grace >= 0:
            print("dicomweb-gateway: --grace must be a number of seconds >= 0", file=sys.stderr)
            return 2
        return run_reindex(
            settings, repair=args.repair, progress=not args.quiet, grace=args.grace, dry_run=args.dry_run
        )
    if args.command == "echo":
        from gateway.commands.echo import run_echo

        return run_echo(settings, args.name)
    if args.command == "migrate":
        from gateway.commands.migrate import run_migrate

        return run_migrate(settings)
    if args.command == "changes":
        from gateway.commands.changes import run_changes

        if args.after < 0 or not 0.05 <= args.interval <= 3600:
            print("dicomweb-gateway: --after must be >= 0 and --interval between 0.05 and 3600 s", file=sys.stderr)
            return 2
        return run_changes(settings, after=args.after, follow=args.follow, interval=args.interval, as_json=args.json)

    if args.command == "import":
        from gateway.commands.bulk_import import run_import

        if not args.progress_interval > 0:
            print("dicomweb-gateway: --progress-interval must be a number of seconds > 0", file=sys.stderr)
            return 2
        return run_import(
            settings,
            args.sources,
            report=args.report,
            state_file=args.state,
            jobs=args.jobs,
            progress=not args.quiet,
            progress_interval=args.progress_interval,
        )
    if args.command == "retention":
        from gateway.commands.retention import run_retention_dry_run

        if not args.dry_run:
            print("dicomweb-gateway: retention needs --dry-run (serve runs the sweep itself)", file=sys.stderr)
            return 2
        return run_retention_dry_run(settings)
    raise AssertionError(args.command)  # argparse guarantees a known command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
