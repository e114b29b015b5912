"""Structured logs: one JSON object per line on stderr.

Where it sits: `cli.py` calls `configure_logging` once at start-up; every other
module logs through the standard `logging` API and passes structured fields
with `event(...)`. Uvicorn's and MLflow's loggers are routed through the same
handler so a pod's log stream stays machine-readable line by line.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line: ts, level, logger, event, identity, fields."""

    def __init__(self, static: dict[str, str] | None = None) -> None:
        super().__init__()
        # The model identity goes on every line so logs from both arms of an
        # experiment can be told apart without parsing the pod name.
        self._static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        doc.update(self._static)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        # default=str: a stray non-JSON value in a field must never lose the line.
        return orjson.dumps(doc, default=str).decode()


def configure_logging(level: str = "info", static: dict[str, str] | None = None) -> None:
    """Send every logger (ours, uvicorn's, MLflow's, warnings) to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(static))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Uvicorn and MLflow may have installed their own plain-text handlers;
    # let their records propagate to ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "mlflow"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.captureWarnings(True)


def event(logger: logging.Logger, level: int, message: str, exc_info: bool = False, **fields: Any) -> None:
    """Log one event with structured fields (rendered as top-level JSON keys)."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"fields": fields}, exc_info=exc_info)
