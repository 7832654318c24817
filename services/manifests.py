"""A user's own manifest (``createInferenceFromManifest``): parsed safely, then allow-listed.

Why an allow-list: the first version refused what it knew to be dangerous (privileged, three
capabilities, host namespaces, hostPath outside the roots) and let through everything else:
Secret volumes, ``secretKeyRef``/``envFrom`` of any Secret in the namespace (the database
URI's, other organisations' model Secrets), ``serviceAccountName``, ``CAP_SYS_ADMIN`` spelled
with its prefix, ``SYS_PTRACE``, unsafe sysctls, Service ``externalIPs``. A deny-list is never
finished; here every field a model server needs is named with its type, and anything else is
refused with the path of the first field that is not allowed or not of the right type
(``manifest[0].spec.template.spec.containers[0].securityContext.capabilities.add[0]``), so a
malformed manifest is a ValidationError, never an unexpected error.

What a pod may have: containers and init containers (image, command, args, ports without host
ports, env of literals or the downward API, resources, probes without a ``host``, volume
mounts), ``emptyDir`` volumes, ``hostPath`` volumes inside one of the organisation's own
LOCAL weights directories (read-only mounts, existing paths), PVCs of the organisation's own
PVC targets, node selector, tolerations, a runtime class, and a security context that only
narrows (``runAsNonRoot``, ``readOnlyRootFilesystem``, dropping capabilities, the runtime's
default seccomp profile; ``privileged`` and ``allowPrivilegeEscalation`` may only be false).
No Secret but the inference's own (a manifest inference has none), no service account (the
token is never mounted: ``automountServiceAccountToken`` is forced to false), no sysctls, no
host namespaces. A Service is ClusterIP; NodePort, LoadBalancer and ``externalIPs`` only when
the setting ``MODELPLANE_MANIFEST_ALLOW_EXTERNAL_SERVICES`` allows them.

The tables below say what each field may hold; the checks they are built from are
:mod:`services.manifest_checks`, and reading the YAML safely is :mod:`services.manifest_yaml`.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from services import validation as v
from services.errors import InvalidInput
from services.manifest_checks import (
    CAPABILITY,
    DNS_LABEL,
    DNS_NAME,
    ENV_NAME,
    PORT_NAME,
    Check,
    ManifestPolicy,
    boolean,
    int_or_percent,
    listing,
    mapping,
    number,
    one_of,
    port_ref,
    refuse,
    text,
    text_map,
    type_name,
)
from services.manifest_yaml import ManifestYAMLError, parse_documents

__all__ = ["ManifestPolicy", "ManifestYAMLError", "check_document", "parse_documents"]

MAX_CONTAINERS = 8
MAX_REPLICAS = 64
GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")


def amounts(value: Any, path: str, policy: ManifestPolicy) -> None:
    """CPU and memory quantities (checked as the API's inputs are), whole GPUs."""
    if not isinstance(value, dict):
        raise refuse(path, f"must be a mapping, not {type_name(value)}")
    for name, amount in value.items():
        at = f"{path}.{name}"
        if name in GPU_RESOURCES:
            whole = int(amount) if isinstance(amount, str) and amount.isdigit() else amount
            number(0, v.MAX_GPUS)(whole, at, policy)
        elif name == "cpu":
            v.check_cpu(at, _quantity_text(amount, at))
        elif name in {"memory", "ephemeral-storage"}:
            v.check_memory(at, _quantity_text(amount, at))
        else:
            raise refuse(at, f"{name!r} is not allowed (cpu, memory, ephemeral-storage, GPUs)")


RESOURCES = mapping({"limits": amounts, "requests": amounts})


def dropped(value: Any, path: str, policy: ManifestPolicy) -> None:
    """A field that is accepted and removed (an exported object's ``status``)."""
    del value, path, policy


def _quantity_text(amount: Any, path: str) -> str:
    if isinstance(amount, bool) or not isinstance(amount, (str, int, float)):
        raise refuse(path, f"must be a quantity, not {type_name(amount)}")
    return str(amount)


# -- pods ------------------------------------------------------------------------------------


def secret_key_ref(value: Any, path: str, policy: ManifestPolicy) -> None:
    mapping({"name": text(DNS_NAME), "key": text(most=253), "optional": boolean})(
        value, path, policy
    )
    name = value.get("name")
    if name not in policy.own_secrets:
        raise refuse(
            f"{path}.name",
            "a manifest may not reference Secrets (only an inference's own, and a manifest "
            "inference has none)",
        )


ENV_VAR = mapping(
    {
        "name": text(ENV_NAME, most=256),
        "value": text(most=32 * 1024),
        "valueFrom": mapping(
            {
                "secretKeyRef": secret_key_ref,
                "fieldRef": mapping(
                    {"fieldPath": text(most=256), "apiVersion": text(most=32)},
                    required=("fieldPath",),
                ),
                "resourceFieldRef": mapping(
                    {
                        "resource": text(most=64),
                        "containerName": text(DNS_LABEL),
                        "divisor": text(most=32),
                    },
                    required=("resource",),
                ),
            }
        ),
    },
    required=("name",),
)


def capabilities(value: Any, path: str, policy: ManifestPolicy) -> None:
    """Dropping only: any ``add`` entry is refused, whatever its spelling."""
    if isinstance(value, dict) and isinstance(value.get("add"), list) and value["add"]:
        raise refuse(
            f"{path}.add[0]",
            f"adding capabilities ({value['add'][0]!r}) is not allowed; only drop",
        )
    mapping({"drop": listing(text(CAPABILITY)), "add": listing(text(), most=0)})(
        value, path, policy
    )


SECCOMP = mapping({"type": one_of("RuntimeDefault")}, required=("type",))

CONTAINER_SECURITY = mapping(
    {
        "privileged": one_of(False),
        "allowPrivilegeEscalation": one_of(False),
        "runAsNonRoot": boolean,
        "runAsUser": number(0, 2**31 - 1),
        "runAsGroup": number(0, 2**31 - 1),
        "readOnlyRootFilesystem": boolean,
        "capabilities": capabilities,
        "seccompProfile": SECCOMP,
    }
)

POD_SECURITY = mapping(
    {
        "runAsNonRoot": boolean,
        "runAsUser": number(0, 2**31 - 1),
        "runAsGroup": number(0, 2**31 - 1),
        "fsGroup": number(0, 2**31 - 1),
        "supplementalGroups": listing(number(0, 2**31 - 1), most=16),
        "seccompProfile": SECCOMP,
    }
)

PROBE = mapping(
    {
        # No ``host``: the kubelet would send the request there (from the node).
        "httpGet": mapping(
            {
                "path": text(most=1024),
                "port": port_ref,
                "scheme": one_of("HTTP", "HTTPS"),
                "httpHeaders": listing(
                    mapping({"name": text(most=256), "value": text(most=4096)}), most=16
                ),
            },
            required=("port",),
        ),
        "tcpSocket": mapping({"port": port_ref}, required=("port",)),
        "exec": mapping({"command": listing(text(most=4096))}),
        "initialDelaySeconds": number(0, 86400),
        "periodSeconds": number(1, 3600),
        "timeoutSeconds": number(1, 3600),
        "successThreshold": number(1, 100),
        "failureThreshold": number(1, 10_000),
    }
)

CONTAINER = mapping(
    {
        "name": text(DNS_LABEL),
        "image": text(most=512),
        "imagePullPolicy": one_of("Always", "IfNotPresent", "Never"),
        "command": listing(text(most=32 * 1024), most=256),
        "args": listing(text(most=32 * 1024), most=256),
        "workingDir": text(most=1024),
        "ports": listing(
            mapping(
                {
                    "name": text(PORT_NAME, most=15),
                    "containerPort": number(1, 65535),
                    "protocol": one_of("TCP", "UDP"),
                },
                required=("containerPort",),
            ),
            most=16,
        ),
        "env": listing(ENV_VAR, most=256),
        "resources": RESOURCES,
        "volumeMounts": listing(
            mapping(
                {
                    "name": text(DNS_LABEL),
                    "mountPath": text(most=1024),
                    "readOnly": boolean,
                    "subPath": text(most=1024),
                },
                required=("name", "mountPath"),
            ),
            most=32,
        ),
        "livenessProbe": PROBE,
        "readinessProbe": PROBE,
        "startupProbe": PROBE,
        "securityContext": CONTAINER_SECURITY,
    },
    required=("name", "image"),
)


def host_path(value: Any, path: str, policy: ManifestPolicy) -> None:
    """An existing directory or file inside one of the organisation's weights directories."""
    mapping({"path": text(most=1024), "type": one_of("", "Directory", "File")}, required=("path",))(
        value, path, policy
    )
    where = f"{path}.path"
    pure = PurePosixPath(value["path"])
    if not pure.is_absolute() or ".." in pure.parts:
        raise refuse(where, "must be an absolute path without '..'")
    for allowed in policy.weights_dirs:
        if pure == allowed or allowed in pure.parents:
            return
    shown = ", ".join(str(d) for d in policy.weights_dirs) or "none: add a LOCAL model first"
    raise refuse(
        where,
        f"{str(pure)!r} is outside your organisation's weights directories ({shown})",
    )


def claim(value: Any, path: str, policy: ManifestPolicy) -> None:
    mapping({"claimName": text(DNS_NAME), "readOnly": boolean}, required=("claimName",))(
        value, path, policy
    )
    if value["claimName"] not in policy.claims:
        raise refuse(
            f"{path}.claimName", "only the PVCs of your organisation's PVC targets may be mounted"
        )


VOLUME_SOURCES: dict[str, Check] = {
    "emptyDir": mapping({"medium": one_of("", "Memory"), "sizeLimit": text(most=32)}),
    "hostPath": host_path,
    "persistentVolumeClaim": claim,
}


def volume(value: Any, path: str, policy: ManifestPolicy) -> None:
    mapping({"name": text(DNS_LABEL), **VOLUME_SOURCES}, required=("name",))(value, path, policy)
    sources = [key for key in VOLUME_SOURCES if key in value]
    if len(sources) != 1:
        raise refuse(path, f"needs exactly one of {', '.join(VOLUME_SOURCES)}")
    policy.volumes[value["name"]] = sources[0]


TOLERATION = mapping(
    {
        "key": text(most=316),
        "operator": one_of("Equal", "Exists"),
        "value": text(most=63),
        "effect": one_of("NoSchedule", "PreferNoSchedule", "NoExecute"),
        "tolerationSeconds": number(0, 86400 * 7),
    }
)

POD = mapping(
    {
        "containers": listing(CONTAINER, most=MAX_CONTAINERS, least=1),
        "initContainers": listing(CONTAINER, most=MAX_CONTAINERS),
        "volumes": listing(volume, most=32),
        "nodeSelector": text_map,
        "tolerations": listing(TOLERATION, most=32),
        "runtimeClassName": text(DNS_NAME),
        "terminationGracePeriodSeconds": number(0, 3600),
        "restartPolicy": one_of("Always"),
        "securityContext": POD_SECURITY,
        "automountServiceAccountToken": one_of(False),
        "enableServiceLinks": boolean,
        "hostNetwork": one_of(False),
        "hostPID": one_of(False),
        "hostIPC": one_of(False),
    },
    required=("containers",),
)


def pod(value: Any, path: str, policy: ManifestPolicy) -> None:
    """The pod template's spec, then its mounts against its volumes."""
    policy.volumes.clear()
    POD(value, path, policy)
    for kind in ("containers", "initContainers"):
        for index, container in enumerate(value.get(kind) or []):
            for number_, mount in enumerate(container.get("volumeMounts") or []):
                at = f"{path}.{kind}[{index}].volumeMounts[{number_}]"
                source = policy.volumes.get(mount["name"])
                if source is None:
                    raise refuse(f"{at}.name", f"no volume named {mount['name']!r}")
                if source != "emptyDir" and mount.get("readOnly") is not True:
                    raise refuse(f"{at}.readOnly", f"a {source} mount must be readOnly: true")


METADATA = mapping(
    {
        "name": text(DNS_NAME),
        "namespace": text(DNS_LABEL),
        "labels": text_map,
        "annotations": text_map,
        "resourceVersion": text(most=64),
        "uid": text(most=64),
    }
)

DEPLOYMENT = mapping(
    {
        "apiVersion": one_of("apps/v1"),
        "kind": one_of("Deployment"),
        "metadata": METADATA,
        "spec": mapping(
            {
                "replicas": number(0, MAX_REPLICAS),
                "selector": mapping(
                    {
                        "matchLabels": text_map,
                        "matchExpressions": listing(
                            mapping(
                                {
                                    "key": text(most=316),
                                    "operator": one_of("In", "NotIn", "Exists", "DoesNotExist"),
                                    "values": listing(text(most=63)),
                                }
                            ),
                            most=16,
                        ),
                    }
                ),
                "strategy": mapping(
                    {
                        "type": one_of("RollingUpdate", "Recreate"),
                        "rollingUpdate": mapping(
                            {"maxSurge": int_or_percent, "maxUnavailable": int_or_percent}
                        ),
                    }
                ),
                "minReadySeconds": number(0, 3600),
                "revisionHistoryLimit": number(0, 100),
                "progressDeadlineSeconds": number(1, 86400),
                "template": mapping(
                    {
                        "metadata": mapping({"labels": text_map, "annotations": text_map}),
                        "spec": pod,
                    },
                    required=("spec",),
                ),
            },
            required=("selector", "template"),
        ),
        "status": dropped,
    },
    required=("metadata", "spec"),
)


def service_spec(value: Any, path: str, policy: ManifestPolicy) -> None:
    external = policy.allow_external_services
    types = ("ClusterIP", "NodePort", "LoadBalancer") if external else ("ClusterIP",)
    port: dict[str, Check] = {
        "name": text(PORT_NAME, most=15),
        "port": number(1, 65535),
        "targetPort": port_ref,
        "protocol": one_of("TCP", "UDP"),
    }
    fields: dict[str, Check] = {
        "type": one_of(*types),
        "selector": text_map,
        "sessionAffinity": one_of("None", "ClientIP"),
    }
    if external:
        port["nodePort"] = number(1, 65535)
        fields["externalIPs"] = listing(text(most=64), most=8)
        fields["loadBalancerSourceRanges"] = listing(text(most=64), most=32)
    fields["ports"] = listing(mapping(port, required=("port",)), most=16, least=1)
    if not external and isinstance(value, dict):
        for name in ("externalIPs", "loadBalancerSourceRanges"):
            if name in value:
                raise refuse(
                    f"{path}.{name}",
                    f"{name} is not allowed (MODELPLANE_MANIFEST_ALLOW_EXTERNAL_SERVICES is off)",
                )
        if value.get("type") in {"NodePort", "LoadBalancer"}:
            raise refuse(
                f"{path}.type",
                f"{value['type']} Services are not allowed; only ClusterIP "
                "(MODELPLANE_MANIFEST_ALLOW_EXTERNAL_SERVICES is off)",
            )
    mapping(fields, required=("ports",))(value, path, policy)


SERVICE = mapping(
    {
        "apiVersion": one_of("v1"),
        "kind": one_of("Service"),
        "metadata": METADATA,
        "spec": service_spec,
        "status": dropped,
    },
    required=("metadata", "spec"),
)

KINDS: dict[tuple[str, str], Check] = {
    ("apps/v1", "Deployment"): DEPLOYMENT,
    ("v1", "Service"): SERVICE,
}


def check_document(document: Any, index: int, policy: ManifestPolicy) -> str:
    """Check one parsed document against the allow-list; returns its kind."""
    path = f"manifest[{index}]"
    if not isinstance(document, dict):
        raise refuse(path, f"each document must be a mapping, not {type_name(document)}")
    version, kind = document.get("apiVersion"), document.get("kind")
    checker = (
        KINDS.get((version, kind)) if isinstance(version, str) and isinstance(kind, str) else None
    )
    if checker is None:
        raise InvalidInput(
            f"{path}.kind",
            f"{path}.kind: {str(kind)[:60]} ({str(version)[:60]}) is not allowed; only apps/v1 "
            "Deployment and v1 Service",
        )
    checker(document, path, policy)
    return str(kind)
