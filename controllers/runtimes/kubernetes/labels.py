"""Labels and the field manager carried by every Kubernetes object modelplane writes.

docs/architecture.md decision 2: ``app.kubernetes.io/managed-by: modelplane`` plus the owning
resource's id, so objects can be found by label, and "ours but no document" can be told apart
("unmanaged"). One field manager for all server-side applies.
"""

from __future__ import annotations

FIELD_MANAGER = "modelplane"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "modelplane"
OWNER_ID = "modelplane.io/owner-id"
ORGANIZATION_ID = "modelplane.io/organization-id"
COMPONENT = "app.kubernetes.io/component"


def owned_labels(owner_id: str, organization_id: str, *, component: str) -> dict[str, str]:
    """Labels for an object owned by ``owner_id`` (a model or inference id)."""
    return {
        MANAGED_BY: MANAGED_BY_VALUE,
        OWNER_ID: owner_id,
        ORGANIZATION_ID: organization_id,
        COMPONENT: component,
    }


def owner_selector(owner_id: str) -> str:
    """Label selector for everything owned by ``owner_id``."""
    return f"{MANAGED_BY}={MANAGED_BY_VALUE},{OWNER_ID}={owner_id}"
