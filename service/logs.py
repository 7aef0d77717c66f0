"""The service's logs: the request id of the request being served, text or JSON lines, and the
logging configuration ``fcn-serve`` hands to uvicorn.

Every line logged while a request is served carries its id: the middleware sets
``REQUEST_ID`` and ``RequestIdFilter`` copies it onto each record the service's handlers emit.
"""

from __future__ import annotations

import datetime
import json
import logging
from contextvars import ContextVar
from typing import Any, Literal

LogFormat = Literal["text", "json"]
# The id of the request this code serves; None outside requests (start-up, the batcher).
REQUEST_ID: ContextVar[str | None] = ContextVar("fcn_request_id", default=None)
# The service's loggers: ``fcn.service`` (its own lines) and ``fcn.access`` (one per request).
SERVICE_LOGGER = "fcn"
ACCESS_LOGGER = "fcn.access"
# Set by the access log on its records, written as fields of their own in JSON.
ACCESS_FIELDS = ("method", "path", "query", "status", "duration_ms", "client")
HANDLER_NAME = "fcn-default"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (None outside a request) to every record, so formatters can show it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """uvicorn's ``INFO:     message`` lines (no colours), with `` request_id=...`` in a request."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"{record.levelname}:".ljust(9)
        line = f"{prefix} {record.getMessage()}"
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            line += f" request_id={request_id}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, request_id, the access
    fields on access lines, and the traceback as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or REQUEST_ID.get(),
        }
        for field in ACCESS_FIELDS:
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # A newline inside a value is escaped: one record, one line, whatever it says.
        return json.dumps(entry, ensure_ascii=False, default=str)


FORMATTERS: dict[LogFormat, type[logging.Formatter]] = {
    "text": TextFormatter,
    "json": JsonFormatter,
}


def logging_config(log_format: LogFormat, level: str) -> dict[str, Any]:
    """uvicorn's ``log_config`` (a ``logging.config.dictConfig`` dict): its lines and the
    service's in ``log_format`` with request ids; access lines on stdout, the rest on stderr,
    as uvicorn does."""
    formatter = f"{FORMATTERS[log_format].__module__}.{FORMATTERS[log_format].__qualname__}"
    handler = {"class": "logging.StreamHandler", "formatter": "fcn", "filters": ["request_id"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "formatters": {"fcn": {"()": formatter}},
        "handlers": {
            HANDLER_NAME: {**handler, "stream": "ext://sys.stderr"},
            "fcn-access": {**handler, "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": [HANDLER_NAME], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            # fcn-serve turns uvicorn's access log off: the service writes its own (below).
            "uvicorn.access": {"handlers": ["fcn-access"], "propagate": False},
            SERVICE_LOGGER: {
                "handlers": [HANDLER_NAME],
                "level": level.upper(),
                "propagate": False,
            },
            ACCESS_LOGGER: {"handlers": ["fcn-access"], "propagate": False},
        },
    }


def install(log_format: LogFormat, level: str) -> None:
    """Show the service's lines at ``level`` in ``log_format``, also when nothing else
    configured logging (an app under uvicorn's own command line, or embedded)."""
    service = logging.getLogger(SERVICE_LOGGER)
    service.setLevel(level.upper())
    ours: list[logging.Handler] = [h for h in service.handlers if h.name == HANDLER_NAME]
    if not ours and (service.handlers or logging.getLogger().handlers):
        return  # someone configured logging (the embedder, pytest): theirs rules
    if not ours:
        handler = logging.StreamHandler()
        handler.name = HANDLER_NAME
        handler.addFilter(RequestIdFilter())
        service.addHandler(handler)
        ours = [handler]
    for existing in ours:  # fcn-serve's (logging_config), or one an earlier app added
        existing.setFormatter(FORMATTERS[log_format]())
