"""Live delivery: the event log and everything between an appended event and a subscriber.

``events`` (the Event type, cursors), ``log`` (EventLog: append, read after a cursor, tail),
``ferretdb`` (the head, the ring and the polling tail: the only FerretDB work-arounds),
``broker`` (one tail per process fanned out to subscriptions and listeners: the seam),
``recording`` and ``recovering`` (each document write's event exactly once). Nothing here
calls upward: controllers and services append through :class:`Recorder` and listen through
:meth:`Broker.listen`; GraphQL and the transport consume :class:`Subscription` (and give it a
:class:`Sink`). See docs/architecture.md, "Live delivery".

The names below are the package's public surface, importable from ``live`` itself.
"""

from live.broker import (
    Broker,
    EventFilter,
    Item,
    Listener,
    Marker,
    MarkerKind,
    Sink,
    Subscription,
)
from live.events import (
    API_KEY_REVOKED,
    SERVER_WIDE,
    DuplicateEvent,
    Event,
    EventLogNotCapped,
    EventType,
    InvalidCursor,
    ResourceKind,
    event_key,
    format_cursor,
    parse_cursor,
)
from live.log import DEFAULT_POLL_INTERVAL, EventLog, TailStrategy
from live.recording import Recorder
from live.recovering import EventRecovery

__all__ = [
    "API_KEY_REVOKED",
    "DEFAULT_POLL_INTERVAL",
    "SERVER_WIDE",
    "Broker",
    "DuplicateEvent",
    "Event",
    "EventFilter",
    "EventLog",
    "EventLogNotCapped",
    "EventRecovery",
    "EventType",
    "InvalidCursor",
    "Item",
    "Listener",
    "Marker",
    "MarkerKind",
    "Recorder",
    "ResourceKind",
    "Sink",
    "Subscription",
    "TailStrategy",
    "event_key",
    "format_cursor",
    "parse_cursor",
]
