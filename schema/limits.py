"""Limits on what one GraphQL operation may ask of the server, checked before it runs.

Why: parsing, validating and executing happen on the event loop, and graphql-core's cost is
linear in what the client sends. An anonymous 1.7 MiB document blocked the loop for 5 to 8 s
and, because the parse and validation caches kept every distinct document, about 222 MiB
stayed behind; 1,000 aliases of ``gpuFit`` from a viewer blocked it for 20 s. Each limit here
is a setting (``MODELPLANE_GRAPHQL_*``) with a safe default, and a refusal is a GraphQL error
that names the limit's setting (``extensions.code`` is ``LIMIT_EXCEEDED``), on HTTP and on
WebSocket ``subscribe`` messages alike: both go through the schema (``schema/building.py``),
which calls :meth:`DocumentGate.admit` before strawberry parses anything.

In order, for each operation:

1. the document's size in UTF-8 bytes, before it is lexed (``graphql_max_document_bytes``);
2. the document's tokens, counted by graphql-core's parser, which stops at the limit
   (``graphql_max_tokens``); measured: a parsed document keeps 270 to 560 bytes per token,
   50 to 280 times its source;
3. the text is valid Unicode: a lone UTF-16 surrogate (``"\\ud800"`` in a JSON string) in the
   document or a variable is refused naming the variable and its path, instead of failing
   later where the string is encoded (MongoDB, a log line) as an "Unexpected error.";
4. per operation, with fragments expanded: fields, aliases and directives
   (``graphql_max_fields``, ``graphql_max_aliases``, ``graphql_max_directives``) and the
   cost (``graphql_max_cost``; see below). These run as one validation rule.

Cost: each field selection costs its field's weight plus, for a page (a field with a
``limit`` argument), ``limit`` times what its selection costs (a ``limit`` given by a variable
counts as :data:`ASSUMED_PAGE_SIZE`). Weights: a field's ``cost`` metadata (:func:`cost`, set
on the expensive resolvers: hub look-ups, cluster reads, logs, the GPU fit), else
:data:`ROOT_WEIGHTS` for a mutation or subscription, else 1 for a field with a resolver and 0
for a plain attribute.

The parse and validation results are kept per document text in a cache bounded by estimated
bytes (tokens times :data:`BYTES_PER_TOKEN`), not by count: strawberry's ``ParserCache`` and
``ValidationCache`` count entries, and 512 documents at the token limit would hold gigabytes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from graphql.language.parser import Parser

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
    get_named_type,
)

COST_METADATA = "cost"
ASSUMED_PAGE_SIZE = 100
"""What a page's ``limit`` given by a variable counts as (the largest page the API serves)."""
ROOT_WEIGHTS = {OperationType.MUTATION: 10, OperationType.SUBSCRIPTION: 10}
"""Weight of a mutation or subscription field without its own ``cost``."""
BYTES_PER_TOKEN = 600
"""Memory a cached document is assumed to keep per token (measured 270 to 560 bytes with its
locations and validation result; see the module docstring)."""
LIMIT_CODE = "LIMIT_EXCEEDED"


def cost(weight: int) -> dict[str, int]:
    """Field metadata giving a field its cost weight: ``strawberry.field(metadata=cost(50))``."""
    return {COST_METADATA: weight}


@dataclass(frozen=True)
class GraphQLLimits:
    """What one operation may ask for; the settings' ``graphql_*`` values (see settings.py)."""

    max_document_bytes: int = 64 * 1024
    max_tokens: int = 5_000
    max_fields: int = 500
    max_aliases: int = 30
    max_directives: int = 50
    max_cost: int = 1_000
    cache_bytes: int = 32 * 1024 * 1024


def limit_error(message: str, setting: str, **extra: object) -> GraphQLError:
    """A refusal naming the setting (``MODELPLANE_GRAPHQL_…``) whose limit was reached."""
    name = f"MODELPLANE_{setting.upper()}"
    return GraphQLError(
        f"{message} (limit: {name})",
        extensions={"code": LIMIT_CODE, "limit": name, **extra},
    )


@dataclass
class _Entry:
    document: DocumentNode
    weight: int
    errors: list[GraphQLError] | None = None
    """Validation errors, once validated (the same rules every time, so valid for the text)."""


class DocumentCache:
    """Parsed documents and their validation errors by document text: least recently used
    first out, bounded by the estimated bytes the entries keep."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, text: str) -> _Entry | None:
        entry = self._entries.get(text)
        if entry is not None:
            self._entries.move_to_end(text)
        return entry

    def put(self, text: str, entry: _Entry) -> None:
        """Keep ``entry`` unless it alone would take more than a quarter of the budget."""
        if entry.weight > self.max_bytes // 4 or text in self._entries:
            return
        self._entries[text] = entry
        self.bytes += entry.weight
        while self.bytes > self.max_bytes:
            _, oldest = self._entries.popitem(last=False)
            self.bytes -= oldest.weight


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone UTF-16 surrogate in ``text`` (not valid Unicode), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _surrogate_path(value: object, path: str) -> str | None:
    """The path of the first string (or key) in a JSON value holding a lone surrogate."""
    pending: list[tuple[object, str]] = [(value, path)]
    while pending:
        item, where = pending.pop()
        if isinstance(item, str):
            if lone_surrogate(item) is not None:
                return where
        elif isinstance(item, Mapping):
            for key, child in item.items():
                if isinstance(key, str) and lone_surrogate(key) is not None:
                    return where
                pending.append((child, f"{where}.{key}"))
        elif isinstance(item, list | tuple):
            pending.extend((child, f"{where}.{index}") for index, child in enumerate(item))
    return None


class DocumentGate:
    """Admits an operation's text and variables and parses the document (cached), or says
    which limit refuses it. One per schema."""

    def __init__(self, limits: GraphQLLimits) -> None:
        self.limits = limits
        self.cache = DocumentCache(limits.cache_bytes)

    def admit(self, query: str, variables: Mapping[str, Any] | None) -> _Entry | GraphQLError:
        """The parsed document of ``query`` (from the cache when seen before), or the error
        refusing it: a limit, invalid Unicode or a syntax error."""
        refusal = self._check_text(query) or _check_variables(variables)
        if refusal is not None:
            return refusal
        entry = self.cache.get(query)
        if entry is not None:
            return entry
        parser = Parser(query, max_tokens=self.limits.max_tokens)
        try:
            document = parser.parse_document()
        except RecursionError:
            return GraphQLError("Syntax Error: the document is nested too deeply.")
        except GraphQLError as error:
            if parser.token_count > self.limits.max_tokens:
                return limit_error(
                    f"The document has more than {self.limits.max_tokens} tokens",
                    "graphql_max_tokens",
                )
            return error
        entry = _Entry(document, len(query) + parser.token_count * BYTES_PER_TOKEN)
        self.cache.put(query, entry)
        return entry

    def _check_text(self, query: str) -> GraphQLError | None:
        limit = self.limits.max_document_bytes
        size = len(query) if query.isascii() else len(query.encode("utf-8", "surrogatepass"))
        if size > limit:
            return limit_error(
                f"The document is {size} bytes, more than {limit}", "graphql_max_document_bytes"
            )
        index = lone_surrogate(query)
        if index is not None:
            line = query.count("\n", 0, index) + 1
            column = index - (query.rfind("\n", 0, index) + 1) + 1
            return GraphQLError(
                f"The document is not valid Unicode: a lone UTF-16 surrogate at line {line}, "
                f"column {column}.",
                extensions={"code": "BAD_USER_INPUT"},
            )
        return None


def _check_variables(variables: Mapping[str, Any] | None) -> GraphQLError | None:
    if not variables:
        return None
    for name, value in variables.items():
        where = _surrogate_path(value, name)
        if where is not None:
            return GraphQLError(
                f"Variable `${name}` is not valid Unicode: a lone UTF-16 surrogate in `{where}`.",
                extensions={"code": "BAD_USER_INPUT", "field": where},
            )
    return None


@dataclass
class _Tally:
    """What a selection set asks for, its fragments expanded."""

    fields: int = 0
    aliases: int = 0
    directives: int = 0
    cost: int = 0

    def add(self, other: _Tally, *, times: int = 1) -> None:
        self.fields += other.fields
        self.aliases += other.aliases
        self.directives += other.directives
        self.cost += other.cost * times


def field_weights(schema: GraphQLSchema) -> dict[tuple[str, str], int]:
    """The cost weight of every field of the schema's object types, by (type, field)."""
    roots = {
        OperationType.MUTATION: schema.mutation_type,
        OperationType.SUBSCRIPTION: schema.subscription_type,
    }
    weights: dict[tuple[str, str], int] = {}
    for named in schema.type_map.values():
        if not isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
            continue
        root = next((kind for kind, root in roots.items() if root is named), None)
        for name, field in named.fields.items():
            weights[named.name, name] = _weight(field, ROOT_WEIGHTS.get(root) if root else None)
    return weights


def _weight(field: GraphQLField, root_weight: int | None) -> int:
    definition = field.extensions.get("strawberry-definition")
    metadata = getattr(definition, "metadata", None) or {}
    if COST_METADATA in metadata:
        return int(metadata[COST_METADATA])
    if root_weight is not None:
        return root_weight
    return 1 if getattr(definition, "base_resolver", None) is not None else 0


class _Counter:
    """Tallies the operations of one document against one schema (fragments once each)."""

    def __init__(self, context: ValidationContext, weights: Mapping[tuple[str, str], int]) -> None:
        self._schema = context.schema
        self._weights = weights
        self._fragments = {
            definition.name.value: definition
            for definition in context.document.definitions
            if isinstance(definition, FragmentDefinitionNode)
        }
        self._done: dict[str, _Tally] = {}

    def operation(self, operation: OperationDefinitionNode) -> _Tally:
        tally = _Tally(directives=len(operation.directives or ()))
        root = self._schema.get_root_type(operation.operation)
        if root is not None:
            tally.add(self._selections(operation.selection_set, root))
        return tally

    def _selections(self, selection_set: SelectionSetNode | None, parent: Any) -> _Tally:
        tally = _Tally()
        for selection in selection_set.selections if selection_set else ():
            tally.directives += len(selection.directives or ())
            if isinstance(selection, FieldNode):
                tally.add(self._field(selection, parent))
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                inner = self._schema.get_type(condition.name.value) if condition else parent
                tally.add(self._selections(selection.selection_set, inner))
            elif isinstance(selection, FragmentSpreadNode):
                tally.add(self._fragment(selection.name.value))
        return tally

    def _field(self, node: FieldNode, parent: GraphQLNamedType | None) -> _Tally:
        tally = _Tally(fields=1, aliases=1 if node.alias else 0)
        fields = getattr(parent, "fields", None)
        field = fields.get(node.name.value) if isinstance(fields, dict) else None
        if field is None or parent is None:  # __typename, or unknown (another rule reports it)
            return tally
        tally.cost = self._weights.get((parent.name, node.name.value), 0)
        inner = self._selections(node.selection_set, get_named_type(field.type))
        tally.add(inner, times=_page_size(node, field))
        return tally

    def _fragment(self, name: str) -> _Tally:
        found = self._done.get(name)
        if found is not None:
            return found
        self._done[name] = _Tally()  # a cycle counts once (NoFragmentCycles reports it)
        definition = self._fragments.get(name)
        tally = _Tally()
        if definition is not None:
            tally.directives = len(definition.directives or ())
            inner = self._schema.get_type(definition.type_condition.name.value)
            tally.add(self._selections(definition.selection_set, inner))
        self._done[name] = tally
        return tally


def _page_size(node: FieldNode, field: GraphQLField) -> int:
    """How many times a field's selection runs: its ``limit`` (literal, else the default, else
    :data:`ASSUMED_PAGE_SIZE` for a variable); 1 for a field that is not a page."""
    declared = field.args.get("limit")
    if declared is None:
        return 1
    for argument in node.arguments or ():
        if argument.name.value == "limit":
            if isinstance(argument.value, IntValueNode):
                return max(int(argument.value.value), 0)
            return ASSUMED_PAGE_SIZE
    default = declared.default_value
    return default if isinstance(default, int) else ASSUMED_PAGE_SIZE


def operation_limits_rule(
    limits: GraphQLLimits, weights: Mapping[tuple[str, str], int]
) -> type[ValidationRule]:
    """The validation rule refusing an operation over a fields, aliases, directives or cost
    limit; ``weights`` are the schema's :func:`field_weights`."""

    class OperationLimits(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            counter = _Counter(context, weights)
            for definition in context.document.definitions:
                if isinstance(definition, OperationDefinitionNode):
                    for error in _refusals(counter.operation(definition), limits):
                        context.report_error(error)

    return OperationLimits


def _refusals(tally: _Tally, limits: GraphQLLimits) -> Iterator[GraphQLError]:
    checks = (
        ("fields", tally.fields, limits.max_fields, "graphql_max_fields"),
        ("aliases", tally.aliases, limits.max_aliases, "graphql_max_aliases"),
        ("directives", tally.directives, limits.max_directives, "graphql_max_directives"),
    )
    for what, count, limit, setting in checks:
        if count > limit:
            yield limit_error(f"The operation has {count} {what}, more than {limit}", setting)
    if tally.cost > limits.max_cost:
        yield limit_error(
            f"The operation costs {tally.cost}, more than {limits.max_cost} (expensive fields "
            f"such as gpuFit, clusterStatus and the hub look-ups cost more; pages cost their "
            f"`limit` times their selection)",
            "graphql_max_cost",
            cost=tally.cost,
        )
