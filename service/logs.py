"""Logging of every process: one event per line, JSON or text (`VTW_LOG_FORMAT`, by default text
on a terminal and JSON otherwise), uvicorn's access and error logs through the same handler.

Context rides along as fields: `watch_id`, `tenant`, `attempt` on the lines of a poll or a
delivery (`extra=watch_fields(...)`), `request_id` on every line logged while an API request is
served (a `500`'s traceback and access lines included: `middleware.RequestIds`). Nothing logs a
key, a secret or a URL's query string.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
FIELDS = ("watch_id", "tenant", "attempt", "request_id")
FORMATS = ("json", "text")
LEVELS = ("debug", "info", "warning", "error")


def watch_fields(doc: Mapping[str, Any], attempt: int | None = None) -> dict[str, Any]:
    """The `extra=` of a line about one watch."""
    fields: dict[str, Any] = {"watch_id": doc["id"], "tenant": doc["tenant"]}
    if attempt is not None:
        fields["attempt"] = attempt
    return fields


class _Context(logging.Filter):
    """Puts the request id of the request being served (if any) on the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                event[name] = value
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{name}={getattr(record, name)}"
            for name in FIELDS
            if getattr(record, name, None) is not None
        )
        return f"{line} [{context}]" if context else line


def default_format() -> str:
    return "text" if sys.stderr.isatty() else "json"


def configure(level: str, fmt: str | None = None) -> None:
    """One handler on the root logger for everything, uvicorn's loggers included."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if (fmt or default_format()) == "json" else TextFormatter()
    )
    handler.addFilter(_Context())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True
