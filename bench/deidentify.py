"""De-identified views against plain answers: WADO-RS series and series metadata (issue #18).

    .venv/bin/python bench/deidentify.py              # a 40-slice 512x512 CT series, ~30 s
    .venv/bin/python bench/deidentify.py --slices 100 --runs 20

One gateway in process (its ASGI app, SQLite index and file store in a temporary directory),
two API keys: one answered as stored, one made with ``--deidentify basic``. Each request is
timed ``--runs`` times after one warm-up, plain and de-identified in turn; the table gives
medians and the ratio (the issue's target: within 1.5x). De-identified metadata answers are
kept once worked out: the "first" rows time them as after a restart, the de-identified views
made to forget before each request what they kept (answers), learned (which replacement UIDs
stand for which stored ones) and remembered (keyed hashes); then either the series is found by
a search first, not timed, as a viewer does (which learns the UIDs again from the index; the
plain request is preceded by the same search), or it is asked for straight away by the UIDs
handed out before the restart (the request waits for the index to be searched for them).
Times include the ASGI stack and the whole body, not the network.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.app import create_app  # noqa: E402
from gateway.security.apikeys import create_key  # noqa: E402
from gateway.settings import load_settings  # noqa: E402
from tests import factory  # noqa: E402
from tests.http_helpers import stow_body  # noqa: E402

RUNS = 5


async def measure(slices: int, runs: int = RUNS) -> list[tuple[str, float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.json"
        _, plain = create_key(keys, "plain", frozenset({"read", "write"}))
        _, deid = create_key(keys, "research", frozenset({"read"}), deidentify="basic")
        settings = load_settings(
            environ={},
            overrides={
                "data_dir": Path(tmp) / "data",
                "auth": {"api_keys_file": keys},
                "audit": {"destination": "off"},
                "deidentify": {"key": "bench"},
            },
        )
        app = create_app(settings)
        series = factory.ct_series(slices, 512, 512, seed=7)
        study, series_uid = factory.new_uid("study", 7), factory.new_uid("series", 7, 1)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client,
        ):
            body, content_type = stow_body(list(series))
            stored = await client.post(
                "/dicomweb/studies",
                content=body,
                headers={"Content-Type": content_type, "Authorization": f"Bearer {plain}"},
            )
            assert stored.status_code == 200, stored.text
            replaced = await _replacements(client, deid)
            rows = []
            views = app.state.gateway.deidentified
            json, dicom = "application/dicom+json", 'multipart/related; type="application/dicom"'
            for name, path, accept, first in (
                ("series metadata", "/metadata", json, None),
                ("series metadata, first after a restart and a search", "/metadata", json, "search"),
                ("series metadata, first after a restart, by its UIDs", "/metadata", json, "uids"),
                ("series instances", "", dicom, None),
            ):
                requests = {
                    who: (
                        f"/dicomweb/studies/{s}/series/{se}{path}",
                        {"Authorization": f"Bearer {key}", "Accept": accept},
                    )
                    for who, key, (s, se) in (("plain", plain, (study, series_uid)), ("deid", deid, replaced))
                }
                samples: dict[str, list[float]] = {"plain": [], "deid": []}
                # Plain and de-identified requests alternate, so that a change in the machine's
                # load (other work shares its cores) weighs on both alike.
                for _ in range(runs + 1):
                    for who, (url, headers) in requests.items():
                        if first and who == "deid":  # as after a restart: nothing kept, learned or remembered
                            views.forget()
                        if first == "search":  # as a viewer finds the series (not timed), plain or not
                            await _replacements(client, plain if who == "plain" else deid)
                        started = time.perf_counter()
                        response = await client.get(url, headers=headers)
                        assert response.status_code == 200, response.text
                        samples[who].append(time.perf_counter() - started)
                plain_median, deid_median = (statistics.median(samples[who][1:]) for who in ("plain", "deid"))
                rows.append((name, plain_median, deid_median))
            return rows


async def _replacements(client: httpx.AsyncClient, key: str) -> tuple[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    (study,) = (await client.get("/dicomweb/studies", headers=headers)).json()
    study_uid = study["0020000D"]["Value"][0]
    (series,) = (await client.get(f"/dicomweb/studies/{study_uid}/series", headers=headers)).json()
    return study_uid, series["0020000E"]["Value"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--runs", type=int, default=RUNS, help="timed requests of each kind (after one warm-up)")
    args = parser.parse_args()
    rows = asyncio.run(measure(args.slices, args.runs))
    print(f"| {args.slices} slices, 512x512 CT | plain ms | de-identified ms | ratio |")
    print("|---|---|---|---|")
    for name, plain, deid in rows:
        print(f"| {name} | {plain * 1000:.1f} | {deid * 1000:.1f} | {deid / plain:.2f}x |")


if __name__ == "__main__":
    main()
