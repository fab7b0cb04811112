"""Webhook delivery: latency from commit to receipt at a steady STOW rate, and STOW throughput
with one webhook on and off.

    .venv/bin/python bench/webhooks.py         # 100 instances/s for 10 s; then 3 x 8 s each way
    .venv/bin/python bench/webhooks.py --rate 100 --seconds 20 --throughput-seconds 20 --rounds 5

Each measurement starts ``python -m gateway serve`` on its embedded defaults (file store, SQLite
index) in a fresh directory, and a receiver on loopback (an asyncio HTTP/1.1 server in a process of its own that
acknowledges every POST with 204). Latency: the receiver's clock at receipt minus the entry's
``Timestamp`` (the time its index transaction wrote it: the commit, to the millisecond), for
every entry of STOWs of ``--batch`` instances sent at ``--rate`` instances per second.
Throughput: ``--clients`` clients STOW batches as fast as the gateway takes them for
``--throughput-seconds``, without and with the webhook, alternating for ``--rounds``. CPU: the
gateway process's CPU time per instance to store ``--cpu-instances`` and deliver their entries,
without and with the webhook (Linux ``/proc``): on a shared machine, steadier than the
throughput. Delivery CPU: the gateway's CPU time per entry to deliver ``2 x --cpu-instances``
entries already stored (the receiver refuses them, 503, until all are stored), no STOW running:
the delivery's own cost, the steadiest figure of all.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import orjson
import uvloop

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``bench`` and ``tests`` importable
    sys.path.insert(0, str(ROOT))

from bench.dataset import multipart_body  # noqa: E402
from bench.report import load_average  # noqa: E402
from tests import factory  # noqa: E402
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway  # noqa: E402

SECRET = "bench-webhook-secret-0123456789"
SIDE = 64  # CT slices of 64x64: the cost measured is the feed and the webhook, not pixel bytes


class Receiver:
    """Acknowledges every POST; writes each entry's delay from commit to receipt (seconds) to a
    file, one per line. In a process of its own: in this one it would compete for the GIL with
    the STOW clients, and slow them down when the webhook is on for reasons of the benchmark's."""

    def __init__(self, tmp: Path, *, refusing: bool = False) -> None:
        self.path = tmp / f"delays-{time.monotonic_ns()}.txt"
        self.path.write_text("")
        # While this file exists every POST is answered 503 (see :meth:`accept`).
        self.refusal = tmp / f"refusing-{time.monotonic_ns()}"
        if refusing:
            self.refusal.write_text("")
        ready: multiprocessing.Queue[int] = multiprocessing.Queue()
        self.process = multiprocessing.Process(target=_receive, args=(self.path, self.refusal, ready), daemon=True)
        self.process.start()
        self.url = f"http://127.0.0.1:{ready.get(timeout=30)}/hook"

    @property
    def delays(self) -> list[float]:
        return [float(line) for line in self.path.read_text().split()]

    def accept(self) -> None:
        """Acknowledge POSTs from now on."""
        self.refusal.unlink(missing_ok=True)

    def received(self) -> int:
        return self.path.read_text().count("\n")

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(10)


def _receive(path: Path, refusal: Path, ready: multiprocessing.Queue[int]) -> None:
    """A lean HTTP/1.1 receiver on asyncio (one event loop, kept-alive connections): what it
    costs the machine is the benchmark's, not the gateway's, so it does as little as a receiver
    can (Python's ``http.server``, a thread per connection and an email parser per request,
    cost twice as much CPU per entry)."""
    out = path.open("a")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                raw = await reader.readexactly(length)
                if refusal.exists():  # noqa: ASYNC240 - one stat, the signal between processes
                    writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                    continue
                now = time.time()
                committed = datetime.fromisoformat(orjson.loads(raw)["Timestamp"].replace("Z", "+00:00")).timestamp()
                out.write(f"{now - committed}\n")
                out.flush()
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the gateway closed the connection (or stopped while sending: not an entry)
        finally:
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        ready.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    uvloop.run(serve())  # the event loop the gateway serves on too


def webhook_args(tmp: Path, receiver: Receiver) -> tuple[str, ...]:
    """The ``serve`` arguments of a gateway with one webhook, to ``receiver`` (a config file in ``tmp``)."""
    config = tmp / "gateway.toml"
    config.write_text(f'[[webhooks]]\nname = "bench"\nurl = "{receiver.url}"\nallow_http = true\nsecret = "{SECRET}"\n')
    return ("--config", str(config))


@contextmanager
def gateway(tmp: Path, receiver: Receiver | None) -> Iterator[RunningGateway]:
    tmp.mkdir(parents=True)
    args = webhook_args(tmp, receiver) if receiver is not None else ()
    gw = start_gateway(tmp, extra_args=args)
    try:
        yield gw
    finally:
        stop_gateway(gw)


def batches(count: int, batch: int, seed: int) -> list[list[bytes]]:
    """``count`` new instances in batches of ``batch``, a new study per batch."""
    return [factory.ct_series(batch, SIDE, SIDE, seed=seed + n) for n in range(count // batch)]


def stow(client: httpx.Client, gw: RunningGateway, instances: list[bytes]) -> None:
    body, content_type = multipart_body(instances)
    response = client.post(gw.url + "/studies", content=body, headers={"Content-Type": content_type})
    if response.status_code != 200:
        raise RuntimeError(f"STOW answered {response.status_code}: {response.text[:300]}")


def latency(tmp: Path, rate: float, seconds: float, batch: int) -> tuple[list[float], float]:
    """Delays of every entry at ``rate`` instances/s; and the rate actually sent."""
    work = batches(int(rate * seconds), batch, seed=9000)
    receiver = Receiver(tmp)
    with gateway(tmp / "latency", receiver) as gw, httpx.Client(timeout=60) as client:
        interval = batch / rate
        start = time.monotonic()
        for n, instances in enumerate(work):
            time.sleep(max(0.0, start + n * interval - time.monotonic()))
            stow(client, gw, instances)
        sent_for = time.monotonic() - start
        deadline = time.monotonic() + 60
        while receiver.received() < len(work) * batch and time.monotonic() < deadline:
            time.sleep(0.05)
    receiver.stop()
    return receiver.delays, len(work) * batch / sent_for


def throughput(tmp: Path, receiver: Receiver | None, clients: int, seconds: float, batch: int, seed: int) -> float:
    """Instances per second stored by ``clients`` clients STOWing back to back for ``seconds``."""
    # Enough new instances for the fastest rate seen here (a few hundred per second), per client.
    pools = [batches(int(600 * seconds / clients) // batch * batch, batch, seed + 1000 * c) for c in range(clients)]
    stored = [0] * clients
    with gateway(tmp, receiver) as gw:
        end = time.monotonic() + seconds

        def run(c: int) -> None:
            with httpx.Client(timeout=60) as client:
                for instances in pools[c]:
                    if time.monotonic() >= end:
                        return
                    stow(client, gw, instances)
                    stored[c] += len(instances)

        started = time.monotonic()
        threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
    return sum(stored) / elapsed


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_instance(tmp: Path, receiver: Receiver | None, count: int, batch: int, seed: int) -> float:
    """The gateway's CPU time per instance (ms) to store ``count`` new instances and, with a
    receiver, deliver every entry: unlike throughput, hardly moved by the machine's other load."""
    work = batches(count, batch, seed)
    with gateway(tmp, receiver) as gw, httpx.Client(timeout=60) as client:
        before = cpu_seconds(gw.process.pid)
        for instances in work:
            stow(client, gw, instances)
        deadline = time.monotonic() + 120
        while receiver is not None and receiver.received() < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return (cpu_seconds(gw.process.pid) - before) / count * 1000


def delivery_cpu(tmp: Path, count: int, batch: int, seed: int) -> float:
    """The gateway's CPU time per entry (ms) to deliver ``count`` entries already stored, with
    no STOW running: the receiver refuses them while they are stored, then acknowledges."""
    tmp.mkdir(parents=True)
    receiver = Receiver(tmp, refusing=True)
    try:
        with gateway(tmp / "gateway", receiver) as gw, httpx.Client(timeout=60) as client:
            for instances in batches(count, batch, seed):
                stow(client, gw, instances)
            before = cpu_seconds(gw.process.pid)
            receiver.accept()
            deadline = time.monotonic() + 120
            while receiver.received() < count and time.monotonic() < deadline:
                time.sleep(0.01)
            return (cpu_seconds(gw.process.pid) - before) / count * 1000
    finally:
        receiver.stop()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100.0, help="instances per second in the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    parser.add_argument("--batch", type=int, default=10, help="instances per STOW request")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients in the throughput runs")
    parser.add_argument("--throughput-seconds", type=float, default=8.0, help="length of each throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="throughput runs each way, alternating")
    parser.add_argument("--cpu-instances", type=int, default=500, help="instances of the CPU-time measurement")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp_name:
        tmp = Path(tmp_name)
        delays, sent_rate = latency(tmp, args.rate, args.seconds, args.batch)
        ms = [d * 1000 for d in delays]
        print(
            f"latency at {sent_rate:.0f} instances/s ({len(ms)} entries): p50 {percentile(ms, 50):.0f} ms,"
            f" p95 {percentile(ms, 95):.0f} ms, max {max(ms):.0f} ms, mean {statistics.fmean(ms):.0f} ms"
        )
        # Off and on alternate, round after round: the machine's other load drifts, and the
        # medians of alternating runs are what it affects least.
        offs: list[float] = []
        ons: list[float] = []
        for r in range(args.rounds):
            seed = 20000 + 10000 * r
            run = (args.clients, args.throughput_seconds, args.batch)
            offs.append(throughput(tmp / f"off-{r}", None, *run, seed))
            receiver = Receiver(tmp)
            ons.append(throughput(tmp / f"on-{r}", receiver, *run, seed + 5000))
            receiver.stop()
        off, on = statistics.median(offs), statistics.median(ons)
        print(
            f"STOW throughput ({args.clients} clients, {args.batch} instances per request, median of {args.rounds}):"
            f" webhook off {off:.0f} instances/s, on {on:.0f} instances/s ({(on - off) / off * 100:+.1f} %);"
            f" runs off {[round(x) for x in offs]}, on {[round(x) for x in ons]}"
        )
        off_cpu = cpu_per_instance(tmp / "cpu-off", None, args.cpu_instances, args.batch, seed=70000)
        receiver = Receiver(tmp)
        on_cpu = cpu_per_instance(tmp / "cpu-on", receiver, args.cpu_instances, args.batch, seed=80000)
        receiver.stop()
        print(
            f"gateway CPU per instance ({args.cpu_instances} instances): webhook off {off_cpu:.2f} ms,"
            f" on {on_cpu:.2f} ms (+{on_cpu - off_cpu:.2f} ms per delivered entry)"
        )
        delivering = delivery_cpu(tmp / "delivery", args.cpu_instances * 2, args.batch, seed=90000)
        print(
            f"gateway CPU per entry delivered with no STOW running ({args.cpu_instances * 2} entries):"
            f" {delivering:.2f} ms"
        )
        print(f"load average: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
