"""Benchmark: streaming chat completions through modelplane's ``/v1`` vs straight to the upstream.

Starts FerretDB, the OpenAI-compatible test upstream (``testbed/openai_upstream.py``: N chunks,
a fixed delay between them) and modelplane (``modelplane serve``) as separate processes, stores
one RUNNING inference pointing at the upstream and an API key, then drives 64 concurrent
streams for a fixed time, alternately straight at the upstream and through modelplane (rounds
interleaved so both see the same machine). Prints time to first token p50/p99 of each, what the
gateway adds, and the throughput ratio (completed streams per second).
Targets (issue #7): <= 5 ms added p50 to first token, >= 0.8x direct throughput.

    uv run python bench/gateway.py [--seconds 10] [--rounds 2] [--streams 64]
                                   [--chunks 16] [--delay 0.03]

The defaults stream 16 chunks 30 ms apart (about 33 tokens/s per stream, a served LLM's pace).
Everything shares the machine's cores: the Python upstream, the load generator and FerretDB
compete with modelplane, so on a small machine the added first-token latency includes waiting
for a core, and the "modelplane CPU per stream" line is the figure to compare across changes.
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
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelplane.embedded import FerretDBProcess, default_ferretdb_binary, free_port  # noqa: E402
from services.api_keys import hash_key  # noqa: E402
from storage.documents import (  # noqa: E402
    AccessMode,
    ApiKeyDocument,
    InferenceDocument,
    InferencePhase,
    ModelDocument,
    ModelPhase,
    ModelSource,
    Role,
)
from storage.repositories import ensure_indexes  # noqa: E402

SECRET = "benchmark-secret-key-0123456789-abcdefghij"  # noqa: S105  a throwaway bench key
API_KEY = "mp_benchmarkKeyNotSecret0123456789abcdefghijk"
DATABASE = "bench_gateway"
ORG = "org-bench"
MODEL = "bench-chat"


async def seed(uri: str, upstream_port: int) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri)
    database = client[DATABASE]
    await ensure_indexes(database)
    model = ModelDocument(
        id="model-bench",
        organization_id=ORG,
        name=MODEL,
        name_key=MODEL,
        display_name=MODEL,
        source=ModelSource(url="bench-org/bench-chat", access_mode=AccessMode.LOCAL),
        phase=ModelPhase.READY,
    )
    inference = InferenceDocument(
        id="inf-bench",
        organization_id=ORG,
        model_id=model.id,
        model_name=MODEL,
        name="inf-model-bench",
        active_key=model.id,
        phase=InferencePhase.RUNNING,
        endpoint=f"http://127.0.0.1:{upstream_port}/bench/v1",
    )
    key = ApiKeyDocument(
        id="key-bench",
        organization_id=ORG,
        name="bench",
        role=Role.VIEWER,
        prefix=API_KEY[:11],
        key_hash=hash_key(API_KEY),
    )
    await database["models"].insert_one(model.to_mongo())
    await database["inferences"].insert_one(inference.to_mongo())
    await database["api_keys"].insert_one(key.to_mongo())
    await client.close()


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
        except httpx.TransportError:
            time.sleep(0.2)
        else:
            return
    raise RuntimeError(f"{url} did not come up")


@dataclass
class Figures:
    """What one contender's rounds measured."""

    first_token: list[float] = field(default_factory=list)
    streams: int = 0
    chunks: int = 0
    errors: int = 0
    seconds: float = 0.0

    def line(self, name: str) -> str:
        ttft = sorted(self.first_token)
        p50 = statistics.median(ttft) * 1000 if ttft else float("nan")
        p99 = ttft[max(0, int(len(ttft) * 0.99) - 1)] * 1000 if ttft else float("nan")
        return (
            f"  {name:<8} first token p50 {p50:6.2f} ms  p99 {p99:6.2f} ms   "
            f"{self.rate:7.1f} streams/s  {self.chunks / self.seconds:8.0f} chunks/s   "
            f"errors {self.errors}"
        )

    @property
    def rate(self) -> float:
        return self.streams / self.seconds if self.seconds else 0.0

    def p(self, quantile: float) -> float:
        ttft = sorted(self.first_token)
        return ttft[max(0, int(len(ttft) * quantile) - 1)] * 1000 if ttft else float("nan")


class StreamClient:
    """A minimal keep-alive HTTP/1.1 client for chunked SSE answers: the load generator shares
    two cores with both servers, so it must cost as little as possible (an httpx client with 64
    connections spent more CPU than the gateway it measured)."""

    def __init__(self, port: int, path: str, headers: dict[str, str]) -> None:
        self._port = port
        self._head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def stream(self, body: bytes) -> tuple[float, int]:
        """POST ``body``; return seconds to the first body chunk and the ``data:`` events."""
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)
        reader, writer = self._reader, self._writer
        started = time.perf_counter()
        writer.write(
            f"POST {self._path} HTTP/1.1\r\nhost: 127.0.0.1:{self._port}\r\n{self._head}"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200 or b"chunked" not in head.lower():
            await self.close()
            raise OSError(f"HTTP {status}")
        first = 0.0
        events = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return first, events
            if not first:
                first = time.perf_counter() - started
            events += data.count(b"data:")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()
        self._reader = self._writer = None


async def drive(
    port: int,
    path: str,
    headers: dict[str, str],
    figures: Figures,
    *,
    streams: int,
    seconds: float,
    spread: float,
) -> None:
    """``streams`` workers each streaming one chat completion after another for ``seconds``."""
    body = json.dumps(
        {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    clients = [StreamClient(port, path, headers) for _ in range(streams)]
    # Warm-up: open the connections, all at once (one by one, the first would sit idle past
    # the servers' keep-alive timeout before the run starts).
    await asyncio.gather(*(client.stream(body) for client in clients))
    deadline = time.perf_counter() + seconds

    async def worker(client: StreamClient, offset: float) -> None:
        await asyncio.sleep(offset)
        while time.perf_counter() < deadline:
            try:
                first, chunks = await client.stream(body)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                figures.errors += 1
                await client.close()
                continue
            figures.first_token.append(first)
            figures.streams += 1
            figures.chunks += chunks

    began = time.perf_counter()
    # Clients spread over one chunk interval, as independent callers are: started together,
    # every stream's chunk would arrive in the same instant, 64 at a time.
    await asyncio.gather(
        *(worker(client, spread * index / streams) for index, client in enumerate(clients))
    )
    figures.seconds += time.perf_counter() - began
    for client in clients:
        await client.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def contest(
    api_port: int, upstream_port: int, api_pid: int, args: argparse.Namespace
) -> None:
    direct, gateway = Figures(), Figures()
    print(
        f"streaming chat completions, {args.streams} concurrent streams, {args.chunks} chunks "
        f"{args.delay * 1000:g} ms apart, {args.rounds} x {args.seconds:g} s each:"
    )
    gateway_cpu = 0.0
    for _ in range(args.rounds):
        await drive(
            upstream_port,
            "/bench/v1/chat/completions",
            {},
            direct,
            streams=args.streams,
            seconds=args.seconds,
            spread=args.delay,
        )
        before = cpu_seconds(api_pid)
        await drive(
            api_port,
            "/v1/chat/completions",
            {"authorization": f"Bearer {API_KEY}"},
            gateway,
            streams=args.streams,
            seconds=args.seconds,
            spread=args.delay,
        )
        gateway_cpu += cpu_seconds(api_pid) - before
    print(direct.line("direct"))
    print(gateway.line("gateway"))
    added_p50 = gateway.p(0.5) - direct.p(0.5)
    added_p99 = gateway.p(0.99) - direct.p(0.99)
    ratio = gateway.rate / direct.rate if direct.rate else float("nan")
    print(
        f"  added to first token: p50 {added_p50:+.2f} ms (target <= 5 ms), p99 {added_p99:+.2f} ms"
    )
    print(f"  throughput ratio gateway/direct: {ratio:.2f} (target >= 0.80)")
    if gateway.streams:
        per_stream = gateway_cpu / gateway.streams * 1000
        print(f"  modelplane CPU: {per_stream:.2f} ms per stream ({gateway_cpu:.1f} s in all)")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.03)
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="mp-bench-gateway-")
    try:
        ferret = FerretDBProcess(binary=default_ferretdb_binary(), data_dir=Path(tmp) / "db")
        ferret.start()
        processes: list[subprocess.Popen[bytes]] = []
        try:
            await ferret.wait_ready()
            api_port, upstream_port = free_port(), free_port()
            await seed(ferret.uri, upstream_port)
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "testbed.openai_upstream",
                        "--port",
                        str(upstream_port),
                        "--chunks",
                        str(args.chunks),
                        "--delay",
                        str(args.delay),
                    ],
                    cwd=ROOT,
                )
            )
            env = {
                **os.environ,
                "MODELPLANE_MONGODB_URI": ferret.uri,
                "MODELPLANE_MONGODB_DATABASE": DATABASE,
                "MODELPLANE_SECRET_KEY": SECRET,
                "MODELPLANE_STATE_DIR": str(Path(tmp) / "state"),
                "MODELPLANE_PORT": str(api_port),
                "MODELPLANE_LOG_LEVEL": "WARNING",
                "MODELPLANE_GATEWAY_RPM": "0",
                "MODELPLANE_GATEWAY_CONCURRENCY": "0",
                "MODELPLANE_RUN_CONTROLLERS": "false",
            }
            processes.append(
                subprocess.Popen([sys.executable, "-m", "modelplane", "serve"], env=env, cwd=ROOT)
            )
            wait_http(f"http://127.0.0.1:{upstream_port}/bench/v1/models", processes[0])
            wait_http(f"http://127.0.0.1:{api_port}/healthz", processes[1])
            await contest(api_port, upstream_port, processes[1].pid, args)
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
