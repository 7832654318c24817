"""Reading a user's manifest YAML safely and in bounded time (:func:`parse_documents`).

YAML anchors and aliases are refused (a 636-byte "billion laughs" document expanded to 10^8
nodes and blocked the server for 14 s; the byte cap cannot see it), and the composed document
is bounded in nodes and depth, so the work is linear in the input's size. What the documents
may say is :mod:`services.manifests`' allow-list."""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from yaml.nodes import Node
from yaml.resolver import Resolver

from services.errors import InvalidInput

MAX_DOCUMENTS = 8
MAX_NODES = 5_000
MAX_DEPTH = 40


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
