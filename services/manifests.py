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

Parsing: YAML anchors and aliases are refused (a 636-byte "billion laughs" document expanded
to 10^8 nodes and blocked the server for 14 s; the byte cap cannot see it), and the composed
document is bounded in nodes and depth, so the work is linear in the input's size.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from yaml.nodes import Node
from yaml.resolver import Resolver

from services import validation as v
from services.errors import InvalidInput

MAX_DOCUMENTS = 8
MAX_NODES = 5_000
MAX_DEPTH = 40
MAX_CONTAINERS = 8
MAX_LIST = 64
MAX_REPLICAS = 64
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]{0,255}$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")
_CAPABILITY = re.compile(r"^[A-Z_]{1,64}$")
_GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")


try:
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover  PyYAML built without libyaml: the pure Python parser
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser):  # type: ignore[no-redef]  # the same interface
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)


class ManifestYAMLError(yaml.YAMLError):
    """The YAML itself is refused (an alias, too many nodes, too deep)."""


class _BoundedLoader(Composer, _Parser, SafeConstructor, Resolver):
    """A safe loader that refuses anchors and aliases and bounds the node count and depth.

    Events come from libyaml when PyYAML has it (``CParser``: five times faster than the pure
    Python scanner; 5,000 nodes take about 60 ms), composed here so every node is counted."""

    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()
        if isinstance(event, AliasEvent) or (
            isinstance(event, (ScalarEvent, CollectionStartEvent)) and event.anchor is not None
        ):
            where = event.start_mark.line + 1 if event.start_mark else "?"
            raise ManifestYAMLError(
                f"YAML anchors and aliases are not allowed (line {where}); write the values out"
            )
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise ManifestYAMLError(f"the manifest has over {MAX_NODES:,} YAML nodes")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ManifestYAMLError(f"the manifest nests deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_documents(text: str) -> list[Any]:
    """The non-empty YAML documents of ``text``; InvalidInput("manifest") if it is not
    valid, uses anchors or aliases, or is too large once composed."""
    try:
        return _load_all(text)
    except ManifestYAMLError as exc:
        raise InvalidInput("manifest", str(exc)) from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInput("manifest", f"not valid YAML: {first}") from None
    except UnicodeError:
        raise InvalidInput("manifest", "not valid text (a lone surrogate?)") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. a 5,000-digit integer
        raise InvalidInput("manifest", f"not valid YAML: {type(exc).__name__}") from None


def _load_all(text: str) -> list[Any]:
    loader = _BoundedLoader(text)  # the reader checks the characters here
    documents: list[Any] = []
    try:
        while loader.check_data():  # type: ignore[no-untyped-call]  # untyped in the stubs
            if len(documents) >= MAX_DOCUMENTS:
                raise InvalidInput("manifest", f"at most {MAX_DOCUMENTS} documents are allowed")
            document = loader.get_data()
            if document is not None:
                documents.append(document)
    finally:
        loader.dispose()
    return documents


# -- the allow-list ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManifestPolicy:
    """What this organisation's manifest may reach."""

    weights_dirs: tuple[PurePosixPath, ...] = ()
    """hostPath volumes must lie in one of these (the organisation's LOCAL weights)."""
    claims: frozenset[str] = frozenset()
    """PVCs the pod may mount (the organisation's PVC targets)."""
    own_secrets: frozenset[str] = frozenset()
    """Secrets env may reference (the inference's own; none for a manifest)."""
    allow_external_services: bool = False
    """NodePort / LoadBalancer Services and externalIPs."""
    volumes: dict[str, str] = field(default_factory=dict)
    """Filled while checking: volume name -> its source kind."""


Check = Callable[[Any, str, ManifestPolicy], None]


def _refuse(path: str, message: str) -> InvalidInput:
    return InvalidInput(path, f"{path}: {message}")


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def mapping(fields: Mapping[str, Check], *, required: tuple[str, ...] = ()) -> Check:
    """A mapping with only ``fields`` (string keys), each checked; ``required`` present."""

    def check(value: Any, path: str, policy: ManifestPolicy) -> None:
        if not isinstance(value, dict):
            raise _refuse(path, f"must be a mapping, not {_type_name(value)}")
        for key, item in value.items():
            if not isinstance(key, str):
                raise _refuse(f"{path}[{key!r}]", "keys must be strings")
            if key not in fields:
                raise _refuse(
                    f"{path}.{key}",
                    f"{key} is not allowed in a manifest here "
                    f"(allowed: {', '.join(sorted(fields))})",
                )
            fields[key](item, f"{path}.{key}", policy)
        for key in required:
            if key not in value:
                raise _refuse(f"{path}.{key}", f"{key} is required")

    return check


def listing(item: Check, *, most: int = MAX_LIST, least: int = 0) -> Check:
    def check(value: Any, path: str, policy: ManifestPolicy) -> None:
        if not isinstance(value, list):
            raise _refuse(path, f"must be a list, not {_type_name(value)}")
        if not least <= len(value) <= most:
            raise _refuse(path, f"must have {least} to {most} items; has {len(value)}")
        for index, entry in enumerate(value):
            item(entry, f"{path}[{index}]", policy)

    return check


def text(pattern: re.Pattern[str] | None = None, *, most: int = 1024) -> Check:
    def check(value: Any, path: str, policy: ManifestPolicy) -> None:
        del policy
        if not isinstance(value, str):
            raise _refuse(path, f"must be a string, not {_type_name(value)}")
        if len(value) > most or "\0" in value:
            raise _refuse(path, f"must be at most {most} characters, without NUL")
        if pattern is not None and not pattern.match(value):
            raise _refuse(path, f"{value[:80]!r} is not allowed here")

    return check


def number(least: int, most: int) -> Check:
    def check(value: Any, path: str, policy: ManifestPolicy) -> None:
        del policy
        if isinstance(value, bool) or not isinstance(value, int):
            raise _refuse(path, f"must be a whole number, not {_type_name(value)}")
        if not least <= value <= most:
            raise _refuse(path, f"must be between {least} and {most}")

    return check


def one_of(*allowed: object) -> Check:
    def check(value: Any, path: str, policy: ManifestPolicy) -> None:
        del policy
        if isinstance(value, bool) != any(isinstance(a, bool) for a in allowed) or (
            value not in allowed
        ):
            shown = ", ".join(repr(a) for a in allowed)
            raise _refuse(path, f"{str(value)[:60]!r} is not allowed here; only {shown}")

    return check


def boolean(value: Any, path: str, policy: ManifestPolicy) -> None:
    del policy
    if not isinstance(value, bool):
        raise _refuse(path, f"must be true or false, not {_type_name(value)}")


def text_map(value: Any, path: str, policy: ManifestPolicy) -> None:
    """Labels, annotations, a selector: string keys to string values."""
    del policy
    if not isinstance(value, dict):
        raise _refuse(path, f"must be a mapping, not {_type_name(value)}")
    if len(value) > MAX_LIST:
        raise _refuse(path, f"at most {MAX_LIST} entries")
    for key, item in value.items():
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            raise _refuse(f"{path}[{key!r}]", "keys must be label-style strings")
        if not isinstance(item, str) or len(item) > 4096:
            raise _refuse(f"{path}.{key}", "values must be strings of at most 4096 characters")


def port_ref(value: Any, path: str, policy: ManifestPolicy) -> None:
    """A port number or a port name."""
    if isinstance(value, str):
        text(_PORT_NAME, most=15)(value, path, policy)
    else:
        number(1, 65535)(value, path, policy)


def int_or_percent(value: Any, path: str, policy: ManifestPolicy) -> None:
    if isinstance(value, str):
        text(re.compile(r"^[0-9]{1,3}%$"))(value, path, policy)
    else:
        number(0, 1000)(value, path, policy)


def amounts(value: Any, path: str, policy: ManifestPolicy) -> None:
    """CPU and memory quantities (checked as the API's inputs are), whole GPUs."""
    if not isinstance(value, dict):
        raise _refuse(path, f"must be a mapping, not {_type_name(value)}")
    for name, amount in value.items():
        at = f"{path}.{name}"
        if name in _GPU_RESOURCES:
            whole = int(amount) if isinstance(amount, str) and amount.isdigit() else amount
            number(0, v.MAX_GPUS)(whole, at, policy)
        elif name == "cpu":
            v.check_cpu(at, _quantity_text(amount, at))
        elif name in {"memory", "ephemeral-storage"}:
            v.check_memory(at, _quantity_text(amount, at))
        else:
            raise _refuse(at, f"{name!r} is not allowed (cpu, memory, ephemeral-storage, GPUs)")


RESOURCES = mapping({"limits": amounts, "requests": amounts})


def dropped(value: Any, path: str, policy: ManifestPolicy) -> None:
    """A field that is accepted and removed (an exported object's ``status``)."""
    del value, path, policy


def _quantity_text(amount: Any, path: str) -> str:
    if isinstance(amount, bool) or not isinstance(amount, (str, int, float)):
        raise _refuse(path, f"must be a quantity, not {_type_name(amount)}")
    return str(amount)


# -- pods ------------------------------------------------------------------------------------


def secret_key_ref(value: Any, path: str, policy: ManifestPolicy) -> None:
    mapping({"name": text(_DNS_NAME), "key": text(most=253), "optional": boolean})(
        value, path, policy
    )
    name = value.get("name")
    if name not in policy.own_secrets:
        raise _refuse(
            f"{path}.name",
            "a manifest may not reference Secrets (only an inference's own, and a manifest "
            "inference has none)",
        )


ENV_VAR = mapping(
    {
        "name": text(_ENV_NAME, most=256),
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
                        "containerName": text(_DNS_LABEL),
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
        raise _refuse(
            f"{path}.add[0]",
            f"adding capabilities ({value['add'][0]!r}) is not allowed; only drop",
        )
    mapping({"drop": listing(text(_CAPABILITY)), "add": listing(text(), most=0)})(
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
        "name": text(_DNS_LABEL),
        "image": text(most=512),
        "imagePullPolicy": one_of("Always", "IfNotPresent", "Never"),
        "command": listing(text(most=32 * 1024), most=256),
        "args": listing(text(most=32 * 1024), most=256),
        "workingDir": text(most=1024),
        "ports": listing(
            mapping(
                {
                    "name": text(_PORT_NAME, most=15),
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
                    "name": text(_DNS_LABEL),
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
        raise _refuse(where, "must be an absolute path without '..'")
    for allowed in policy.weights_dirs:
        if pure == allowed or allowed in pure.parents:
            return
    shown = ", ".join(str(d) for d in policy.weights_dirs) or "none: add a LOCAL model first"
    raise _refuse(
        where,
        f"{str(pure)!r} is outside your organisation's weights directories ({shown})",
    )


def claim(value: Any, path: str, policy: ManifestPolicy) -> None:
    mapping({"claimName": text(_DNS_NAME), "readOnly": boolean}, required=("claimName",))(
        value, path, policy
    )
    if value["claimName"] not in policy.claims:
        raise _refuse(
            f"{path}.claimName", "only the PVCs of your organisation's PVC targets may be mounted"
        )


VOLUME_SOURCES: dict[str, Check] = {
    "emptyDir": mapping({"medium": one_of("", "Memory"), "sizeLimit": text(most=32)}),
    "hostPath": host_path,
    "persistentVolumeClaim": claim,
}


def volume(value: Any, path: str, policy: ManifestPolicy) -> None:
    mapping({"name": text(_DNS_LABEL), **VOLUME_SOURCES}, required=("name",))(value, path, policy)
    sources = [key for key in VOLUME_SOURCES if key in value]
    if len(sources) != 1:
        raise _refuse(path, f"needs exactly one of {', '.join(VOLUME_SOURCES)}")
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
        "runtimeClassName": text(_DNS_NAME),
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
                    raise _refuse(f"{at}.name", f"no volume named {mount['name']!r}")
                if source != "emptyDir" and mount.get("readOnly") is not True:
                    raise _refuse(f"{at}.readOnly", f"a {source} mount must be readOnly: true")


METADATA = mapping(
    {
        "name": text(_DNS_NAME),
        "namespace": text(_DNS_LABEL),
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
        "name": text(_PORT_NAME, most=15),
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
                raise _refuse(
                    f"{path}.{name}",
                    f"{name} is not allowed (MODELPLANE_MANIFEST_ALLOW_EXTERNAL_SERVICES is off)",
                )
        if value.get("type") in {"NodePort", "LoadBalancer"}:
            raise _refuse(
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
        raise _refuse(path, f"each document must be a mapping, not {_type_name(document)}")
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
