"""Live delivery: the event log and everything between an appended event and a subscriber.

``events`` (the Event type, cursors), ``log`` (EventLog: append, read after a cursor, tail),
``ferretdb`` (the head, the ring and the polling tail: the only FerretDB work-arounds),
``broker`` (one tail per process fanned out to subscriptions and listeners: the seam),
``recording`` and ``recovering`` (each document write's event exactly once). Nothing here
calls upward: GraphQL and the transport consume :class:`~live.broker.Subscription`.
See docs/architecture.md, "Live delivery".
"""
