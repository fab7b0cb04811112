"""Webhooks (issue #16): real gateway processes POST the change feed to a receiver written here
(an HTTP server on loopback) that checks every signature and the order, and fails when told to.
On SQLite and PostgreSQL; two replicas on one PostgreSQL deliver each entry once; a gateway
killed with SIGKILL while entries are pending delivers them after its restart, nothing that was
acknowledged twice; one stopped amid a batch does not send its acknowledged entries again;
filters; settings refused at start-up."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import trustme

from gateway.adapters.postgres_index import parse_url
from tests import factory
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.http_helpers import stow, uids_of

pytestmark = pytest.mark.timeout(240)

SECRET = "a-webhook-secret-of-some-length"


@dataclass
class Delivery:
    sequence: int
    body: dict[str, Any]
    acknowledged: bool
    webhook: str = ""


@dataclass
class Receiver:
    """Records every POST; answers 503 to the first ``fail_first`` and while ``failing``."""

    fail_first: int = 0
    failing: bool = False
    delay: float = 0.0  # seconds before a POST is answered (and recorded)
    attempts: list[Delivery] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # bad signatures, headers that disagree
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def acknowledged(self) -> list[Delivery]:
        with self.lock:
            return [d for d in self.attempts if d.acknowledged]

    def handle(self, headers: Any, raw: bytes) -> int:
        expected = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
        body = orjson.loads(raw)
        with self.lock:
            if not hmac.compare_digest(headers.get("X-Gateway-Signature", ""), expected):
                self.problems.append(f"bad signature on {raw[:80]!r}")
            if headers.get("X-Gateway-Sequence") != str(body.get("Sequence")):
                self.problems.append(f"X-Gateway-Sequence {headers.get('X-Gateway-Sequence')} != {body}")
            if headers.get("Content-Type") != "application/json":
                self.problems.append(f"content type {headers.get('Content-Type')}")
            fail = self.failing or len(self.attempts) < self.fail_first
            delivery = Delivery(int(body["Sequence"]), body, not fail, headers.get("X-Gateway-Webhook", ""))
            self.attempts.append(delivery)
        return 503 if fail else 204


@contextlib.contextmanager
def serving(state: Receiver, tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    """``state`` answering on a loopback port (over TLS with ``tls``), its ``url`` set."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(state.delay)
            self.send_response(state.handle(self.headers, raw))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme, host = ("https", "localhost") if tls is not None else ("http", "127.0.0.1")
    state.url = f"{scheme}://{host}:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving(Receiver()) as state:
        yield state


def hook_config(url: str, **extra: str) -> str:
    lines = ["[[webhooks]]", 'name = "ai"', f'url = "{url}"', "allow_http = true", f'secret = "{SECRET}"']
    lines += [f"{key} = {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def start_with(tmp: Path, config: str, *args: str) -> RunningGateway:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "gateway.toml").write_text(config)
    return start_gateway(tmp, extra_args=("--config", str(tmp / "gateway.toml"), *args))


@pytest.fixture(params=["sqlite", "postgres"])
def index_args(request: pytest.FixtureRequest) -> tuple[str, ...]:
    if request.param == "postgres":
        return ("--index-url", request.getfixturevalue("postgres_url"))
    return ()


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.05)


def pending(gw: RunningGateway) -> dict[str, int]:
    hooks = httpx.get(gw.root + "/readyz", timeout=10).json()["webhooks"]
    return {name: hook["pending"] for name, hook in hooks.items()}


def hook_state(gw: RunningGateway, name: str = "ai") -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(gw.root + "/readyz", timeout=10).json()["webhooks"][name]
    return state


def feed_sequences(gw: RunningGateway) -> list[int]:
    response = httpx.get(gw.url + "/changefeed", params={"limit": 200, "includeMetadata": "false"}, timeout=30)
    assert response.status_code == 200, response.text
    return [int(e["Sequence"]) for e in response.json()]


def test_each_entry_is_posted_signed_in_order_and_retried_until_acknowledged(
    tmp_path: Path, receiver: Receiver, index_args: tuple[str, ...]
) -> None:
    receiver.fail_first = 2  # the first entry is refused twice: retried after 1 s, then 2 s
    gw = start_with(tmp_path, hook_config(receiver.url), *index_args)
    try:
        instances = factory.ct_series(4, 32, 32, seed=1601)
        assert stow(gw.url, instances).status_code == 200
        wait_for(lambda: len(receiver.acknowledged()) == 4, 30, "four entries acknowledged")
        sequences = feed_sequences(gw)
        acked = receiver.acknowledged()
        assert [d.sequence for d in acked] == sequences
        assert [d.sequence for d in receiver.attempts] == [sequences[0]] * 3 + sequences[1:]
        assert receiver.problems == []
        assert {(d.body["StudyInstanceUid"], d.body["SeriesInstanceUid"], d.body["SopInstanceUid"]) for d in acked} == {
            uids_of(data) for data in instances
        }
        first = acked[0].body
        assert (first["Action"], first["State"], first["Origin"]) == ("create", "current", "stow")
        assert "Metadata" not in first  # include_metadata is off by default
        # The receiver saw the last POST before the gateway read its answer: wait for that too.
        wait_for(lambda: hook_state(gw)["pending"] == 0, 30, "the cursor after the last entry")
        ready = hook_state(gw)
        assert (ready["delivered"], ready["failed_attempts"], ready["failing"], ready["pending"]) == (4, 2, 0, 0)
        metrics = httpx.get(gw.root + "/metrics", timeout=10).text
        assert 'dicomweb_gateway_webhook_deliveries_total{outcome="failed",webhook="ai"} 2.0' in metrics
        assert 'dicomweb_gateway_webhook_deliveries_total{outcome="acknowledged",webhook="ai"} 4.0' in metrics
    finally:
        stop_gateway(gw)


def test_a_failing_receiver_shows_as_pending_and_failing(tmp_path: Path, receiver: Receiver) -> None:
    receiver.failing = True
    gw = start_with(tmp_path, hook_config(receiver.url))
    try:
        assert stow(gw.url, factory.ct_series(3, 32, 32, seed=1611)).status_code == 200
        wait_for(lambda: hook_state(gw)["failing"] >= 2, 30, "two failed attempts")
        ready = httpx.get(gw.root + "/readyz", timeout=10)
        assert ready.status_code == 200  # a receiver that is down does not make the gateway unready
        hook = ready.json()["webhooks"]["ai"]
        assert (hook["pending"], hook["delivered"]) == (3, 0)
        assert hook["failing"] >= 2
        assert "503" in hook["last_error"]
        assert {d.sequence for d in receiver.attempts} == {feed_sequences(gw)[0]}  # nothing after it yet
    finally:
        stop_gateway(gw)


def test_metadata_when_asked_for_and_filters_on_action_and_origin(tmp_path: Path, receiver: Receiver) -> None:
    config = hook_config(receiver.url, actions='["delete"]')
    config += hook_config(receiver.url, origins='["pacs"]').replace('name = "ai"', 'name = "cache"')
    uploads = hook_config(receiver.url, origins='["stow"]', include_metadata="true")
    config += uploads.replace('name = "ai"', 'name = "uploads"').replace(
        f'secret = "{SECRET}"', 'secret_env = "UPLOADS_WEBHOOK_SECRET"'
    )
    (tmp_path / "gateway.toml").write_text(config)
    gw = start_gateway(
        tmp_path,
        extra_args=("--config", str(tmp_path / "gateway.toml")),
        env={"UPLOADS_WEBHOOK_SECRET": SECRET},
    )
    try:
        instances = factory.ct_series(2, 32, 32, seed=1621)
        study, series, sop = uids_of(instances[0])
        assert stow(gw.url, instances).status_code == 200
        # Metadata is the instance's while it is stored (the feed's rule): delete once it is sent.
        wait_for(lambda: len(receiver.acknowledged()) == 2, 30, "the two creates")
        deleted = httpx.delete(f"{gw.url}/studies/{study}/series/{series}/instances/{sop}", timeout=30)
        assert deleted.status_code == 204, deleted.text
        wait_for(lambda: len(receiver.acknowledged()) == 3, 30, "the delete entry")
        # The others were passed over, by "ai" (actions) and by "cache" (origins: nothing came
        # from a PACS): every cursor reaches the end of the feed without another POST.
        wait_for(lambda: set(pending(gw).values()) == {0}, 30, "every cursor at the end of the feed")
        time.sleep(0.3)
        by_hook: dict[str, list[dict[str, Any]]] = {}
        for delivery in receiver.acknowledged():
            by_hook.setdefault(delivery.webhook, []).append(delivery.body)
        assert sorted(by_hook) == ["ai", "uploads"]
        [removal] = by_hook["ai"]
        assert (removal["Action"], removal["SopInstanceUid"], removal["Origin"]) == ("delete", sop, "delete")
        assert "Metadata" not in removal  # include_metadata is off
        creates = by_hook["uploads"]
        assert [(b["Action"], b["Origin"]) for b in creates] == [("create", "stow")] * 2
        # Signed with the secret from the environment (the receiver checks every signature),
        # and with the instance's DICOM JSON, as GET .../metadata gives it.
        assert {b["Metadata"]["00080018"]["Value"][0] for b in creates} == {uids_of(d)[2] for d in instances}
        assert receiver.problems == []
    finally:
        stop_gateway(gw)


def test_series_stable_follows_a_quiet_period(tmp_path: Path, receiver: Receiver) -> None:
    gw = start_with(tmp_path, hook_config(receiver.url, series_stable_seconds="1.5"))
    try:
        instances = factory.ct_series(3, 32, 32, seed=1631)
        assert stow(gw.url, instances).status_code == 200
        wait_for(lambda: len(receiver.acknowledged()) == 4, 30, "three creates and one series-stable")
        bodies = [d.body for d in receiver.acknowledged()]
        assert [b["Action"] for b in bodies] == ["create"] * 3 + ["series-stable"]
        assert bodies[3]["SeriesInstanceUid"] == uids_of(instances[0])[1]
        assert bodies[3]["Sequence"] == bodies[2]["Sequence"]  # named by the series' last entry
        assert receiver.problems == []
    finally:
        stop_gateway(gw)


def test_two_replicas_on_postgresql_deliver_each_entry_once(
    tmp_path: Path, receiver: Receiver, postgres_url: str
) -> None:
    objects = f"file://{tmp_path / 'objects'}"
    config = hook_config(receiver.url)
    a = start_with(tmp_path / "a", config, "--index-url", postgres_url, "--storage-url", objects)
    try:
        b = start_with(tmp_path / "b", config, "--index-url", postgres_url, "--storage-url", objects)
        try:
            for n in range(6):
                gw = (a, b)[n % 2]
                assert stow(gw.url, factory.ct_series(2, 32, 32, seed=1641 + n)).status_code == 200
            wait_for(lambda: len(receiver.acknowledged()) == 12, 60, "twelve entries")
            time.sleep(1.0)  # long enough for a second replica's duplicate to arrive, were there one
            assert [d.sequence for d in receiver.attempts] == feed_sequences(a)
            states = [httpx.get(gw.root + "/readyz", timeout=10).json()["webhooks"]["ai"] for gw in (a, b)]
            assert sorted(s["delivering"] for s in states) == [False, True]
            # The replica delivering stops (a rolling update): it gives its lease up, and the
            # other carries on at once, long before the 30 s lease would have lapsed.
            holder, other = (a, b) if states[0]["delivering"] else (b, a)
            stop_gateway(holder)
            # Its lease was not left to lapse: the row names no holder, or already the other.
            conninfo, schema = parse_url(postgres_url)[:2]
            with psycopg.connect(conninfo, options=f"-c search_path={schema}") as conn:
                row = conn.execute("SELECT holder FROM webhook_cursors WHERE name = 'ai'").fetchone()
            assert row is not None
            assert row[0] in (None, (other.data_dir / "replica-id").read_text().strip())
            assert stow(other.url, factory.ct_series(2, 32, 32, seed=1648)).status_code == 200
            wait_for(lambda: len(receiver.acknowledged()) == 14, 60, "two more entries")
            assert [d.sequence for d in receiver.attempts] == feed_sequences(other)
            assert receiver.problems == []
        finally:
            stop_gateway(b)
    finally:
        stop_gateway(a)


def test_a_gateway_killed_with_pending_entries_delivers_them_after_restart(
    tmp_path: Path, receiver: Receiver, index_args: tuple[str, ...]
) -> None:
    config = hook_config(receiver.url)
    gw = start_with(tmp_path, config, *index_args)
    try:
        assert stow(gw.url, factory.ct_series(2, 32, 32, seed=1651)).status_code == 200
        wait_for(lambda: len(receiver.acknowledged()) == 2, 30, "the first two entries")
        receiver.failing = True
        assert stow(gw.url, factory.ct_series(3, 32, 32, seed=1652)).status_code == 200
        # Two failed attempts of the third entry: the cursor stands after the second (it moved
        # before the third was first tried).
        wait_for(lambda: len(receiver.attempts) >= 4, 30, "the third entry refused twice")
        gw.process.send_signal(signal.SIGKILL)
        gw.process.wait(10)
    finally:
        stop_gateway(gw)
    receiver.failing = False
    again = start_gateway(tmp_path, extra_args=("--config", str(tmp_path / "gateway.toml"), *index_args))
    try:
        wait_for(lambda: len(receiver.acknowledged()) == 5, 30, "the three pending entries")
        time.sleep(0.5)
        sequences = feed_sequences(again)
        assert [d.sequence for d in receiver.acknowledged()] == sequences  # each once, in order
        assert receiver.problems == []
    finally:
        stop_gateway(again)


def test_a_gateway_stopped_amid_a_batch_does_not_send_its_acknowledged_entries_again(
    tmp_path: Path, receiver: Receiver
) -> None:
    # The cursor is stored once per batch of entries (or second of deliveries): a gateway that
    # stops before the batch's end stores what was acknowledged so far as it stops.
    receiver.delay = 0.2
    gw = start_with(tmp_path, hook_config(receiver.url))
    try:
        before = hook_state(gw)["acknowledged_sequence"]
        assert stow(gw.url, factory.ct_series(6, 32, 32, seed=1661)).status_code == 200
        wait_for(lambda: len(receiver.acknowledged()) >= 2, 30, "two entries acknowledged")
        assert hook_state(gw)["acknowledged_sequence"] == before  # not stored yet: mid-batch
    finally:
        stop_gateway(gw)
    # The last one the receiver saw may have been answered after the gateway stopped listening.
    done = [d.sequence for d in receiver.acknowledged()][:-1]
    assert len(done) >= 1
    receiver.delay = 0.0
    again = start_gateway(tmp_path, extra_args=("--config", str(tmp_path / "gateway.toml")))
    try:
        sequences = feed_sequences(again)
        wait_for(lambda: {d.sequence for d in receiver.acknowledged()} == set(sequences), 30, "every entry")
        acknowledged = [d.sequence for d in receiver.acknowledged()]
        assert all(acknowledged.count(sequence) == 1 for sequence in done)
        assert sorted(set(acknowledged)) == sequences
        assert receiver.problems == []
    finally:
        stop_gateway(again)


def test_https_receivers_are_verified_against_the_trusted_cas(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with serving(Receiver(), server_context) as receiver:
        config = hook_config(receiver.url).replace("allow_http = true\n", "")
        # A receiver whose certificate no trusted CA signed gets nothing: failing, retried.
        untrusted = start_with(tmp_path / "untrusted", config)
        try:
            assert stow(untrusted.url, factory.ct_series(1, 32, 32, seed=1661)).status_code == 200
            wait_for(lambda: hook_state(untrusted)["failing"] >= 1, 30, "a failed attempt")
            assert "certificate" in hook_state(untrusted)["last_error"].lower()
            assert receiver.attempts == []
        finally:
            stop_gateway(untrusted)
        # With the CA trusted (SSL_CERT_FILE, as OpenSSL reads it), entries arrive.
        (tmp_path / "trusted").mkdir()
        (tmp_path / "trusted" / "gateway.toml").write_text(config)
        trusted = start_gateway(
            tmp_path / "trusted",
            extra_args=("--config", str(tmp_path / "trusted" / "gateway.toml")),
            env={"SSL_CERT_FILE": str(ca_file)},
        )
        try:
            assert stow(trusted.url, factory.ct_series(2, 32, 32, seed=1662)).status_code == 200
            wait_for(lambda: len(receiver.acknowledged()) == 2, 30, "two entries over HTTPS")
            assert [d.sequence for d in receiver.acknowledged()] == feed_sequences(trusted)
            assert receiver.problems == []
        finally:
            stop_gateway(trusted)


BAD_HOOKS = [
    ('name = "ai"\nurl = "http://example.org/hook"\nsecret = "' + SECRET + '"', "plain http"),
    ('name = "ai"\nurl = "https://example.org/hook"', "secret (or secret_env) is required"),
    ('name = "ai"\nurl = "https://example.org/hook"\nsecret = "short"', "at least 16 characters"),
    ('name = "ai"\nurl = "ftp://example.org/hook"\nsecret = "' + SECRET + '"', "must be an absolute https"),
    ('name = "a b"\nurl = "https://example.org/hook"\nsecret = "' + SECRET + '"', "name must be letters"),
    (
        'name = "ai"\nurl = "https://example.org/hook"\nsecret = "' + SECRET + '"\nactions = ["created"]',
        "action 'created' is not one of",
    ),
    (
        'name = "ai"\nurl = "https://example.org/hook"\nsecret = "' + SECRET + '"\nactions = ["series-stable"]',
        "needs series_stable_seconds",
    ),
    ('name = "ai"\nurl = "https://example.org/hook"\nsecret_env = "NO_SUCH_VARIABLE_HERE"', "which is not set"),
    (
        'name = "ai"\nurl = "https://user:pw@example.org/hook"\nsecret = "' + SECRET + '"',
        "must not carry credentials",
    ),
    ('name = "ai"\nurl = "https://example.org/hook"\nsecret = "' + SECRET + '"\ntimeout = 90', "timeout must be"),
]


@pytest.mark.parametrize(("table", "message"), BAD_HOOKS, ids=[m for _, m in BAD_HOOKS])
def test_bad_webhook_settings_are_refused_at_start(tmp_path: Path, table: str, message: str) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f"[[webhooks]]\n{table}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--data", str(tmp_path / "data"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr


def test_two_webhooks_with_one_name_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(hook_config("https://example.org/a") + hook_config("https://example.org/b"))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--data", str(tmp_path / "data"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "the name is used by another [[webhooks]] entry" in result.stderr
