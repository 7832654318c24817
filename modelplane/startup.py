"""The one error the composition root raises when the service cannot start.

Its own module so that every builder of the object graph (:mod:`modelplane.graph`, the runtime
builders in :mod:`modelplane.runtimes`) can raise it without importing each other."""

from __future__ import annotations


class StartupError(Exception):
    """The service cannot start; the message is one line naming the setting at fault."""
