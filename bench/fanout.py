"""Benchmark: subscription fan-out from one modelplane process to many WebSocket clients.

Two scenarios, each against a fresh FerretDB and a ``modelplane serve`` child process:

* ``events`` (issue: Live updates): ``--subscribers`` (1,000) WebSocket clients spread over
  ``--client-processes`` (4) separate processes subscribe to ``modelEvents`` of one model; a
  writer changes the model every ``--interval-ms`` (10) for ``--seconds`` (60). Each event's
  ``at`` is the server's append time, so delivery latency is receipt time minus ``at`` (one
  machine, one clock). ``--writer log`` appends straight into the event log from the
  benchmark's process (another process, as a download Job's pod does), which the server must
  notice by polling; ``--writer api`` changes the model through the ``updateModel`` mutation
  (the event is appended in the server's process), 64 requests in flight over 64 models;
  ``both`` (the default) runs one after the other. Printed: p50/p99/max latency, events lost
  (expected minus received, per subscriber), OVERFLOW markers, server CPU and peak RSS, and
  whether the writer kept its pace (on the embedded FerretDB the mutations cannot: each costs
  about 13 ms of FerretDB CPU). Target: p99 <= 100 ms, 0 lost.
* ``progress``: ``--progress-subscribers`` (200) clients on ``modelEvents``; the writer appends
  ``--progress-rate`` (5,000) PROGRESS events per second for one model's weights (batched
  inserts with dense cursors, from the benchmark's process). Printed: whether every
  subscriber ended on the final value, how many events each received (coalescing), and the
  server's RSS over time (flat means the queues stay bounded).

    uv run python bench/fanout.py [--scenario events|progress|both] [--writer log|api|both]
                                  [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import websockets
from websockets.typing import Subprotocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bson.int64 import Int64  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402

from live import EventLog, EventType, ResourceKind  # noqa: E402
from modelplane.auth import issue_dev_token, load_dev_key  # noqa: E402
from modelplane.embedded import FerretDBProcess, default_ferretdb_binary, free_port  # noqa: E402
from storage.documents import (  # noqa: E402
    AccessMode,
    ModelDocument,
    ModelPhase,
    ModelSource,
    Role,
    utcnow,
)
from storage.repositories import ensure_indexes  # noqa: E402

SECRET = "benchmark-secret-key-0123456789-abcdefghij"  # noqa: S105  a throwaway bench key
METRICS_TOKEN = "bench-metrics-token"  # noqa: S105  MODELPLANE_METRICS_TOKEN, reads /metrics
DATABASE = "fanout"
ORG = "org-bench"
MODEL_ID = "model-fanout"
WRITE_MODELS = 64  # the API writer spreads updates over models (one model's writes serialise)
SUBSCRIPTION = """subscription Fanout($modelId: ID, $after: String) {
  # modelId null: every model of the organisation (the events scenario writes to several)
  modelEvents(modelId: $modelId, after: $after) { cursor type at progress { bytesDone } }
}"""
UPDATE = """mutation Touch($id: ID!, $label: String!) {
  updateModel(id: $id, input: {label: $label}) { __typename }
}"""


# -- client processes ---------------------------------------------------------------------


async def _subscriber(
    url: str, token: str, model_id: str | None, ready: asyncio.Event, out: dict[str, Any]
) -> None:
    """Subscribe; on OVERFLOW resubscribe with ``after`` (what a real client does), so
    ``cursors`` ends up holding every event this subscriber ever received."""
    after: str | None = None
    while True:
        after = await _subscribe_once(url, token, model_id, after=after, ready=ready, out=out)
        if after is None:
            return
        out["overflows"] += 1


async def _subscribe_once(
    url: str,
    token: str,
    model_id: str | None,
    *,
    after: str | None,
    ready: asyncio.Event,
    out: dict[str, Any],
) -> str | None:
    async with websockets.connect(
        url, subprotocols=[Subprotocol("graphql-transport-ws")], max_queue=None
    ) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": token}}))
        if json.loads(await ws.recv())["type"] != "connection_ack":
            raise RuntimeError("the server refused connection_init")
        variables = {"modelId": model_id, "after": after}
        await ws.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": SUBSCRIPTION, "variables": variables},
                }
            )
        )
        ready.set()
        async for raw in ws:
            received = time.time()
            message = json.loads(raw)
            if message["type"] != "next":
                return None
            event = message["payload"]["data"]["modelEvents"]
            if event["type"] == "OVERFLOW":
                return str(event["cursor"])
            if event["type"] == "RESYNC_REQUIRED":
                out["resyncs"] += 1
                continue
            out["cursors"].add(int(event["cursor"]))
            out["received"] += 1
            if event["at"] and after is None:  # replayed events are late by design
                at = datetime.fromisoformat(event["at"]).timestamp()
                out["latencies"].append(received - at)
            if event["progress"] is not None:
                out["last_progress"] = event["progress"]["bytesDone"]
    return None


async def client_main(
    url: str, token: str, count: int, seconds: float, model_id: str | None
) -> None:
    """One client process: ``count`` subscribers; prints JSON per subscriber at the end."""
    outs: list[dict[str, Any]] = [
        {
            "cursors": set(),
            "received": 0,
            "latencies": [],
            "overflows": 0,
            "resyncs": 0,
            "last_progress": None,
        }
        for _ in range(count)
    ]
    readies = [asyncio.Event() for _ in range(count)]
    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(_subscriber(url, token, model_id, readies[i], outs[i])))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # do not stampede the server's accept queue
    await asyncio.gather(*(r.wait() for r in readies))
    print("READY", flush=True)
    del seconds  # the parent closes our stdin once its writer finished and deliveries drained
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for out in outs:
        out["count"] = len(out.pop("cursors"))
    print(json.dumps(outs), flush=True)


# -- the server and the writers -------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _seed(uri: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    database = client[DATABASE]
    await ensure_indexes(database)
    for i in range(WRITE_MODELS):
        model = ModelDocument(
            id=MODEL_ID if i == 0 else f"{MODEL_ID}-{i}",
            organization_id=ORG,
            name=f"fanout-{i}",
            name_key=f"fanout-{i}",
            display_name="Fan-out benchmark",
            source=ModelSource(url="http://127.0.0.1:9/v1", access_mode=AccessMode.REMOTE_API),
            phase=ModelPhase.READY,
        )
        await database["models"].insert_one(model.to_mongo())
    await client.close()


GO_CLIENT_SOURCE = ROOT / "bench" / "fanout_client"
GO_CLIENT_BINARY = Path.home() / ".cache" / "modelplane" / "bench" / "fanoutclient"


def _go_client() -> Path:
    """Build the Go subscriber process (``bench/fanout_client``) when missing or stale."""
    sources = [*GO_CLIENT_SOURCE.glob("*.go"), GO_CLIENT_SOURCE / "go.mod"]
    binary = GO_CLIENT_BINARY
    if not binary.exists() or binary.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        binary.parent.mkdir(parents=True, exist_ok=True)
        print(f"building the Go client into {binary}", flush=True)
        go = shutil.which("go")
        if go is None:
            raise RuntimeError("the Go client needs `go` on PATH (or run with --clients python)")
        subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_CLIENT_SOURCE, check=True)
    return binary


def _start_clients(
    url: str,
    token: str,
    total: int,
    *,
    processes: int,
    seconds: float,
    model_id: str,
    clients: str,
    metrics: str,
) -> list[subprocess.Popen[str]]:
    per = [total // processes + (1 if i < total % processes else 0) for i in range(processes)]
    binary = _go_client() if clients == "go" else None

    def command(n: int) -> list[str]:
        if binary is not None:
            return [str(binary), url, token, str(n), model_id, SUBSCRIPTION]
        return [sys.executable, __file__, "--client", url, token, str(n), str(seconds), model_id]

    children = [
        subprocess.Popen(
            command(n),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for n in per
        if n
    ]
    for child in children:
        line = child.stdout.readline().strip() if child.stdout is not None else ""
        if line != "READY":
            raise RuntimeError(f"a client process failed to subscribe: {line!r}")
    _wait_subscribed(metrics, total)
    return children


def _collect(children: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for child in children:
        if child.stdin is not None:
            child.stdin.close()  # the client's signal to stop and report
    for child in children:
        out = child.stdout.read() if child.stdout is not None else ""
        child.wait(timeout=600)
        results.extend(json.loads(out.strip().splitlines()[-1]))
    return results


async def _write_api(base: str, token: str, interval: float, seconds: float) -> int:
    """``updateModel`` on the tick, round-robin over the models, up to 64 requests in flight."""
    written = 0
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    gate = asyncio.Semaphore(64)
    async with httpx.AsyncClient(timeout=60, headers=headers, limits=limits) as http:

        async def touch(n: int) -> None:
            nonlocal written
            model = MODEL_ID if n % WRITE_MODELS == 0 else f"{MODEL_ID}-{n % WRITE_MODELS}"
            async with gate:
                response = await http.post(
                    f"{base}/graphql",
                    json={"query": UPDATE, "variables": {"id": model, "label": f"v{n}"}},
                )
            data = response.json().get("data") or {}
            if (data.get("updateModel") or {}).get("__typename") == "Model":
                written += 1

        start = time.perf_counter()
        n = 0
        pending: set[asyncio.Task[None]] = set()
        while time.perf_counter() - start < seconds:
            task = asyncio.create_task(touch(n))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
            delay = start + n * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*pending)
    return written


async def _write_log(uri: str, interval: float, seconds: float) -> int:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    log = EventLog(client[DATABASE])
    written = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        written += 1
        await log.append(
            organization_id=ORG,
            resource_kind=ResourceKind.MODEL,
            resource_id=MODEL_ID,
            type=EventType.UPDATED,
            model_ids=(MODEL_ID,),
        )
        delay = start + written * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    await client.close()
    return written


async def _write_progress(uri: str, rate: int, seconds: float) -> int:
    """``rate`` PROGRESS events per second in batches every 10 ms; returns the final value."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    database = client[DATABASE]
    head = await database["event_head"].find_one({"_id": "head"})
    cursor = 0 if head is None else int(head["cursor"])
    batch = max(1, rate // 100)
    start = time.perf_counter()
    value = 0
    ticks = 0
    while time.perf_counter() - start < seconds:
        documents = []
        for _ in range(batch):
            cursor += 1
            value += 1
            documents.append(
                {
                    "_id": Int64(cursor),
                    "organization_id": ORG,
                    "resource_kind": ResourceKind.WEIGHTS.value,
                    "resource_id": "weights-fanout",
                    "model_ids": [MODEL_ID],
                    "type": EventType.PROGRESS.value,
                    "phase": "PULLING",
                    "message": None,
                    "progress": {"stage": "DOWNLOADING", "bytes_done": value, "bytes_total": 0},
                    "at": utcnow(),
                }
            )
        await database["events"].insert_many(documents)
        await database["event_head"].update_one(
            {"_id": "head"}, {"$max": {"cursor": Int64(cursor)}}, upsert=True
        )
        ticks += 1
        delay = start + ticks * 0.01 - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    await client.close()
    return value


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def _sample_rss(pid: int, samples: list[tuple[float, float]], start: float) -> None:
    while True:
        samples.append((time.perf_counter() - start, _rss_mb(pid)))
        await asyncio.sleep(1)


def _report_events(
    results: list[dict[str, Any]], written: int, seconds: float, *, asked: float
) -> None:
    latencies = [x * 1000 for r in results for x in r["latencies"]]
    lost = sum(max(0, written - r["count"]) for r in results)
    overflows = sum(r["overflows"] for r in results)
    rate = written / seconds
    behind = "" if rate >= 0.95 * asked else f", BEHIND the {asked:.0f}/s asked"
    print(
        f"  events written {written} ({rate:.0f}/s{behind}); "
        f"deliveries {len(latencies)} of {written * len(results)}"
    )
    if latencies:
        print(
            f"  latency p50 {statistics.median(latencies):.1f} ms, "
            f"p99 {_percentile(latencies, 0.99):.1f} ms, max {max(latencies):.1f} ms"
        )
    duplicates = sum(r["received"] - r["count"] for r in results)
    extra = sum(max(0, r["count"] - written) for r in results)
    print(
        f"  events not received {lost} (after resuming every OVERFLOW with `after`), "
        f"duplicates {duplicates}, unknown cursors {extra}, OVERFLOW markers {overflows}, "
        f"RESYNC_REQUIRED markers {sum(r['resyncs'] for r in results)}; "
        "target p99 <= 100 ms, 0 lost"
    )
    print("  (latency counts live deliveries only; events replayed after an OVERFLOW are late)")


def _report_progress(
    results: list[dict[str, Any]],
    written: int,
    seconds: float,
    samples: list[tuple[float, float]],
    elapsed: float,
) -> None:
    finals = [r["last_progress"] for r in results]
    counts = [r["count"] for r in results]
    on_final = sum(1 for f in finals if f == written)
    first = [rss for t, rss in samples if t < elapsed / 2]
    second = [rss for t, rss in samples if t >= elapsed / 2]
    print(f"  progress events written {written} ({written / seconds:.0f}/s)")
    print(
        f"  subscribers ending on the final value {on_final} of {len(results)}; events "
        f"received per subscriber min {min(counts)}, median {statistics.median(counts):.0f}, "
        f"max {max(counts)} (coalesced); RESYNC_REQUIRED markers "
        f"{sum(r['resyncs'] for r in results)} (events trimmed before the server read them)"
    )
    print(
        f"  server RSS first half max {max(first, default=0):.0f} MB, "
        f"second half max {max(second, default=0):.0f} MB"
    )


def _wait_ready(url: str) -> None:
    for _ in range(300):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


def _wait_subscribed(metrics: str, count: int, within: float = 120.0) -> None:
    """Wait until the server reports ``count`` live subscriptions (``/metrics``): the clients
    say READY once they sent ``subscribe``, but the server may still be setting them up, and
    events written meanwhile would measure connection set-up rather than delivery."""
    began = time.perf_counter()
    live = 0.0
    while time.perf_counter() - began < within:
        answer = httpx.get(metrics, timeout=5, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        text = answer.text
        for line in text.splitlines():
            if line.startswith("modelplane_subscribers "):
                live = float(line.split()[1])
        if live >= count:
            print(
                f"  all {count} subscriptions live {time.perf_counter() - began:.1f} s after READY"
            )
            return
        time.sleep(0.1)
    raise RuntimeError(f"only {live:.0f} of {count} subscriptions live after {within:.0f} s")


async def _write(
    args: argparse.Namespace, scenario: str, writer: str, *, base: str, token: str, uri: str
) -> int:
    if scenario == "progress":
        return await _write_progress(uri, args.progress_rate, args.progress_seconds)
    interval = args.interval_ms / 1000
    if writer == "api":
        return await _write_api(base, token, interval, args.seconds)
    return await _write_log(uri, interval, args.seconds)


async def run_scenario(args: argparse.Namespace, scenario: str, writer: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="modelplane-fanout-"))
    ferret = FerretDBProcess(binary=default_ferretdb_binary(), data_dir=workdir / "ferretdb")
    ferret.start()
    server: subprocess.Popen[bytes] | None = None
    try:
        await ferret.wait_ready()
        await _seed(ferret.uri)
        port = free_port()
        env = {
            **os.environ,
            "MODELPLANE_MONGODB_URI": ferret.uri,
            "MODELPLANE_MONGODB_DATABASE": DATABASE,
            "MODELPLANE_SECRET_KEY": SECRET,
            "MODELPLANE_METRICS_TOKEN": METRICS_TOKEN,
            "MODELPLANE_STATE_DIR": str(workdir / "state"),
            "MODELPLANE_PORT": str(port),
            "MODELPLANE_LOG_LEVEL": "WARNING",
            "MODELPLANE_EVENTS_MAX": str(args.events_max),
            "MODELPLANE_EVENT_LOOP": args.event_loop,
        }
        server = subprocess.Popen([sys.executable, "-m", "modelplane", "serve"], env=env, cwd=ROOT)
        base = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(_wait_ready, f"{base}/readyz")
        key = load_dev_key(secret_key=SECRET, state_dir=workdir / "state")
        token = issue_dev_token(
            key, subject="bench", organization_id=ORG, role=Role.EDITOR, ttl_seconds=7200
        )
        ws_url = f"ws://127.0.0.1:{port}/graphql"
        if scenario == "events":
            subscribers, seconds = args.subscribers, args.seconds
        else:
            subscribers, seconds = args.progress_subscribers, args.progress_seconds
        print(
            f"\n== {scenario}: {subscribers} subscribers ({args.clients} clients in "
            f"{args.client_processes} processes), writer "
            f"{writer if scenario == 'events' else 'log (batched)'}, {args.event_loop} loop"
        )
        children = _start_clients(
            ws_url,
            f"Bearer {token}",
            subscribers,
            processes=args.client_processes,
            seconds=seconds,
            model_id="" if scenario == "events" else MODEL_ID,
            clients=args.clients,
            metrics=f"{base}/metrics",
        )
        meters = {
            "server": [server.pid],
            "ferretdb": [ferret.pid] if ferret.pid else [],
            "clients": [child.pid for child in children],
        }
        cpu_before = {name: sum(map(_cpu_seconds, pids)) for name, pids in meters.items()}
        rss_before = _rss_mb(server.pid)
        samples: list[tuple[float, float]] = []
        began = time.perf_counter()
        sampler = asyncio.create_task(_sample_rss(server.pid, samples, began))
        written = await _write(args, scenario, writer, base=base, token=token, uri=ferret.uri)
        writing = time.perf_counter() - began
        await asyncio.sleep(args.drain_seconds)  # let deliveries still queued arrive
        elapsed = time.perf_counter() - began
        used = {n: sum(map(_cpu_seconds, pids)) - cpu_before[n] for n, pids in meters.items()}
        cpu = used["server"]
        results = await asyncio.to_thread(_collect, children)
        sampler.cancel()
        peak = max(rss for _, rss in samples)
        print(
            f"  writing took {writing:.1f} s, then {args.drain_seconds:g} s to drain; server: "
            f"CPU {cpu:.1f} s over {elapsed:.1f} s ({100 * cpu / elapsed:.0f}% of a core), "
            f"RSS {rss_before:.0f} MB before, peak {peak:.0f} MB"
        )
        print(
            f"  beside it on the same cores: FerretDB {100 * used['ferretdb'] / elapsed:.0f}% "
            f"of a core, the subscriber processes {100 * used['clients'] / elapsed:.0f}%"
        )
        if scenario == "events":
            _report_events(results, written, writing, asked=1000 / args.interval_ms)
        else:
            _report_progress(results, written, writing, samples, elapsed)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        ferret.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        url, token, count, seconds = sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
        asyncio.run(client_main(url, token, count, seconds, sys.argv[6] or None))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=["events", "progress", "both"], default="both")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument(
        "--clients",
        choices=["go", "python"],
        default="go",
        help="subscriber processes: Go (cheap to run beside the server) or Python websockets",
    )
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--interval-ms", type=float, default=10)
    parser.add_argument(
        "--writer",
        choices=["log", "api", "both"],
        default="both",
        help="events scenario: appends from another process, updateModel mutations, or both",
    )
    parser.add_argument("--event-loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--events-max", type=int, default=5000)
    parser.add_argument("--progress-subscribers", type=int, default=200)
    parser.add_argument("--progress-rate", type=int, default=5000)
    parser.add_argument("--progress-seconds", type=float, default=20)
    parser.add_argument(
        "--drain-seconds", type=float, default=20, help="wait after the writer before counting"
    )
    args = parser.parse_args()
    writers = ("log", "api") if args.writer == "both" else (args.writer,)
    runs: list[tuple[str, str]] = []
    if args.scenario in ("events", "both"):
        runs += [("events", writer) for writer in writers]
    if args.scenario in ("progress", "both"):
        runs.append(("progress", "log"))
    for scenario, writer in runs:
        asyncio.run(run_scenario(args, scenario, writer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
