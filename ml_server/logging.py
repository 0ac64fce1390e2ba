"""JSON log lines: one per request (written by the middleware) plus server events (those
logged while serving a request carry its ``request_id``, from ``ml_server.context``)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any

import orjson

from ml_server.context import current

ACCESS_LOGGER = "ml_server.access"


_second: list[Any] = [-1, ""]  # the last whole second formatted, and its text


def _timestamp(created: float) -> str:
    """``2025-01-31T12:00:00.123Z``; the part up to the seconds is formatted once per second."""
    second = int(created)
    if second != _second[0]:
        _second[0], _second[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{int((created - second) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = current()  # a line logged while serving a request names it
        if ctx is not None and ctx.request_id:
            entry["request_id"] = ctx.request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class AccessLog:
    """The per-request line, written cheaply: one orjson dump and one ``write`` to stdout.

    Same line as ``logging.getLogger(ACCESS_LOGGER).info("request", extra={"fields": ...})`` would
    give through ``JsonFormatter``, without the logging module's per-record cost (LogRecord,
    caller lookup, handler locks). Until ``configure_logging`` installed the JSON handler (e.g.
    an app built in-process), lines go through the logging module as before.
    """

    def __init__(self) -> None:
        self._logger = logging.getLogger(ACCESS_LOGGER)
        self.fd: int | None = None

    def write(self, fields: dict[str, Any]) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        if self.fd is None:
            self._logger.info("request", extra={"fields": fields})
            return
        entry = {
            "ts": _timestamp(time.time()),
            "level": "info",
            "logger": ACCESS_LOGGER,
            "msg": "request",
            **fields,
        }
        line = orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE)
        with contextlib.suppress(OSError):  # a closed stdout must not fail requests
            os.write(self.fd, line)


access_log = AccessLog()


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own access log would duplicate ours.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # No thread/process names or asyncio task names in our records: skip collecting them.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    sys.stdout.flush()
    access_log.fd = sys.stdout.fileno()
