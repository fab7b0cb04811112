"""``dicomweb-gateway apikey create|revoke|list``: manage the API key file.

``create`` prints the new key once, on stdout, alone on its line (so scripts can capture it);
only its salted hash is stored. The key file is ``--keys-file`` or the ``auth.api_keys_file``
setting (``--config``, environment).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gateway.security.apikeys import ApiKeyError, create_key, read_keys, revoke_key
from gateway.security.principal import DEIDENTIFY_PROFILES, SCOPES
from gateway.settings import load_settings


def add_apikey_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    apikey = sub.add_parser("apikey", help="create, revoke or list API keys for machine clients")
    actions = apikey.add_subparsers(dest="apikey_command", required=True)
    for name, help_text in (("create", "create a key and print it once"), ("revoke", "revoke keys by name"),
                            ("list", "list keys (never the keys themselves)")):  # fmt: skip
        p = actions.add_parser(name, help=help_text)
        p.add_argument("--config", type=Path, help="TOML settings file (for auth.api_keys_file)")
        p.add_argument("--keys-file", type=Path, help="the API key file (default: auth.api_keys_file)")
        if name != "list":
            p.add_argument("name", help="the key's name, e.g. the uploader it belongs to")
        if name == "create":
            p.add_argument(
                "--scope", action="append", choices=sorted(SCOPES), required=True, help="repeat for several scopes"
            )
            p.add_argument(
                "--restriction",
                help='study restriction as JSON, e.g. \'{"StudyInstanceUID": ["1.2.3"]}\' (see docs/security.md)',
            )
            p.add_argument(
                "--deidentify",
                choices=sorted(DEIDENTIFY_PROFILES),
                help="every answer to this key is de-identified by this profile (see docs/security.md)",
            )


def run_apikey(args: argparse.Namespace) -> int:
    path: Path | None = args.keys_file
    if path is None:
        path = load_settings(config_file=args.config).auth.api_keys_file
    if path is None:
        print("dicomweb-gateway: no key file: give --keys-file or set auth.api_keys_file", file=sys.stderr)
        return 2
    path = path.expanduser()
    try:
        if args.apikey_command == "create":
            restriction = json.loads(args.restriction) if args.restriction else None
            entry, key = create_key(path, args.name, frozenset(args.scope), restriction, args.deidentify)
            print(f"created API key {entry.name!r} with scopes {', '.join(sorted(entry.scopes))} in {path};"
                  " it is shown once:", file=sys.stderr)  # fmt: skip
            print(key)
            return 0
        if args.apikey_command == "revoke":
            if revoke_key(path, args.name) == 0:
                print(f"dicomweb-gateway: no active key named {args.name!r}", file=sys.stderr)
                return 1
            return 0
        for e in read_keys(path):
            state = "revoked" if e.revoked else "active"
            view = f"\tdeidentify={e.deidentify}" if e.deidentify else ""
            print(f"{e.name}\t{e.id}\t{','.join(sorted(e.scopes))}\t{e.created}\t{state}{view}")
        return 0
    except (ApiKeyError, ValueError) as exc:
        print(f"dicomweb-gateway: {exc}", file=sys.stderr)
        return 2
