"""The named operations in graphql/operations, loaded for tests."""

from __future__ import annotations

from pathlib import Path

OPERATIONS_DIR = Path(__file__).resolve().parent.parent / "graphql" / "operations"


def operation(name: str) -> str:
    """The text of ``graphql/operations/<name>.graphql``."""
    return (OPERATIONS_DIR / f"{name}.graphql").read_text()


def all_operations() -> dict[str, str]:
    """Every committed operation by name."""
    return {path.stem: path.read_text() for path in sorted(OPERATIONS_DIR.glob("*.graphql"))}
