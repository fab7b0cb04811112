"""The documentation against the code: every setting the gateway accepts is in the configuration
reference, every flag of the command is there too, and the README keeps its two commands at the
top and points at every page. (Links and anchors are checked by ``mkdocs build --strict`` in
scripts/test.sh.)"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from gateway.commands.cli import build_parser
from gateway.settings import DimseClient, PacsNode, Settings, Webhook

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"

TWO_COMMANDS = """```sh
scripts/run.sh     # start the gateway on its embedded defaults: http://127.0.0.1:8080/dicomweb
scripts/test.sh    # install everything the tests need (apt + PyPI), then lint, type-check and run the suite
```"""


def _setting_names(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of every leaf setting, e.g. ``limits.max_head_bytes``; the lists of tables
    (``[[pacs]]``, ``[[dimse_clients]]``, ``[[webhooks]]``, ``[[retention]]``) apart: their keys
    are documented in their own sections."""
    names: list[str] = []
    for f in dataclasses.fields(cls):
        if f.name in ("pacs", "dimse_clients", "webhooks", "retention"):
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            names += _setting_names(type(default), f"{prefix}{f.name}.")
        else:
            names.append(prefix + f.name)
    return names


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


@pytest.mark.parametrize("name", _setting_names(Settings))
def test_every_setting_is_in_the_configuration_reference(name: str) -> None:
    assert f"`{name}`" in CONFIGURATION.read_text(), f"{name} is not documented in docs/configuration.md"


@pytest.mark.parametrize("name", _setting_names(PacsNode))
def test_every_pacs_node_setting_is_in_the_pacs_section(name: str) -> None:
    section = _section(CONFIGURATION.read_text(), "## Legacy PACS: `[[pacs]]`")
    assert f"`{name}`" in section, f"[[pacs]] {name} is not documented in docs/configuration.md"


@pytest.mark.parametrize("name", _setting_names(DimseClient))
def test_every_dimse_client_setting_is_in_the_dimse_section(name: str) -> None:
    section = _section(CONFIGURATION.read_text(), "## DIMSE front door: `[[dimse_clients]]`")
    assert f"`{name}`" in section, f"[[dimse_clients]] {name} is not documented in docs/configuration.md"
    assert "`dimse_clients`" in section


@pytest.mark.parametrize("name", _setting_names(Webhook))
def test_every_webhook_setting_is_in_the_webhooks_section(name: str) -> None:
    section = _section(CONFIGURATION.read_text(), "## Webhooks: `[[webhooks]]`")
    assert f"`{name}`" in section, f"[[webhooks]] {name} is not documented in docs/configuration.md"
    assert "`webhooks`" in section


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    found: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _flags(sub)
        found |= {flag for flag in action.option_strings if flag.startswith("--") and flag != "--help"}
    return found


def test_every_command_line_flag_is_in_the_configuration_reference() -> None:
    text = CONFIGURATION.read_text()
    missing = sorted(flag for flag in _flags(build_parser()) if f"`{flag}" not in text)
    assert not missing, f"flags not documented in docs/configuration.md: {missing}"


def test_the_readme_opens_with_the_two_commands_and_points_at_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme.index(TWO_COMMANDS) < readme.index("\n## "), "the two commands come before any section"
    pages = {p.name for p in DOCS.glob("*.md")}
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", readme))
    assert pages <= linked, f"pages the README does not point at: {sorted(pages - linked)}"


def test_every_page_is_in_the_site_navigation() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    in_nav = {next(iter(entry.values())) for entry in config["nav"]}
    assert in_nav == {p.name for p in DOCS.glob("*.md")}
