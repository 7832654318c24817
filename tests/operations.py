"""The named operations in graphql/operations, with the fragments they use, for tests."""

from __future__ import annotations

import re
from pathlib import Path

OPERATIONS_DIR = Path(__file__).resolve().parent.parent / "graphql" / "operations"
FRAGMENTS_DIR = OPERATIONS_DIR / "fragments"
_SPREAD = re.compile(r"\.\.\.\s*([A-Za-z_][A-Za-z0-9_]*)")


def _with_fragments(text: str) -> str:
    included: dict[str, str] = {}
    pending = set(_SPREAD.findall(text))
    while pending:
        name = pending.pop()
        path = FRAGMENTS_DIR / f"{name}.graphql"
        if name in included or not path.exists():
            continue
        included[name] = path.read_text()
        pending.update(_SPREAD.findall(included[name]))
    return "\n".join([text, *included.values()])


def operation(name: str) -> str:
    """The text of ``graphql/operations/<name>.graphql`` plus the fragments it spreads."""
    return _with_fragments((OPERATIONS_DIR / f"{name}.graphql").read_text())


def all_operations() -> dict[str, str]:
    """Every committed operation by name, fragments included."""
    return {path.stem: operation(path.stem) for path in sorted(OPERATIONS_DIR.glob("*.graphql"))}
