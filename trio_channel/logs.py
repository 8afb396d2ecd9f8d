"""Logging: one format for every line, text or JSON, and the access lines.

Every record is one line. Text (the default)::

    2026-01-01T12:00:00.000Z INFO trio_channel.access: connection closed
      client_id=me code=1000 duration_s=2.500

(one line, folded here)

JSON (``log_format = "json"``): one object per line with ``ts``, ``level``,
``logger``, ``msg`` and the record's fields (``client_id``, ``status``...).

Fields are passed as ``extra={"fields": {...}}``; in text they follow the
message as ``key=value``, a value quoted (JSON string escapes) when it holds
anything but ``[A-Za-z0-9._:/@+-]``, so a client-chosen ``client_id`` can
never break a line or forge a field.

The access lines (logger ``trio_channel.access``, level ``info``) are made
only by the ``log_*`` functions below, so their wording and fields live in
one place; the server calls them where connections open and close, where a
handshake is refused, and after every plain HTTP request. A request's query
is never logged (it may hold a token).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, Final, TextIO

__all__ = [
    "ACCESS_LOGGER",
    "STARTUP_LOGGER",
    "log_connection_closed",
    "log_connection_opened",
    "log_handshake_refused",
    "log_http_request",
    "log_listening",
    "setup_logging",
]

ACCESS_LOGGER: Final = "trio_channel.access"
#: Start-up lines are written at any ``log_level``: scripts wait for them.
STARTUP_LOGGER: Final = "trio_channel.startup"

_access = logging.getLogger(ACCESS_LOGGER)
_startup = logging.getLogger(STARTUP_LOGGER)

_SAFE_VALUE = re.compile(r"[A-Za-z0-9._:/@+\-]+")


def _value_text(value: object) -> str:
    if isinstance(value, float):
        text = f"{value:.3f}"
    elif value is None:
        text = "-"
    else:
        text = str(value)
    return text if _SAFE_VALUE.fullmatch(text) else json.dumps(text)


def _utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _fields(record: logging.LogRecord) -> Mapping[str, object]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message key=value ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_utc(record.created), record.levelname, f"{record.name}:"]
        parts.append(" ".join(record.getMessage().split()))
        if not getattr(record, "fields_in_msg", False):
            parts.extend(f"{k}={_value_text(v)}" for k, v in _fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            # A traceback is the one thing that spans lines (debugging aid).
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def setup_logging(
    level: str = "info", log_format: str = "text", stream: TextIO | None = None
) -> None:
    """Send every ``trio_channel`` record at *level* or above to *stream*.

    Replaces the handlers of the root logger (it is the daemon's process).
    Start-up lines (:data:`STARTUP_LOGGER`) are written whatever the level.
    """
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    _startup.setLevel(logging.INFO)
    # coredis says at INFO each time it loads a script into a fresh Redis.
    logging.getLogger("coredis").setLevel(max(logging.WARNING, root.level))


def _peer_text(peer: object) -> str:
    host = getattr(peer, "host", None)
    if host is None:
        return str(peer) if peer else "-"
    port = getattr(peer, "port", None)
    return f"{host}:{port}" if port else str(host)


def log_connection_opened(client_id: str, peer: object) -> None:
    """A WebSocket connection was accepted (after ``101``)."""
    _access.info(
        "connection opened",
        extra={"fields": {"client_id": client_id, "peer": _peer_text(peer)}},
    )


def log_connection_closed(
    client_id: str, code: int | None, duration_s: float, peer: object = None
) -> None:
    """A WebSocket connection ended; ``code`` None when no close frame was seen."""
    fields: dict[str, object] = {"client_id": client_id, "code": code}
    fields["duration_s"] = round(duration_s, 3)
    if peer is not None:
        fields["peer"] = _peer_text(peer)
    _access.info("connection closed", extra={"fields": fields})


def log_handshake_refused(status: int, peer: object, reason: str) -> None:
    """An upgrade was answered with an HTTP error instead of ``101``."""
    _access.info(
        "handshake refused",
        extra={
            "fields": {
                "status": status,
                "peer": _peer_text(peer),
                "reason": " ".join(reason.split())[:200],
            }
        },
    )


def log_http_request(method: str, path: str, status: int, peer: object) -> None:
    """A plain HTTP request was answered. ``path`` must not hold the query."""
    _access.info(
        "http request",
        extra={
            "fields": {
                "method": method,
                "path": path.split("?", 1)[0][:512],
                "status": status,
                "peer": _peer_text(peer),
            }
        },
    )


def log_listening(url: str, **summary: object) -> None:
    """The start-up line: ``listening on URL key=value ...``.

    Scripts find the WebSocket URL as the word after ``listening on``, in
    both formats: the message itself holds the ``key=value`` text (JSON
    lines have the same values as fields too).
    """
    text = " ".join(f"{k}={_value_text(v)}" for k, v in summary.items())
    _startup.info(
        f"listening on {url} {text}".rstrip(),
        extra={"fields": {"ws_url": url, **summary}, "fields_in_msg": True},
    )
