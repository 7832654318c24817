"""Benchmark: the dashboard's models page with 1,000 and 10,000 models on the embedded database.

Starts FerretDB (the embedded default's binary and backend), seeds two organisations through
the storage layer (testbed/seed_models.py: 1,000 and 10,000 models), starts modelplane, and
has headless Chromium (dashboard/tests/bench.mjs) open ``/#/models`` in a fresh context (empty
cache) for each organisation, ``--runs`` times. Prints, per size, the time from the start of
navigation to the first page of the table drawn (rows in, read finished), the time from a
click on Next to the second page, and the bytes the page loaded until the table was drawn
(HTML, script, stylesheet and the GraphQL answers; WebSocket frames not counted).

    uv run python bench/dashboard.py [--runs 3]

Needs the dashboard built (`make dashboard`) and Chromium (`make browser`).
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
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelplane.auth import issue_dev_token, load_dev_key  # noqa: E402
from modelplane.dashboard import DEFAULT_DIR  # noqa: E402
from modelplane.embedded import FerretDBProcess, default_ferretdb_binary, free_port  # noqa: E402
from storage.documents import Role  # noqa: E402
from testbed.seed_models import seed_models  # noqa: E402

SECRET = "benchmark-secret-key-0123456789-abcdefghij"  # noqa: S105  a throwaway bench key
DATABASE = "bench"
SIZES = {"org-1k": 1_000, "org-10k": 10_000}
SCRIPT = ROOT / "dashboard" / "tests" / "bench.mjs"


async def seed(uri: str) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri)
    for organization, count in SIZES.items():
        started = time.perf_counter()
        await seed_models(client[DATABASE], organization_id=organization, count=count)
        print(
            f"seeded {count:,} models for {organization} in {time.perf_counter() - started:.1f} s"
        )
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


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU of the processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


async def settle(pids: list[int], *, quiet: float = 0.1, window: float = 3.0) -> float:
    """Waits (at most 10 minutes) until the server and FerretDB use under ``quiet`` of a core:
    a fresh server reconciles every model once, which is not what the page costs."""
    started = time.monotonic()
    while time.monotonic() - started < 600:
        before = cpu_seconds(pids)
        await asyncio.sleep(window)
        if (cpu_seconds(pids) - before) / window < quiet:
            break
    return time.monotonic() - started


def report(line: dict[str, Any]) -> None:
    runs: list[dict[str, Any]] = line["runs"]
    drawn = [run["drawnMs"] for run in runs]
    following = [run["nextMs"] for run in runs]
    query = [run["queryMs"] for run in runs]
    first = runs[0]
    static, graphql = first["bytes"]["static"], first["bytes"]["graphql"]
    print(
        f"  {first['total']:>6,} models: table drawn {statistics.median(drawn):7.0f} ms after "
        f"navigation (runs: {', '.join(f'{d:.0f}' for d in drawn)}; the models query "
        f"{statistics.median(query):.0f} ms of it); next page "
        f"{statistics.median(following):6.0f} ms; {first['rows']} rows; loaded "
        f"{(static + graphql) / 1024:.0f} KiB ({static / 1024:.0f} KiB page, script and "
        f"stylesheet + {graphql / 1024:.1f} KiB GraphQL)"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not (DEFAULT_DIR / "index.html").is_file():
        print("the dashboard is not built: run make dashboard")
        return 1
    node = shutil.which("node")
    if node is None:
        print("node is not on PATH")
        return 1

    tmp = tempfile.mkdtemp(prefix="mp-bench-dashboard-")
    ferret = FerretDBProcess(binary=default_ferretdb_binary(), data_dir=Path(tmp) / "db")
    ferret.start()
    server: subprocess.Popen[bytes] | None = None
    try:
        await ferret.wait_ready()
        await seed(ferret.uri)
        port = free_port()
        env = {
            **os.environ,
            "MODELPLANE_MONGODB_URI": ferret.uri,
            "MODELPLANE_MONGODB_DATABASE": DATABASE,
            "MODELPLANE_SECRET_KEY": SECRET,
            "MODELPLANE_STATE_DIR": str(Path(tmp) / "state"),
            "MODELPLANE_PORT": str(port),
            "MODELPLANE_LOG_LEVEL": "WARNING",
        }
        server = subprocess.Popen([sys.executable, "-m", "modelplane", "serve"], env=env, cwd=ROOT)
        wait_http(f"http://127.0.0.1:{port}/healthz", server)
        database = ferret._process  # the child started above (no public accessor)
        waited = await settle([server.pid] + ([database.pid] if database else []))
        print(f"server and FerretDB quiet {waited:.0f} s after start-up (the first reconciles)")
        key = load_dev_key(secret_key=SECRET, state_dir=Path(tmp))
        tokens = [
            f"{organization}="
            + issue_dev_token(
                key,
                subject="bench",
                organization_id=organization,
                role=Role.VIEWER,
                ttl_seconds=3600,
            )
            for organization in SIZES
        ]
        print(f"models page, page size 50, {args.runs} runs each, fresh browser context per run:")
        process = await asyncio.create_subprocess_exec(
            node,
            str(SCRIPT),
            "--url",
            f"http://127.0.0.1:{port}",
            "--runs",
            str(args.runs),
            *tokens,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await process.communicate()
        if process.returncode != 0:
            print(stdout.decode(), stderr.decode())
            return 1
        for line in stdout.decode().splitlines():
            report(json.loads(line))
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=20)
        ferret.stop()
        if os.environ.get("BENCH_KEEP") is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
