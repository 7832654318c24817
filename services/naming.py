"""What an inference's Deployment and Service are called: the model's name.

The organisation API named a model's Deployment and Service after the model
(``deployment_name: llama-7b``, ``endpoint_url: http://llama-7b.<ns>.svc.cluster.local:8000``),
and AIBrix's gateway finds a model by its Service; modelplane named them ``inf-<id>``. A new
inference is now named after its model: a DNS-1035 label (Services need a leading letter: a
model called ``7b-chat`` gets ``m-7b-chat``), at most 63 characters. Model names are unique in an
organisation, but several organisations share the namespace, and the namespace may hold objects
of others (the chart's own Service); when the name is taken -- by another live inference's
document, or by a Deployment or Service in the namespace that is not this inference's -- the
inference id's random part is appended (``llama-7b-x7k2p``): stable for the inference's life,
and unique since ids are. Two starts racing for the same free name in two organisations can
still both take it (no unique index on names); the second apply would then take over the
first's objects, a window of one request.

Identity is the ``modelplane.io/owner-id`` label, never the name: the executor, the status,
the log reader and the clean-up find objects by the name stored in the document and by labels.
An inference created before this change keeps its stored ``inf-<id>`` name for its whole life,
so upgrading needs nothing: running workloads are found, observed and removed as before, and
only the next new inference of a model takes the model's name.
"""

from __future__ import annotations

import re

from controllers.inference.workloads import InferenceRuntime
from storage.repositories import InferenceRepository

MAX_NAME = 63
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def base_name(model_name: str) -> str:
    """The model's name as a DNS-1035 label (lowercase, a leading letter, <= 63)."""
    name = _NOT_DNS.sub("-", model_name.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"m-{name}".rstrip("-")
    return name[:MAX_NAME].rstrip("-")


def suffixed(base: str, inference_id: str) -> str:
    """``base`` with the inference id's random part appended, within 63 characters."""
    suffix = "-" + _NOT_DNS.sub("-", inference_id.lower().rsplit("-", 1)[-1]).strip("-")
    return base[: MAX_NAME - len(suffix)].rstrip("-") + suffix


async def workload_name(
    inferences: InferenceRepository, runtime: InferenceRuntime, model_name: str, inference_id: str
) -> str:
    """A new inference's name: the model's, suffixed when another live inference's document or
    an object of the runtime that is not this inference's holds it."""
    base = base_name(model_name)
    clash = await inferences.name_holder(base)
    if (clash is None or clash.id == inference_id) and not await runtime.name_taken(
        base, inference_id
    ):
        return base
    return suffixed(base, inference_id)
