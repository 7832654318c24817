"""Benchmark: the inference controller at scale on a real control plane with fake GPU nodes.

Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (the testbed's
``kube_control_plane``), adds ``--nodes`` fake nodes with ``--gpus-per-node`` A100s each,
starts FerretDB and modelplane on the kubernetes runtime *in this process* (so its Kubernetes
requests can be counted at the client and its memory is this process's), seeds ``--count``
READY models and starts one 1-GPU vLLM inference for each through the service. Then prints:

* seconds from the first start until every inference is RUNNING;
* modelplane's kube-apiserver requests during ``--steady`` seconds of steady state, split into
  reads/writes and watch (re)connections -- the target is 0 polling: informers only;
* modelplane's MongoDB commands during the run, by command and collection, and the events it
  appended by kind, type and phase -- on the embedded FerretDB every command costs milliseconds,
  so these counts explain most of the first figure;
* the CPU seconds modelplane and FerretDB spent until all were RUNNING: on a shared machine the
  wall-clock figure moves with other load, the CPU seconds much less;
* the process's RSS (current and peak).

    uv run python bench/controllers.py [--count 1000] [--nodes 100] [--gpus-per-node 10]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import resource
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pymongo import monitoring  # noqa: E402

from modelplane.app import open_resources  # noqa: E402
from modelplane.embedded import FerretDBProcess, default_ferretdb_binary  # noqa: E402
from modelplane.settings import load_settings  # noqa: E402
from services.inference import InferenceRequest  # noqa: E402
from services.principals import Principal  # noqa: E402
from storage.documents import (  # noqa: E402
    AccessMode,
    LocalTarget,
    ModelDocument,
    ModelPhase,
    ModelSource,
    Role,
    WeightsDocument,
    WeightsState,
    new_id,
)
from testbed import servers  # noqa: E402

ORG = "bench"


def cpu_seconds(pid: int | str = "self") -> float:
    """User plus system CPU seconds of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib() -> float:
    """Current resident set size of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RequestCounter:
    """Counts the Kubernetes requests of one ApiClient by verb and resource."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def wrap(self, api: Any) -> None:
        original = api.rest_client.request

        async def counted(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            query = kwargs.get("query_params") or []
            watch = any(k == "watch" and v for k, v in query)
            path = url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
            kind = "WATCH" if watch else method
            self.counts[f"{kind} /{_shape(path)}"] += 1
            return await original(method, url, *args, **kwargs)

        api.rest_client.request = counted

    def snapshot(self) -> collections.Counter[str]:
        return collections.Counter(self.counts)


class CommandCounter(monitoring.CommandListener):
    """Counts this process's MongoDB commands by name and collection, and appended events."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.events: collections.Counter[str] = collections.Counter()
        self.seconds: collections.defaultdict[str, float] = collections.defaultdict(float)
        self._names: dict[int, str] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        collection = target if isinstance(target, str) else ""
        name = f"{event.command_name} {collection}".strip()
        self.counts[name] += 1
        self._names[event.request_id] = name
        if event.command_name == "insert" and collection == "events":
            for document in event.command.get("documents", []):
                kind = document.get("resource_kind")
                self.events[f"{kind} {document.get('type')} {document.get('phase')}"] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        name = self._names.pop(event.request_id, "?")
        self.seconds[name] += event.duration_micros / 1e6

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._names.pop(event.request_id, None)


def _shape(path: str) -> str:
    """``api/v1/namespaces/x/pods/inf-abc`` -> ``api/v1/namespaces/*/pods/*``."""
    parts = path.split("/")
    for index, part in enumerate(parts):
        if index > 0 and parts[index - 1] in {"namespaces", "pods", "deployments", "services"}:
            parts[index] = "*"
        if part.startswith("inf-"):
            parts[index] = "*"
    return "/".join(parts)


async def seed(database: Any, count: int) -> list[str]:
    """``count`` READY models with weights in a node directory; returns their ids."""
    models, weights = [], []
    for index in range(count):
        model_id = new_id("model", 8)
        name = f"m{index:05d}"
        # A node directory (hostPath): the testbed runs no volume provisioner for PVCs.
        target = LocalTarget(local_path=f"/data/models/{name}")
        weight = WeightsDocument(
            id=new_id("weights", 8),
            organization_id=ORG,
            repo_id="bench/tiny",
            commit_sha="b" * 40,
            target=target,
            location=f"/data/models/{name}",
            state=WeightsState.READY,
            model_ids=[model_id],
        )
        weights.append(weight.to_mongo())
        models.append(
            ModelDocument(
                id=model_id,
                organization_id=ORG,
                name=name,
                name_key=name,
                display_name=name,
                source=ModelSource(url="bench/tiny", access_mode=AccessMode.LOCAL),
                download_target=target,
                weights_id=weight.id,
                phase=ModelPhase.READY,
            ).to_mongo()
        )
    await database["weights"].insert_many(weights)
    await database["models"].insert_many(models)
    return [str(m["_id"]) for m in models]


async def main(args: argparse.Namespace) -> None:
    binaries = servers.ensure_built()
    work = Path(tempfile.mkdtemp(prefix="bench-controllers-"))
    with servers.kube_control_plane(work / "cluster", binaries=binaries) as plane:
        started = time.monotonic()
        for index in range(args.nodes):
            plane.add_gpu_node(
                f"gpu-{index:03d}", args.gpus_per_node, cpu="64", memory="512Gi", wait_ready=0
            )
        for index in range(args.nodes):
            plane.wait_node_ready(f"gpu-{index:03d}", timeout=120)
        print(
            f"{args.nodes} nodes x {args.gpus_per_node} GPUs ready in "
            f"{time.monotonic() - started:.1f} s",
            flush=True,
        )
        namespace = f"bench-{uuid.uuid4().hex[:6]}"
        plane.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
        ferret = FerretDBProcess(binary=default_ferretdb_binary(), data_dir=work / "ferretdb")
        ferret.start()
        try:
            await ferret.wait_ready()
            settings = load_settings(
                mongodb_uri=ferret.uri,
                mongodb_database="bench",
                state_dir=work / "state",
                secret_key="bench-secret-key-that-is-long-enough-0123456789",  # noqa: S106  a throwaway key
                runtime="kubernetes",
                kubeconfig=plane.kubeconfig,
                namespace=namespace,
                log_level="WARNING",
            )
            assert ferret.pid is not None  # noqa: S101  started above
            await run(args, settings, ferret.pid)
        finally:
            ferret.stop()


async def run(args: argparse.Namespace, settings: Any, ferret_pid: int) -> None:
    commands = CommandCounter()
    monitoring.register(commands)  # before the client is made: pymongo copies the listeners
    async with open_resources(settings) as resources:
        counter = RequestCounter()
        counter.wrap(resources.runtime.api)  # type: ignore[attr-defined]
        database = resources.database
        model_ids = await seed(database, args.count)
        principal = Principal(subject="bench", organization_id=ORG, role=Role.ADMIN)
        service = resources.services.inference
        rss_before = rss_mib()
        commands.counts.clear()
        commands.events.clear()
        commands.seconds.clear()
        cpu_before = cpu_seconds(), cpu_seconds(ferret_pid)
        started = time.monotonic()
        gate = asyncio.Semaphore(args.concurrency)

        async def start_one(model_id: str) -> None:
            async with gate:
                await service.start(principal, model_id, InferenceRequest())

        await asyncio.gather(*(start_one(model_id) for model_id in model_ids))
        accepted = time.monotonic() - started
        print(f"{args.count} startInference calls accepted in {accepted:.1f} s", flush=True)
        await wait_all_running(database["inferences"], args, started)
        all_running = time.monotonic() - started
        cpu = cpu_seconds() - cpu_before[0], cpu_seconds(ferret_pid) - cpu_before[1]
        mongo = collections.Counter(commands.counts)
        waited = dict(commands.seconds)
        appended = collections.Counter(commands.events)
        await asyncio.sleep(args.settle)
        before = counter.snapshot()
        await asyncio.sleep(args.steady)
        during = counter.snapshot() - before
        per_minute = 60.0 / args.steady
        watches = sum(v for k, v in during.items() if k.startswith("WATCH"))
        others = sum(v for k, v in during.items() if not k.startswith("WATCH"))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print()
        print(f"inferences:                         {args.count} on {args.nodes} nodes")
        print(f"seconds until all RUNNING:          {all_running:.1f}")
        print(f"CPU seconds until then:             {cpu[0]:.1f} modelplane, {cpu[1]:.1f} FerretDB")
        print(
            f"steady-state requests per minute:   {others * per_minute:.1f} "
            f"(non-watch), {watches * per_minute:.1f} watch (re)connections"
        )
        for key, value in sorted(during.items()):
            print(f"    {key}: {value}")
        print(f"total requests during the run:      {sum(counter.counts.values())}")
        for key, value in counter.counts.most_common(8):
            print(f"    {key}: {value}")
        _print_commands(mongo, waited, appended, args.count)
        print(
            f"RSS: {rss_mib():.0f} MiB now, {peak:.0f} MiB peak "
            f"({rss_before:.0f} MiB before starting inferences)"
        )


async def wait_all_running(inferences: Any, args: argparse.Namespace, started: float) -> None:
    """Prints the phases whenever the RUNNING count changes, until all are RUNNING."""
    last = -1
    while True:
        running = await inferences.count_documents({"phase": "RUNNING"})
        if running != last:
            phases = collections.Counter(
                [d["phase"] async for d in inferences.find({}, {"phase": 1})]
            )
            print(f"  {time.monotonic() - started:6.1f} s: {dict(phases)}", flush=True)
            last = running
        if running >= args.count:
            break
        if time.monotonic() - started > args.timeout:
            phases = collections.Counter(
                [d["phase"] async for d in inferences.find({}, {"phase": 1})]
            )
            print(f"timed out; phases {dict(phases)}")
            break
        await asyncio.sleep(1.0)


def _print_commands(
    mongo: collections.Counter[str],
    waited: dict[str, float],
    appended: collections.Counter[str],
    count: int,
) -> None:
    """The MongoDB commands until all were RUNNING (the bench's own polling included), with
    the seconds spent waiting for their answers (summed over concurrent commands)."""
    total = sum(mongo.values())
    print(f"MongoDB commands until all RUNNING: {total} ({total / count:.1f} per inference)")
    for key, value in mongo.most_common(14):
        print(f"    {key}: {value} ({waited.get(key, 0.0):.1f} s answering)")
    print(f"events appended:                    {sum(appended.values())}")
    for key, value in sorted(appended.items()):
        print(f"    {key}: {value}")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    del signum, frame
    raise SystemExit(143)  # unwinds the context managers: the test servers are stopped


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--gpus-per-node", type=int, default=10)
    parser.add_argument("--steady", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--concurrency", type=int, default=16, help="startInference in flight")
    asyncio.run(main(parser.parse_args()))
