"""The bad-input corpus (tests/bad_inputs.py, 300+ cases) against one gateway process:
no response is a 5xx, none stores anything, nothing is left in the spool, and the worker
is still alive and serving at the end."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import httpx
import pytest

from tests import factory
from tests.bad_inputs import all_cases
from tests.fixtures_gateway import stop_gateway
from tests.fixtures_security import SecuredGateway, leftovers, start_secured_gateway
from tests.http_helpers import stow_body

CONFIG = """
[limits]
max_body_bytes = 4000000
max_parts = 20
max_part_header_bytes = 2048
max_inflated_bytes = 8388608
max_sequence_depth = 32
"""


@pytest.fixture(scope="module")
def corpus_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredGateway]:
    sg = start_secured_gateway(tmp_path_factory.mktemp("corpus"), CONFIG)
    try:
        yield sg
    finally:
        stop_gateway(sg.gw)


@pytest.mark.timeout(600)
def test_bad_input_corpus(corpus_gateway: SecuredGateway) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid files it is asked to write
        cases = all_cases()
    assert len(cases) >= 300
    failures: dict[str, str] = {}
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=corpus_gateway.url, timeout=60) as client:
        for case in cases:
            try:
                headers = {k: v.encode("latin-1") for k, v in case.headers.items()}
                response = client.request(case.method, case.path, content=case.body, headers=headers)
            except httpx.HTTPError as exc:
                failures[case.name] = f"transport error {type(exc).__name__}"
                continue
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            refused = 400 <= response.status_code < 500
            # A path ending in "/" (an encoded "/" in a UID) is redirected by the router; fine.
            redirected = response.status_code in (307, 308) and case.name.startswith("url:")
            if response.status_code >= 500 or (case.must_refuse and not (refused or redirected)):
                failures[case.name] = f"{response.status_code}: {response.text[:200]}"
            elif "Traceback" in response.text or 'File "' in response.text:
                failures[case.name] = "stack trace in the response"
    report = "\n".join(f"  {name}: {what[:160]}" for name, what in failures.items())
    assert not failures, f"{len(failures)} of {len(cases)} cases failed (statuses {statuses}):\n{report}"
    assert corpus_gateway.gw.process.poll() is None
    assert leftovers(corpus_gateway) == []
    # Still serving: a good upload and its retrieval work after the corpus.
    good = factory.ct_instance(seed=99, rows=8, cols=8)
    body, content_type = stow_body([good])
    assert httpx.post(corpus_gateway.url + "/studies", content=body, headers={"Content-Type": content_type}).is_success
    assert len(httpx.get(corpus_gateway.url + "/instances").json()) == 1
    assert "Traceback" not in corpus_gateway.gw.log()
