"""Benchmark: our downloader vs curl vs snapshot_download, and to S3 vs boto3 upload_file.

One run, side by side, on >= 1 GB served by the local hub (in its own process) on loopback:

* to local disk: ``curl --parallel`` of the same resolve URLs (the practical limit here),
  ``huggingface_hub.snapshot_download``, and ours (ranged chunks, ledger, verification);
* to S3 (MinIO): ours streaming hub -> multipart upload, vs ``boto3`` ``upload_file`` of the
  same bytes already on disk.

Every contender runs in a child process; wall time, MB/s and the child's peak RSS (wait4)
are printed, then the ratios. The Python environment is byte-compiled first, as the image is
(``UV_COMPILE_BYTECODE=1``): otherwise, where ``PYTHONDONTWRITEBYTECODE`` is set, each Python
contender would compile every module it imports on every run, which curl never pays.
Targets (issue: Weights): >= 0.9x curl, >= 1.0x snapshot_download, S3 >= 0.8x upload_file
with peak RSS <= 300 MB and no temporary files.

    uv run python bench/download.py [--shard-mb 350]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REPO = "tiny-org/sharded-model"
MB = 1_000_000


@dataclass
class Outcome:
    name: str
    seconds: float
    bytes: int
    peak_rss_mb: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.seconds


def run_child(name: str, argv: list[str], *, env: dict[str, str], size: int) -> Outcome:
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"{name} failed with status {status}")
    outcome = Outcome(name, elapsed, size, usage.ru_maxrss / 1024)
    print(
        f"  {name:<28} {elapsed:7.2f} s  {outcome.mb_per_s:8.1f} MB/s"
        f"  peak RSS {outcome.peak_rss_mb:7.1f} MB"
    )
    return outcome


async def child(mode: str, spec_path: str) -> None:
    """Run our downloader once (``--child local|s3``)."""
    from controllers.transfer.downloader import Downloader, DownloadOptions, LocalSink
    from controllers.transfer.s3_sink import S3Sink, object_prefix
    from integrations.addresses import OutboundPolicy
    from integrations.s3 import S3Client, S3Location
    from storage.client import make_client
    from storage.documents import Progress, WeightsFile
    from storage.repositories import LedgerRepository, ensure_indexes

    spec = json.loads(Path(spec_path).read_text())  # noqa: ASYNC240  once, before any I/O
    client = make_client(spec["mongo"], timeout_seconds=5)
    database = client[spec["database"]]
    await ensure_indexes(database)
    ledgers = LedgerRepository(database)
    files = [WeightsFile(**f) for f in spec["files"]]
    options = DownloadOptions()
    if mode == "s3":  # as controllers.downloads.running.options_for does for S3 targets
        options = DownloadOptions(chunk_size=16 * 1024 * 1024)
    if mode == "local":
        sink: LocalSink | S3Sink = LocalSink(Path(spec["target"]))
    else:
        # MinIO listens on loopback, which the default outbound policy refuses.
        loopback = OutboundPolicy.of(networks=["127.0.0.0/8"])
        s3 = S3Client(S3Location(**spec["s3"]), outbound=loopback)
        sink = S3Sink(
            s3,
            prefix=object_prefix("bench", REPO, spec["sha"]),
            ledgers=ledgers,
            chunk_size=options.chunk_size,
        )

    async def ignore(_progress: Progress) -> None:
        return None

    await Downloader(endpoint=spec["endpoint"], ledgers=ledgers, options=options).run(
        weights_id=f"bench-{uuid.uuid4().hex[:6]}",
        repo_id=REPO,
        commit_sha=spec["sha"],
        files=files,
        sink=sink,
        token=None,
        on_progress=ignore,
    )
    await client.close()


def main() -> int:  # noqa: PLR0915  one linear script of set-up, contenders and report
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard-mb", type=float, default=350.0)
    parser.add_argument("--child", choices=["local", "s3"])
    parser.add_argument("--spec")
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args.child, args.spec))
        return 0

    import sysconfig

    from huggingface_hub import HfApi

    from modelplane.embedded import FerretDBProcess, default_ferretdb_binary, free_port
    from testbed.servers import MinioProcess, binaries

    packages = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    subprocess.run(  # as the image's UV_COMPILE_BYTECODE=1 does; a no-op once done
        [sys.executable, "-m", "compileall", "-q", "-j", "0", *packages, str(ROOT)],
        check=False,
        stdout=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    )
    work = Path(tempfile.mkdtemp(prefix="mp-dlbench-"))
    port = free_port()
    hub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "testbed.hub",
            "--port",
            str(port),
            "--shard-mb",
            str(args.shard_mb),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    ferret = FerretDBProcess(binary=default_ferretdb_binary(), data_dir=work / "db")
    minio = MinioProcess(work / "minio", binary=binaries()["minio"])
    try:
        if hub.stdout is None:
            raise RuntimeError("the hub's output is not captured")
        hub.stdout.readline()  # "serving ..." once the repos are built and it listens
        endpoint = f"http://127.0.0.1:{port}"
        ferret.start()
        asyncio.run(ferret.wait_ready())
        minio.start()
        info = HfApi(endpoint=endpoint).model_info(REPO, files_metadata=True)
        files: list[dict[str, Any]] = [
            {
                "path": s.rfilename,
                "size": s.size,
                "sha256": s.lfs.sha256 if s.lfs else None,
                "blob_id": s.blob_id,
            }
            for s in info.siblings or []
        ]
        size = sum(f["size"] for f in files)
        print(f"{REPO}: {len(files)} files, {size / MB:.0f} MB, hub on loopback")
        env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1"}
        base = {"mongo": ferret.uri, "endpoint": endpoint, "sha": info.sha, "files": files}

        print("to local disk:")
        curl_dir = work / "curl"
        curl_args = [
            "curl",
            "-sS",
            "-L",
            "--fail",
            "--parallel",
            "--parallel-max",
            "4",
            "--create-dirs",
        ]
        for f in files:
            curl_args += [
                "-o",
                str(curl_dir / f["path"]),
                f"{endpoint}/{REPO}/resolve/{info.sha}/{f['path']}",
            ]
        curl = run_child("curl --parallel (4)", curl_args, env=env, size=size)
        # Ours returns only once every byte is fsynced; curl leaves them in the page cache. For
        # reference (the target stays against plain curl): curl again, then an fsync per file.
        shutil.rmtree(curl_dir, ignore_errors=True)
        fsync = (
            "import os,sys\nfor p in sys.argv[1:]:\n"
            "    fd = os.open(p, os.O_RDONLY); os.fsync(fd); os.close(fd)"
        )
        outputs = [str(curl_dir / f["path"]) for f in files]
        durable = run_child(
            "curl (4), then fsync",
            [
                "sh",
                "-c",
                f"{shlex.join(curl_args)} && {shlex.join([sys.executable, '-c', fsync, *outputs])}",
            ],
            env=env,
            size=size,
        )

        snap_dir = work / "snapshot"
        snapshot = run_child(
            "snapshot_download (4 workers)",
            [
                sys.executable,
                "-c",
                "import sys; from huggingface_hub import snapshot_download; "
                "snapshot_download(sys.argv[1], endpoint=sys.argv[2], cache_dir=sys.argv[3], "
                "max_workers=4)",
                REPO,
                endpoint,
                str(snap_dir),
            ],
            env=env,
            size=size,
        )

        ours_dir = work / "ours"
        spec = work / "spec-local.json"
        spec.write_text(json.dumps({**base, "database": "bench_local", "target": str(ours_dir)}))
        ours = run_child(
            "modelplane (local)",
            [sys.executable, __file__, "--child", "local", "--spec", str(spec)],
            env=env,
            size=size,
        )
        shutil.rmtree(curl_dir, ignore_errors=True)
        shutil.rmtree(snap_dir, ignore_errors=True)

        print("to S3 (MinIO):")
        server = minio.server
        location = {
            "endpoint": server.endpoint,
            "region": server.region,
            "bucket": "bench",
            "access_key_id": server.access_key_id,
            "secret_access_key": server.secret_access_key,
        }
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import boto3,sys; boto3.client('s3', endpoint_url=sys.argv[1], "
                "aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3], "
                "region_name='us-east-1').create_bucket(Bucket='bench')",
                server.endpoint,
                server.access_key_id,
                server.secret_access_key,
            ],
            check=True,
            env=env,
        )
        upload = run_child(
            "boto3 upload_file (from disk)",
            [
                sys.executable,
                "-c",
                "import boto3,sys,pathlib; s3=boto3.client('s3', endpoint_url=sys.argv[1], "
                "aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3], "
                "region_name='us-east-1'); root=pathlib.Path(sys.argv[4]); "
                "[s3.upload_file(str(p), 'bench', 'upload/'+str(p.relative_to(root))) "
                "for p in sorted(root.rglob('*')) if p.is_file()]",
                server.endpoint,
                server.access_key_id,
                server.secret_access_key,
                str(ours_dir),
            ],
            env={**env, "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required"},
            size=size,
        )
        s3_spec = work / "spec-s3.json"
        s3_spec.write_text(json.dumps({**base, "database": "bench_s3", "s3": location}))
        scratch = work / "scratch"
        scratch.mkdir()
        streamed = run_child(
            "modelplane (hub -> S3 stream)",
            [sys.executable, __file__, "--child", "s3", "--spec", str(s3_spec)],
            env={**env, "TMPDIR": str(scratch)},
            size=size,
        )
        leftovers = list(scratch.iterdir())

        print("ratios:")
        ratios = [
            ("modelplane / curl", ours.mb_per_s / curl.mb_per_s, ">= 0.90"),
            ("  (reference: / curl+fsync)", ours.mb_per_s / durable.mb_per_s, "none"),
            ("modelplane / snapshot_download", ours.mb_per_s / snapshot.mb_per_s, ">= 1.00"),
            ("S3 stream / upload_file", streamed.mb_per_s / upload.mb_per_s, ">= 0.80"),
        ]
        for label, value, target in ratios:
            print(f"  {label:<31}{value:5.2f}  (target {target})")
        print(f"  S3 stream peak RSS             {streamed.peak_rss_mb:7.1f} MB (target <= 300)")
        print(f"  temporary files during the S3 stream: {len(leftovers)} (target 0)")
    finally:
        minio.stop()
        ferret.stop()
        hub.terminate()
        hub.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
