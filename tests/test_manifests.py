"""The manifest allow-list and its parser, as a table: every malformed or dangerous manifest is
an InvalidInput naming the path of the first offending field (never another exception), and
what a model server needs passes. The same refusals through the API against the real
kube-apiserver are in ``tests/security/test_runtime.py``."""

from __future__ import annotations

import copy
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from services.errors import InvalidInput
from services.inference import check_manifest
from services.manifests import ManifestPolicy

POD = "manifest[0].spec.template.spec"
C0 = f"{POD}.containers[0]"

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "srv", "annotations": {"modelplane.io/model-name": "served"}},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "srv"}},
        "template": {
            "metadata": {"labels": {"app": "srv"}},
            "spec": {
                "containers": [
                    {
                        "name": "server",
                        "image": "registry.example.com/server:1",
                        "ports": [{"containerPort": 9000}],
                    }
                ]
            },
        },
    },
}
SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "srv"},
    "spec": {"selector": {"app": "srv"}, "ports": [{"port": 9000, "targetPort": 9000}]},
}
WEIGHTS = PurePosixPath("/data/models/org-a--tiny")
POLICY = ManifestPolicy(weights_dirs=(WEIGHTS,), claims=frozenset({"org-a-weights"}))


def dump(*documents: dict[str, Any]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)


def changed(
    *,
    pod: dict[str, Any] | None = None,
    container: dict[str, Any] | None = None,
    service: dict[str, Any] | None = None,
) -> str:
    """The good manifest with fields of the pod, its first container or the Service set."""
    deployment, svc = copy.deepcopy(DEPLOYMENT), copy.deepcopy(SERVICE)
    deployment["spec"]["template"]["spec"].update(pod or {})
    deployment["spec"]["template"]["spec"]["containers"][0].update(container or {})
    svc["spec"].update(service or {})
    return dump(deployment, svc)


def check(text: str, policy: ManifestPolicy = POLICY) -> tuple[list[dict[str, Any]], str, int]:
    return check_manifest(text, namespace="ns", name="inf-aaaaa", policy=policy)


BILLION_LAUGHS = """
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""

DANGEROUS: list[tuple[str, str, str, str]] = [
    (
        "secret-volume",
        changed(pod={"volumes": [{"name": "s", "secret": {"secretName": "modelplane-mongodb"}}]}),
        f"{POD}.volumes[0].secret",
        "not allowed",
    ),
    (
        "secret-key-ref",
        changed(
            container={
                "env": [
                    {
                        "name": "URI",
                        "valueFrom": {"secretKeyRef": {"name": "modelplane-mongodb", "key": "uri"}},
                    }
                ]
            }
        ),
        f"{C0}.env[0].valueFrom.secretKeyRef.name",
        "Secrets",
    ),
    (
        "env-from",
        changed(container={"envFrom": [{"secretRef": {"name": "modelplane-mongodb"}}]}),
        f"{C0}.envFrom",
        "not allowed",
    ),
    (
        "config-map-ref",
        changed(
            container={
                "env": [{"name": "C", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "y"}}}]
            }
        ),
        f"{C0}.env[0].valueFrom.configMapKeyRef",
        "not allowed",
    ),
    (
        "service-account",
        changed(pod={"serviceAccountName": "default"}),
        f"{POD}.serviceAccountName",
        "not allowed",
    ),
    (
        "service-account-old",
        changed(pod={"serviceAccount": "x"}),
        f"{POD}.serviceAccount",
        "not allowed",
    ),
    (
        "automount-token",
        changed(pod={"automountServiceAccountToken": True}),
        f"{POD}.automountServiceAccountToken",
        "not allowed",
    ),
    (
        "projected-token",
        changed(
            pod={
                "volumes": [
                    {
                        "name": "t",
                        "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]},
                    }
                ]
            }
        ),
        f"{POD}.volumes[0].projected",
        "not allowed",
    ),
    *[
        (
            f"capability-{cap.lower()}",
            changed(container={"securityContext": {"capabilities": {"add": [cap]}}}),
            f"{C0}.securityContext.capabilities.add[0]",
            "adding capabilities",
        )
        for cap in (
            "CAP_SYS_ADMIN",
            "SYS_ADMIN",
            "SYS_MODULE",
            "SYS_PTRACE",
            "DAC_READ_SEARCH",
            "BPF",
            "SYS_RAWIO",
            "NET_RAW",
            "all",
        )
    ],
    (
        "sysctls",
        changed(
            pod={"securityContext": {"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "1"}]}}
        ),
        f"{POD}.securityContext.sysctls",
        "not allowed",
    ),
    ("host-network", changed(pod={"hostNetwork": True}), f"{POD}.hostNetwork", "not allowed"),
    ("host-pid", changed(pod={"hostPID": True}), f"{POD}.hostPID", "not allowed"),
    ("host-ipc", changed(pod={"hostIPC": True}), f"{POD}.hostIPC", "not allowed"),
    (
        "share-pid",
        changed(pod={"shareProcessNamespace": True}),
        f"{POD}.shareProcessNamespace",
        "not allowed",
    ),
    (
        "privileged",
        changed(container={"securityContext": {"privileged": True}}),
        f"{C0}.securityContext.privileged",
        "not allowed",
    ),
    (
        "privilege-escalation",
        changed(container={"securityContext": {"allowPrivilegeEscalation": True}}),
        f"{C0}.securityContext.allowPrivilegeEscalation",
        "not allowed",
    ),
    (
        "unconfined-seccomp",
        changed(container={"securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
        f"{C0}.securityContext.seccompProfile.type",
        "not allowed",
    ),
    (
        "host-port",
        changed(container={"ports": [{"containerPort": 9000, "hostPort": 80}]}),
        f"{C0}.ports[0].hostPort",
        "not allowed",
    ),
    (
        "probe-host",
        changed(container={"readinessProbe": {"httpGet": {"port": 80, "host": "169.254.169.254"}}}),
        f"{C0}.readinessProbe.httpGet.host",
        "not allowed",
    ),
    (
        "lifecycle",
        changed(container={"lifecycle": {"postStart": {"exec": {"command": ["x"]}}}}),
        f"{C0}.lifecycle",
        "not allowed",
    ),
    (
        "image-pull-secrets",
        changed(pod={"imagePullSecrets": [{"name": "regcred"}]}),
        f"{POD}.imagePullSecrets",
        "not allowed",
    ),
    (
        "ephemeral-containers",
        changed(pod={"ephemeralContainers": [{"name": "e", "image": "busybox"}]}),
        f"{POD}.ephemeralContainers",
        "not allowed",
    ),
    (
        "privileged-init",
        changed(
            pod={
                "initContainers": [
                    {"name": "i", "image": "busybox", "securityContext": {"privileged": True}}
                ]
            }
        ),
        f"{POD}.initContainers[0].securityContext.privileged",
        "not allowed",
    ),
    (
        "host-path-root",
        changed(pod={"volumes": [{"name": "w", "hostPath": {"path": "/data/models"}}]}),
        f"{POD}.volumes[0].hostPath.path",
        "outside your organisation's weights",
    ),
    (
        "host-path-sibling",
        changed(pod={"volumes": [{"name": "w", "hostPath": {"path": "/data/models/org-b--x"}}]}),
        f"{POD}.volumes[0].hostPath.path",
        "outside your organisation's weights",
    ),
    (
        "host-path-dotdot",
        changed(pod={"volumes": [{"name": "w", "hostPath": {"path": f"{WEIGHTS}/../org-b"}}]}),
        f"{POD}.volumes[0].hostPath.path",
        "without '..'",
    ),
    (
        "host-path-create",
        changed(
            pod={
                "volumes": [
                    {"name": "w", "hostPath": {"path": str(WEIGHTS), "type": "DirectoryOrCreate"}}
                ]
            }
        ),
        f"{POD}.volumes[0].hostPath.type",
        "not allowed",
    ),
    (
        "host-path-writable",
        changed(
            pod={"volumes": [{"name": "w", "hostPath": {"path": str(WEIGHTS)}}]},
            container={"volumeMounts": [{"name": "w", "mountPath": "/w"}]},
        ),
        f"{C0}.volumeMounts[0].readOnly",
        "readOnly: true",
    ),
    (
        "other-pvc",
        changed(
            pod={
                "volumes": [{"name": "p", "persistentVolumeClaim": {"claimName": "org-b-weights"}}]
            }
        ),
        f"{POD}.volumes[0].persistentVolumeClaim.claimName",
        "your organisation's",
    ),
    (
        "mount-propagation",
        changed(
            pod={"volumes": [{"name": "e", "emptyDir": {}}]},
            container={
                "volumeMounts": [
                    {"name": "e", "mountPath": "/e", "mountPropagation": "Bidirectional"}
                ]
            },
        ),
        f"{C0}.volumeMounts[0].mountPropagation",
        "not allowed",
    ),
    (
        "external-ips",
        changed(service={"externalIPs": ["203.0.113.9"]}),
        "manifest[1].spec.externalIPs",
        "not allowed",
    ),
    ("node-port", changed(service={"type": "NodePort"}), "manifest[1].spec.type", "not allowed"),
    (
        "load-balancer",
        changed(service={"type": "LoadBalancer"}),
        "manifest[1].spec.type",
        "not allowed",
    ),
    (
        "external-name",
        changed(service={"type": "ExternalName"}),
        "manifest[1].spec.type",
        "not allowed",
    ),
]

MALFORMED: list[tuple[str, str, str, str]] = [
    ("empty", "", "manifest", "exactly one Deployment"),
    ("a-list", "[1, 2]", "manifest[0]", "must be a mapping"),
    ("a-number", "42", "manifest[0]", "must be a mapping"),
    ("a-string", "just text", "manifest[0]", "must be a mapping"),
    ("not-yaml", "a: [", "manifest", "not valid YAML"),
    ("python-tag", "!!python/object/apply:os.system ['id']", "manifest", "not valid YAML"),
    ("huge-integer", "replicas: " + "9" * 5000, "manifest", "not valid YAML"),
    ("deep", "[" * 500 + "]" * 500, "manifest", "nests deeper"),
    ("many-nodes", "x: [" + ",".join(["1"] * 6000) + "]", "manifest", "over 5,000 YAML nodes"),
    ("lone-surrogate", "a: \ud800", "manifest", "not valid text"),
    ("control-character", "a: \x00", "manifest", "not valid YAML"),
    ("aliases", BILLION_LAUGHS, "manifest", "aliases are not allowed"),
    ("one-alias", "a: &x 1\nb: *x\n", "manifest", "aliases are not allowed"),
    ("merge-key", "a: &x {k: 1}\nb: {<<: *x}\n", "manifest", "aliases are not allowed"),
    (
        "unknown-kind",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
        "manifest[0].kind",
        "not allowed",
    ),
    ("kind-not-a-string", "apiVersion: v1\nkind: [Service]\n", "manifest[0].kind", "not allowed"),
    ("no-kind", "metadata: {name: x}\n", "manifest[0].kind", "not allowed"),
    (
        "config-map",
        dump(DEPLOYMENT, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
        "manifest[1].kind",
        "not allowed",
    ),
    ("two-deployments", dump(DEPLOYMENT, DEPLOYMENT), "manifest", "exactly one Deployment"),
    ("two-services", dump(DEPLOYMENT, SERVICE, SERVICE), "manifest", "at most one Service"),
    ("only-a-service", dump(SERVICE), "manifest", "exactly one Deployment"),
    ("too-many-documents", dump(*[SERVICE] * 9), "manifest", "at most 8 documents"),
]


def _set(path: list[Any], value: Any) -> str:
    deployment = copy.deepcopy(DEPLOYMENT)
    node: Any = deployment
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return dump(deployment)


SPEC = ["spec"]
TEMPLATE = ["spec", "template", "spec"]
CONTAINER = [*TEMPLATE, "containers", 0]
WRONG_TYPES: list[tuple[str, str, str, str]] = [
    ("metadata-list", _set(["metadata"], []), "manifest[0].metadata", "must be a mapping"),
    ("spec-list", _set(SPEC, [1]), "manifest[0].spec", "must be a mapping"),
    ("spec-null", _set(SPEC, None), "manifest[0].spec", "must be a mapping"),
    (
        "replicas-string",
        _set([*SPEC, "replicas"], "3"),
        "manifest[0].spec.replicas",
        "whole number",
    ),
    (
        "replicas-float",
        _set([*SPEC, "replicas"], float("inf")),
        "manifest[0].spec.replicas",
        "whole number",
    ),
    ("replicas-bool", _set([*SPEC, "replicas"], True), "manifest[0].spec.replicas", "whole number"),
    ("replicas-huge", _set([*SPEC, "replicas"], 10**30), "manifest[0].spec.replicas", "between"),
    (
        "template-string",
        _set([*SPEC, "template"], "x"),
        "manifest[0].spec.template",
        "must be a mapping",
    ),
    (
        "containers-map",
        _set([*TEMPLATE, "containers"], {"a": 1}),
        f"{POD}.containers",
        "must be a list",
    ),
    ("containers-empty", _set([*TEMPLATE, "containers"], []), f"{POD}.containers", "has 0"),
    (
        "container-number",
        _set([*TEMPLATE, "containers"], [42]),
        f"{POD}.containers[0]",
        "must be a mapping",
    ),
    (
        "container-null",
        _set([*TEMPLATE, "containers"], [None]),
        f"{POD}.containers[0]",
        "must be a mapping",
    ),
    (
        "port-string",
        _set([*CONTAINER, "ports"], [{"containerPort": "x"}]),
        f"{C0}.ports[0].containerPort",
        "whole number",
    ),
    (
        "ports-map",
        _set([*CONTAINER, "ports"], {"containerPort": 1}),
        f"{C0}.ports",
        "must be a list",
    ),
    ("image-number", _set([*CONTAINER, "image"], 5), f"{C0}.image", "must be a string"),
    ("command-string", _set([*CONTAINER, "command"], "serve"), f"{C0}.command", "must be a list"),
    (
        "env-value-int",
        _set([*CONTAINER, "env"], [{"name": "A", "value": 1}]),
        f"{C0}.env[0].value",
        "must be a string",
    ),
    (
        "gpu-word",
        _set([*CONTAINER, "resources"], {"limits": {"nvidia.com/gpu": "abc"}}),
        f"{C0}.resources.limits.nvidia.com/gpu",
        "whole number",
    ),
    (
        "cpu-word",
        _set([*CONTAINER, "resources"], {"limits": {"cpu": "lots"}}),
        f"{C0}.resources.limits.cpu",
        "CPU",
    ),
    (
        "resource-list",
        _set([*CONTAINER, "resources"], {"limits": ["cpu"]}),
        f"{C0}.resources.limits",
        "must be a mapping",
    ),
    (
        "labels-int",
        _set(["metadata", "labels"], {"a": 1}),
        "manifest[0].metadata.labels.a",
        "must be strings",
    ),
    (
        "non-string-key",
        _set(["metadata"], {1: "x"}),
        "manifest[0].metadata[1]",
        "keys must be strings",
    ),
    (
        "annotations-list",
        _set(["metadata", "annotations"], ["x"]),
        "manifest[0].metadata.annotations",
        "must be a mapping",
    ),
    (
        "selector-missing",
        _set(SPEC, {"template": DEPLOYMENT["spec"]["template"]}),
        "manifest[0].spec.selector",
        "required",
    ),
    (
        "mount-unknown-volume",
        _set([*CONTAINER, "volumeMounts"], [{"name": "v", "mountPath": "/v"}]),
        f"{C0}.volumeMounts[0].name",
        "no volume",
    ),
    (
        "volume-two-sources",
        _set(
            [*TEMPLATE, "volumes"],
            [{"name": "v", "emptyDir": {}, "hostPath": {"path": str(WEIGHTS)}}],
        ),
        f"{POD}.volumes[0]",
        "exactly one",
    ),
    (
        "toleration-operator",
        _set([*TEMPLATE, "tolerations"], [{"operator": "Maybe"}]),
        f"{POD}.tolerations[0].operator",
        "not allowed",
    ),
    (
        "date-image",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {selector: {}, "
        "template: {spec: {containers: [{name: c, image: 2001-12-14}]}}}\n",
        f"{C0}.image",
        "must be a string",
    ),
]


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [case[1:] for case in DANGEROUS + MALFORMED + WRONG_TYPES],
    ids=[case[0] for case in DANGEROUS + MALFORMED + WRONG_TYPES],
)
def test_refusals_name_the_path(text: str, field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check(text)
    assert caught.value.field == field, caught.value.message
    assert words in caught.value.message


def test_what_a_model_server_needs_passes() -> None:
    deployment = copy.deepcopy(DEPLOYMENT)
    pod = deployment["spec"]["template"]["spec"]
    pod.update(
        {
            "volumes": [
                {"name": "w", "hostPath": {"path": f"{WEIGHTS}/snapshot", "type": "Directory"}},
                {"name": "p", "persistentVolumeClaim": {"claimName": "org-a-weights"}},
                {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
            ],
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "hostNetwork": False,
        }
    )
    pod["containers"][0].update(
        {
            "args": ["--model", "/w"],
            "env": [
                {"name": "A", "value": "1"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
            "resources": {"limits": {"nvidia.com/gpu": 2, "cpu": "8", "memory": "32Gi"}},
            "volumeMounts": [
                {"name": "w", "mountPath": "/w", "readOnly": True},
                {"name": "p", "mountPath": "/p", "readOnly": True},
                {"name": "shm", "mountPath": "/dev/shm"},  # noqa: S108  vLLM's shared memory
            ],
            "readinessProbe": {"httpGet": {"path": "/health", "port": 9000}},
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
        }
    )
    objects, name, port = check(dump(deployment, SERVICE))
    assert (name, port) == ("served", 9000)
    assert objects[0]["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert {o["metadata"]["namespace"] for o in objects} == {"ns"}


def test_external_services_pass_when_the_setting_allows_them() -> None:
    text = changed(service={"type": "NodePort", "externalIPs": ["203.0.113.9"]})
    allowed = ManifestPolicy(allow_external_services=True)
    objects, _, _ = check(text, allowed)
    assert objects[1]["spec"]["type"] == "NodePort"
