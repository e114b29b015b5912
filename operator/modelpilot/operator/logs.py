"""Log lines about one resource: ``[namespace/name] message``, the form kopf's per-object logger writes.

kopf hands its handlers a logger that names the object; the operator's own lines — written by the ticker's
periodic runs, the reconcilers and their helpers, where kopf's logger is not at hand — name it the same way
through ``about``. Lines about the process as a whole (start-up, stopping, a Gateway's mirror form cached for
every route) stay on the plain module loggers.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any


class ObjectLog(logging.LoggerAdapter[logging.Logger]):
    """A module's logger for one resource: each message is prefixed ``[namespace/name]``, and each record
    carries the resource as ``record.resource`` (for a structured handler)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        resource = (self.extra or {})["resource"]
        kwargs["extra"] = {**(kwargs.get("extra") or {}), "resource": resource}
        return f"[{resource}] {msg}", kwargs


def about(logger: logging.Logger, namespace: str, name: str) -> ObjectLog:
    """``logger``'s lines about the resource ``namespace/name``. Made where a line is written (cheap, and
    nothing is made on a path that logs nothing)."""
    return ObjectLog(logger, {"resource": f"{namespace}/{name}"})
