"""The DIMSE front door's settings: [[dimse_clients]] as the issue shows them, [dimse] limits,
[dimse_tls]; one clear line for every wrong one."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.dicom.restriction import Restriction
from gateway.settings import Settings, SettingsError, load_settings

CLIENT = """
scp_port = 11112

[[dimse_clients]]
name = "ct-scanner-1"
ae_title = "CT1"
host = "10.1.2.3"
port = 104
scopes = ["read", "write"]
"""


def load(tmp_path: Path, text: str) -> Settings:
    config = tmp_path / "gw.toml"
    config.write_text(text)
    return load_settings(config_file=config, environ={})


def test_the_issue_example_loads(tmp_path: Path) -> None:
    text = (
        CLIENT + 'restriction = { PatientID = ["P-1"], StudyInstanceUID = ["1.2.3"] }\n[dimse]\nmax_associations = 4\n'
    )
    s = load(tmp_path, text)
    (client,) = s.dimse_clients
    assert (client.name, client.ae_title, client.host, client.port) == ("ct-scanner-1", "CT1", "10.1.2.3", 104)
    assert client.scopes == ("read", "write")
    assert client.restriction == Restriction(frozenset({"P-1"}), frozenset({"1.2.3"}))
    assert s.dimse.max_associations == 4
    assert s.dimse.max_pdu_length == 1 << 20


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CLIENT.replace("scp_port = 11112", ""), "need scp_port"),
        (CLIENT.replace('"CT1"', '"CT\\\\1"'), "ae_title"),
        (CLIENT.replace('"CT1"', '"SEVENTEEN-CHARS-X"'), "ae_title"),
        (CLIENT.replace('"write"]', '"admin"]'), "scope 'admin'"),
        (CLIENT.replace('"ct-scanner-1"', '"ct scanner"'), "name must be"),
        (CLIENT.replace("port = 104", "port = 0"), "port 0 is out of range"),
        (CLIENT + '[[dimse_clients]]\nname = "ct-scanner-1"\nae_title = "CT2"\n', "name is used"),
        (CLIENT + '[[pacs]]\nname = "ct-scanner-1"\nae_title = "PACS"\nhost = "pacs"\n', "name is used"),
        (CLIENT + '[[dimse_clients]]\nname = "other"\nae_title = "CT1"\n', "is used by [[dimse_clients]]"),
        (
            CLIENT + '[[pacs]]\nname = "main"\nae_title = "CT1"\nhost = "pacs"\n',
            "is used by [[pacs]] 'main'",
        ),
        (CLIENT + 'restriction = { PatientName = ["X"] }\n', "unknown member 'PatientName'"),
        (CLIENT + "restriction = { PatientID = [1] }\n", "list of strings"),
        (CLIENT + "[dimse]\nmax_associations = 0\n", "dimse.max_associations must be positive"),
        (CLIENT + "[dimse]\nmax_pdu_length = 100\n", "at least 4096"),
        (CLIENT + '[dimse_tls]\ncert_file = "/nonexistent.pem"\n', "go together"),
        (CLIENT + '[dimse_tls]\ncert_file = "/no.pem"\nkey_file = "/no.key"\n', "does not exist"),
        (CLIENT + '[dimse_tls]\nmin_version = "1.1"\n', "min_version"),
    ],
)
def test_wrong_dimse_settings_are_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load(tmp_path, text)
    assert message in str(caught.value), str(caught.value)


PACS = '[[pacs]]\nname = "main"\nae_title = "PACS1"\nhost = "10.1.2.10"\n'


def test_a_pacs_node_may_also_push_under_its_own_ae_title(tmp_path: Path) -> None:
    s = load(tmp_path, "scp_port = 11112\n" + PACS + 'scopes = ["write"]\n')
    assert s.pacs[0].scopes == ("write",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("scp_port = 11112\n" + PACS + 'scopes = ["read"]\n', "pacs 'main': scope 'read' is not \"write\""),
        (PACS + 'scopes = ["write"]\n', "pacs 'main': scopes need scp_port"),
    ],
)
def test_wrong_pacs_scopes_are_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load(tmp_path, text)
