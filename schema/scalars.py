"""Custom scalars, registered through ``StrawberryConfig.scalar_map`` in the schema build."""

from __future__ import annotations

from typing import NewType

import strawberry
from strawberry.types.scalar import ScalarDefinition

BigInt = NewType("BigInt", int)
"""A whole number that may exceed GraphQL's 32-bit Int (byte and parameter counts)."""

BIG_INT_DEFINITION: ScalarDefinition = strawberry.scalar(
    name="BigInt",
    description=(
        "A whole number that may exceed 32 bits (byte counts, parameter counts); "
        "serialised as a JSON number."
    ),
    serialize=int,
    parse_value=int,
)

SCALAR_MAP: dict[object, ScalarDefinition] = {BigInt: BIG_INT_DEFINITION}


def big(value: int | None) -> BigInt | None:
    """Mark an optional count as a BigInt."""
    return None if value is None else BigInt(value)
