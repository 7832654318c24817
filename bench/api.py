"""Benchmark: the GraphQL model listing vs a bare REST endpoint over the same data.

Starts FerretDB, seeds 10,000 models (one organisation), starts modelplane and the REST
baseline (bench/rest_baseline.py) as separate processes, then drives each in turn with 32
concurrent clients for a fixed time and prints requests/s, p50 and p99 latency, and the ratio.
Target (issue: Models API): GraphQL >= 0.7x REST throughput, p99 <= 50 ms.

    uv run python bench/api.py [--seconds 10] [--clients 32] [--models 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import httpx
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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
DATABASE = "bench"
ORG = "org-bench"
PHASES = [ModelPhase.READY, ModelPhase.PENDING, ModelPhase.FAILED, ModelPhase.PULLING]
QUERY = """query Bench($limit: Int!) {
  models(filter: {phase: READY}, limit: $limit) {
    total
    items { id name displayName phase tags source { url accessMode } createdAt }
  }
}"""


async def seed(uri: str, count: int) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri)
    database = client[DATABASE]
    await database.drop_collection("models")
    await ensure_indexes(database)
    start = utcnow()
    batch = [
        ModelDocument(
            id=f"model-{i:05d}",
            organization_id=ORG,
            name=f"model-{i}",
            name_key=f"model-{i}",
            display_name=f"Benchmark model {i}",
            tags=[f"family-{i % 7}", "bench"],
            source=ModelSource(url=f"bench-org/model-{i}", access_mode=AccessMode.LOCAL),
            phase=PHASES[i % 4],
            created_at=start + timedelta(milliseconds=i),
        ).to_mongo()
        for i in range(count)
    ]
    for offset in range(0, count, 1000):
        await database["models"].insert_many(batch[offset : offset + 1000])
    await client.close()


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


async def drive(
    name: str, call: Callable[[httpx.AsyncClient], Awaitable[None]], *, clients: int, seconds: float
) -> tuple[float, float, float, int]:
    """Run ``clients`` loops of ``call`` for ``seconds``; return rps, p50 ms, p99 ms, errors.

    Requests started before the deadline are waited for, and the elapsed time runs until the
    last one ends, so slow requests count fully.
    """
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=600) as http:
        for _ in range(clients):  # warm-up: open the connections
            await call(http)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    await call(http)
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - began
    if not latencies:
        print(f"  {name:<8} no request completed ({errors} errors)")
        return 0.0, 0.0, 0.0, errors
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    rps = len(latencies) / elapsed
    print(f"  {name:<8} {rps:8.1f} req/s   p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   errors {errors}")
    return rps, p50, p99, errors


async def contest(api_port: int, rest_port: int, token: str, args: argparse.Namespace) -> None:
    """Drive REST, then GraphQL, with the same load; print figures and ratios."""
    headers = {"Authorization": f"Bearer {token}"}
    graphql_url = f"http://127.0.0.1:{api_port}/graphql"
    rest_url = f"http://127.0.0.1:{rest_port}/models"

    async def graphql(http: httpx.AsyncClient) -> None:
        response = await http.post(
            graphql_url, json={"query": QUERY, "variables": {"limit": 50}}, headers=headers
        )
        body = response.json()
        if len(body["data"]["models"]["items"]) != 50:
            raise httpx.HTTPError("GraphQL answered a short page")

    async def rest(http: httpx.AsyncClient) -> None:
        response = await http.get(
            rest_url, params={"organization_id": ORG, "phase": "READY", "limit": 50}
        )
        if len(response.json()["items"]) != 50:
            raise httpx.HTTPError("REST answered a short page")

    print(
        f"models(filter: phase READY, limit 50) of {args.models}, "
        f"{args.clients} clients, {args.seconds:g} s each:"
    )
    rest_rps, _, rest_p99, _ = await drive("REST", rest, clients=args.clients, seconds=args.seconds)
    gql_rps, _, gql_p99, _ = await drive(
        "GraphQL", graphql, clients=args.clients, seconds=args.seconds
    )
    ratio = gql_rps / rest_rps if rest_rps else float("nan")
    print(f"  throughput ratio GraphQL/REST: {ratio:.2f} (target >= 0.70)")
    print(f"  GraphQL p99: {gql_p99:.1f} ms (target <= 50 ms); REST p99: {rest_p99:.1f} ms")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--models", type=int, default=10_000)
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="mp-bench-")
    try:
        ferret = FerretDBProcess(binary=default_ferretdb_binary(), data_dir=Path(tmp) / "db")
        ferret.start()
        processes: list[subprocess.Popen[bytes]] = []
        try:
            await ferret.wait_ready()
            print(f"seeding {args.models} models into FerretDB ...")
            await seed(ferret.uri, args.models)
            api_port, rest_port = free_port(), free_port()
            env = {
                **os.environ,
                "MODELPLANE_MONGODB_URI": ferret.uri,
                "MODELPLANE_MONGODB_DATABASE": DATABASE,
                "MODELPLANE_SECRET_KEY": SECRET,
                "MODELPLANE_STATE_DIR": str(Path(tmp) / "state"),
                "MODELPLANE_PORT": str(api_port),
                "MODELPLANE_LOG_LEVEL": "WARNING",
            }
            processes.append(
                subprocess.Popen([sys.executable, "-m", "modelplane", "serve"], env=env, cwd=ROOT)
            )
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(ROOT / "bench" / "rest_baseline.py"),
                        ferret.uri,
                        DATABASE,
                        str(rest_port),
                    ],
                    cwd=ROOT,
                )
            )
            wait_http(f"http://127.0.0.1:{api_port}/healthz", processes[0])
            wait_http(f"http://127.0.0.1:{rest_port}/docs", processes[1])
            key = load_dev_key(secret_key=SECRET, state_dir=Path(tmp))
            token = issue_dev_token(
                key, subject="bench", organization_id=ORG, role=Role.VIEWER, ttl_seconds=3600
            )
            await contest(api_port, rest_port, token, args)
        finally:
            for process in processes:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=20)
            ferret.stop()
    finally:
        if os.environ.get("BENCH_KEEP") is None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
