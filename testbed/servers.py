"""Start the test servers as child processes and wait until each answers.

Two flavours of Kubernetes: :func:`kube_apiserver` is envtest-style (etcd and the API server,
nothing acts on what is stored), :func:`kube_control_plane` adds the controller manager, the
scheduler and kwok so that workloads really become pods on fake (GPU) nodes.

Each server gets a free loopback port and a directory of its own, is polled until its
readiness endpoint answers, and is stopped (SIGTERM, then SIGKILL) on exit. Binaries come from
the cache that ``deploy/testbed/build.sh`` fills; :func:`ensure_built` runs that script when
something is missing and says so on stderr, since a cold build takes minutes.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from modelplane.embedded import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "deploy" / "testbed" / "build.sh"


class TestbedError(Exception):
    """A test server could not be built or started."""


def binaries() -> dict[str, Path]:
    """Where the build script puts each server binary (``--print`` is the source of truth)."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print"], check=True, capture_output=True, text=True
    ).stdout
    return {
        name: Path(path) for name, _, path in (line.partition("=") for line in out.splitlines())
    }


def ensure_built() -> dict[str, Path]:
    """Build whatever is missing (loudly: a cold build takes several minutes)."""
    paths = binaries()
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        sys.stderr.write(
            f"\n[testbed] building {', '.join(missing)} from the Go module proxy "
            "(cold build of everything: about 20 minutes on 2 cores; cached afterwards)\n"
        )
        sys.stderr.flush()
        started = time.monotonic()
        result = subprocess.run(["bash", str(BUILD_SCRIPT)], check=False)
        if result.returncode != 0:
            raise TestbedError(f"deploy/testbed/build.sh failed (exit {result.returncode})")
        sys.stderr.write(f"[testbed] built in {time.monotonic() - started:.0f} s\n")
    return paths


class _Child:
    """A child process with its output in ``<workdir>/<name>.log``."""

    def __init__(self, name: str, argv: list[str], *, workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                cwd=workdir,
                start_new_session=True,
            )

    def wait_until(
        self,
        probe: str,
        *,
        timeout: float,
        context: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        request = urllib.request.Request(probe, headers=headers or {})  # noqa: S310  loopback
        while True:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise TestbedError(f"{self.name} exited with {self.process.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(request, timeout=2, context=context) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TestbedError(
                    f"{self.name} not ready after {timeout:.0f} s; see {self.log_path}"
                )
            time.sleep(0.2)

    def terminate(self) -> None:
        """Ask the process to stop without waiting (so that several can stop at once)."""
        if self.process.poll() is None:
            self.process.terminate()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _insecure_context() -> ssl.SSLContext:
    """For probing the self-signed health endpoints of the control-plane components."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True)
class KubeCluster:
    """An envtest-style control plane: etcd and kube-apiserver, no nodes."""

    server: str
    token: str
    kubeconfig: Path
    workdir: Path


@contextmanager
def kube_apiserver(workdir: Path, *, etcd: Path, apiserver: Path) -> Iterator[KubeCluster]:
    """etcd + kube-apiserver on loopback, an admin token, and a kubeconfig file for clients.
    Like kind and minikube it has a StorageClass ``standard`` (modelplane refuses a PVC target
    naming a class the cluster lacks); nothing provisions its claims."""
    workdir.mkdir(parents=True, exist_ok=True)
    client_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd_proc = _Child(
        "etcd",
        [
            str(etcd),
            f"--data-dir={workdir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{client_port}",
            f"--advertise-client-urls=http://127.0.0.1:{client_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        workdir=workdir,
        env={},
    )
    api_proc: _Child | None = None
    try:
        etcd_proc.wait_until(f"http://127.0.0.1:{client_port}/health", timeout=30)
        token = secrets.token_hex(16)
        (workdir / "tokens.csv").write_text(f'{token},admin,admin-uid,"system:masters"\n')
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (workdir / "sa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        (workdir / "sa.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        api_proc = _Child(
            "kube-apiserver",
            [
                str(apiserver),
                f"--etcd-servers=http://127.0.0.1:{client_port}",
                f"--cert-dir={workdir / 'certs'}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={workdir / 'sa.pub'}",
                f"--service-account-signing-key-file={workdir / 'sa.key'}",
                f"--token-auth-file={workdir / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
                "--enable-priority-and-fairness=false",
                "--v=0",
            ],
            workdir=workdir,
            env={},
        )
        server = f"https://127.0.0.1:{api_port}"
        api_proc.wait_until(
            f"{server}/readyz",
            timeout=90,
            context=_insecure_context(),
            headers={"Authorization": f"Bearer {token}"},
        )
        ca = workdir / "certs" / "apiserver.crt"
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: testbed\n  cluster:\n    server: {server}\n"
            f"    certificate-authority: {ca}\n"
            f"users:\n- name: admin\n  user:\n    token: {token}\n"
            "contexts:\n- name: testbed\n  context:\n    cluster: testbed\n    user: admin\n"
            "current-context: testbed\n"
        )
        _standard_storage_class(server, token, ca)
        yield KubeCluster(server=server, token=token, kubeconfig=kubeconfig, workdir=workdir)
    finally:
        if api_proc is not None:
            api_proc.stop()
        etcd_proc.stop()


def _standard_storage_class(server: str, token: str, ca: Path) -> None:
    """Create the StorageClass ``standard`` (no provisioner) as the admin."""
    body = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "standard"},
        "provisioner": "kubernetes.io/no-provisioner",
    }
    request = urllib.request.Request(  # noqa: S310  the loopback API server
        f"{server}/apis/storage.k8s.io/v1/storageclasses",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(request, timeout=10, context=context):  # noqa: S310  loopback
        pass


@dataclass(frozen=True)
class S3Server:
    """A MinIO server and its root credentials."""

    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"


class MinioProcess:
    """A single-drive MinIO on a fixed loopback port, stoppable and restartable on its data."""

    def __init__(self, workdir: Path, *, binary: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.binary = binary
        self.port, self.console = free_port(), free_port()
        self.server = S3Server(
            endpoint=f"http://127.0.0.1:{self.port}",
            access_key_id="testbed" + secrets.token_hex(4),
            secret_access_key=secrets.token_hex(20),
        )
        self._proc: _Child | None = None

    def start(self) -> None:
        """Start (again) and wait until ready."""
        self._proc = _Child(
            "minio",
            [
                str(self.binary),
                "server",
                str(self.workdir / "data"),
                f"--address=127.0.0.1:{self.port}",
                f"--console-address=127.0.0.1:{self.console}",
                "--quiet",
            ],
            workdir=self.workdir,
            env={
                "MINIO_ROOT_USER": self.server.access_key_id,
                "MINIO_ROOT_PASSWORD": self.server.secret_access_key,
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
                "MINIO_CI_CD": "1",
            },
        )
        self._proc.wait_until(f"{self.server.endpoint}/minio/health/ready", timeout=60)

    def stop(self) -> None:
        """Stop the process; the data stays."""
        if self._proc is not None:
            self._proc.stop()
            self._proc = None


@contextmanager
def minio(workdir: Path, *, binary: Path) -> Iterator[S3Server]:
    """A single-drive MinIO on loopback with random root credentials."""
    process = MinioProcess(workdir, binary=binary)
    process.start()
    try:
        yield process.server
    finally:
        process.stop()


KWOK_STAGES = Path(__file__).resolve().parent / "kwok-stages.yaml"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"

# The controllers a workload needs to go from a Deployment or Job to pods and back: owners make
# their children, the garbage collector and the namespace controller delete them, the
# serviceaccount controller gives each namespace its ``default`` account, endpoint slices follow
# Services, and the pod GC removes pods bound to nodes that are gone. The node lifecycle
# controller lifts the ``node.kubernetes.io/not-ready`` taint the API server puts on every new
# node once kwok reports it Ready (and would taint a node whose lease kwok stopped renewing);
# taint-based eviction stays off.
KUBE_CONTROLLERS = (
    "node-lifecycle-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "job-controller",
    "ttl-after-finished-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "pod-garbage-collector-controller",
)


@dataclass(frozen=True)
class KubeControlPlane(KubeCluster):
    """A whole control plane: :class:`KubeCluster` plus controllers, a scheduler and kwok.

    Nodes exist only once a test adds them (:meth:`add_node`, :meth:`add_gpu_node`); kwok plays
    their kubelets, driven by ``testbed/kwok-stages.yaml`` (which also documents the pod
    behaviours a test can ask for).
    """

    ca: Path

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One call to the API server as the admin; the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310  the loopback API server
            f"{self.server}{path}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        context = ssl.create_default_context(cafile=str(self.ca))
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
                return json.load(response)
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise TestbedError(f"{method} {path}: {error.code} {detail}") from error

    def add_node(
        self,
        name: str,
        *,
        cpu: str = "32",
        memory: str = "256Gi",
        pods: int = 110,
        extended: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        taints: Sequence[Mapping[str, str]] = (),
        wait_ready: float = 30,
    ) -> dict[str, Any]:
        """Create a node kwok manages and (unless ``wait_ready`` is 0) wait until it is Ready.

        ``extended`` adds resources to capacity and allocatable (``{"nvidia.com/gpu": "2"}``);
        ``taints`` are ``{"key", "value", "effect"}`` mappings. Returns the node as created.
        """
        resources = {"cpu": cpu, "memory": memory, "pods": str(pods), **(extended or {})}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {
                    KWOK_NODE_ANNOTATION: "fake",
                    "node.alpha.kubernetes.io/ttl": "0",
                },
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    **(labels or {}),
                },
            },
            "spec": {"taints": [dict(taint) for taint in taints]},
            "status": {"capacity": resources, "allocatable": resources},
        }
        created: dict[str, Any] = self.request("POST", "/api/v1/nodes", node)
        if wait_ready:
            self.wait_node_ready(name, timeout=wait_ready)
        return created

    def add_gpu_node(
        self,
        name: str,
        gpus: int,
        *,
        gpu_product: str = "NVIDIA-A100-SXM4-80GB",
        gpu_memory_mib: int = 81920,
        cpu: str = "32",
        memory: str = "256Gi",
        labels: Mapping[str, str] | None = None,
        taints: Sequence[Mapping[str, str]] = (),
        wait_ready: float = 30,
    ) -> dict[str, Any]:
        """A node with ``gpus`` NVIDIA GPUs, labelled the way GPU feature discovery labels one.

        ``nvidia.com/gpu`` is in capacity and allocatable (the device plugin's resource), and the
        labels carry product, memory per GPU (MiB) and count.
        """
        return self.add_node(
            name,
            cpu=cpu,
            memory=memory,
            extended={"nvidia.com/gpu": str(gpus)},
            labels={
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": gpu_product,
                "nvidia.com/gpu.memory": str(gpu_memory_mib),
                "nvidia.com/gpu.count": str(gpus),
                **(labels or {}),
            },
            taints=taints,
            wait_ready=wait_ready,
        )

    def delete_node(self, name: str) -> None:
        """Delete a node; the pod garbage collector then removes the pods bound to it."""
        self.request("DELETE", f"/api/v1/nodes/{name}")

    def wait_node_ready(self, name: str, *, timeout: float = 30) -> None:
        """Poll until kwok has reported the node Ready and it takes pods (no not-ready taint)."""
        deadline = time.monotonic() + timeout
        while True:
            node = self.request("GET", f"/api/v1/nodes/{name}")
            conditions = node.get("status", {}).get("conditions") or []
            taints = {t["key"] for t in node.get("spec", {}).get("taints") or []}
            if (
                any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
                and "node.kubernetes.io/not-ready" not in taints
            ):
                return
            if time.monotonic() > deadline:
                raise TestbedError(f"node {name} not Ready after {timeout:.0f} s")
            time.sleep(0.1)

    def wait_controllers(self, *, timeout: float = 60) -> None:
        """Poll until the controller manager works: the ``default`` namespace has its account."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            except TestbedError:
                if time.monotonic() > deadline:
                    raise TestbedError(
                        f"kube-controller-manager not working after {timeout:.0f} s; "
                        f"see {self.workdir / 'kube-controller-manager.log'}"
                    ) from None
                time.sleep(0.1)
            else:
                return


@contextmanager
def kube_control_plane(
    workdir: Path,
    *,
    binaries: Mapping[str, Path],
    stages: Path = KWOK_STAGES,
) -> Iterator[KubeControlPlane]:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback.

    ``binaries`` maps the names ``build.sh --print`` uses to paths. The three components all talk
    to the API server with the admin token of the cluster's kubeconfig (the controllers with
    their own credentials, ``--use-service-account-credentials=false``), elect no leader and serve
    their health endpoints on loopback only. Stopped in reverse order on exit.
    """
    with kube_apiserver(
        workdir, etcd=binaries["etcd"], apiserver=binaries["kube-apiserver"]
    ) as cluster:
        kubeconfig = str(cluster.kubeconfig)
        kcm_port, scheduler_port, kwok_port = free_port(), free_port(), free_port()
        children: list[_Child] = []
        try:
            children.append(
                _Child(
                    "kube-controller-manager",
                    [
                        str(binaries["kube-controller-manager"]),
                        f"--kubeconfig={kubeconfig}",
                        "--bind-address=127.0.0.1",
                        f"--secure-port={kcm_port}",
                        "--leader-elect=false",
                        "--use-service-account-credentials=false",
                        f"--controllers={','.join(KUBE_CONTROLLERS)}",
                        "--kube-api-qps=200",
                        "--kube-api-burst=400",
                        "--v=1",
                    ],
                    workdir=workdir,
                    env={},
                )
            )
            children.append(
                _Child(
                    "kube-scheduler",
                    [
                        str(binaries["kube-scheduler"]),
                        f"--kubeconfig={kubeconfig}",
                        "--bind-address=127.0.0.1",
                        f"--secure-port={scheduler_port}",
                        "--leader-elect=false",
                        "--v=1",
                    ],
                    workdir=workdir,
                    env={},
                )
            )
            children.append(
                _Child(
                    "kwok",
                    [
                        str(binaries["kwok"]),
                        f"--kubeconfig={kubeconfig}",
                        f"--config={stages}",
                        "--manage-all-nodes=false",
                        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                        f"--server-address=127.0.0.1:{kwok_port}",
                        "--cidr=10.244.0.0/16",
                        # renew a Lease per node, the heartbeat the node lifecycle controller
                        # reads (without it every node would flap to Unknown after 50 s)
                        "--node-lease-duration-seconds=40",
                        "--node-ip=10.96.0.1",
                    ],
                    workdir=workdir,
                    # kwok looks for ~/.kwok; keep it inside the work directory.
                    env={"HOME": str(workdir)},
                )
            )
            kcm, scheduler, kwok = children
            insecure = _insecure_context()
            kcm.wait_until(f"https://127.0.0.1:{kcm_port}/healthz", timeout=60, context=insecure)
            scheduler.wait_until(
                f"https://127.0.0.1:{scheduler_port}/readyz", timeout=60, context=insecure
            )
            kwok.wait_until(f"http://127.0.0.1:{kwok_port}/healthz", timeout=60)
            plane = KubeControlPlane(
                server=cluster.server,
                token=cluster.token,
                kubeconfig=cluster.kubeconfig,
                workdir=cluster.workdir,
                ca=cluster.workdir / "certs" / "apiserver.crt",
            )
            plane.wait_controllers()
            yield plane
        finally:
            for child in children:
                child.terminate()
            for child in reversed(children):
                child.stop()
