"""Logging that says which task and peer a line is about.

``with log_context(task_id=..., peer_id=...)`` (or :func:`bind`) sets context
variables that every log record made inside it carries; the formatter prints
them as ``task=<first 12 hex> peer=<id>``. asyncio tasks inherit the context of
their creator, so a download's background tasks log with its IDs too.

``log.format: json`` (``--log-format json``) writes one JSON object a line
instead: ``time``, ``level``, ``logger``, ``message``, then the fields (task and
peer IDs, the trace and span IDs when tracing is on, a ``logger.info(...,
extra={...})``'s fields, ``exception``). In both formats credentials never
reach the log: a URL's user and password, an ``Authorization`` value, and any
credential header field are replaced by ``<redacted>``.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from . import tracing
from .credentials import is_credential, redact

_task: contextvars.ContextVar[str] = contextvars.ContextVar("damselfly_task", default="")
_peer: contextvars.ContextVar[str] = contextvars.ContextVar("damselfly_peer", default="")


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        task, peer = _task.get(), _peer.get()
        parts = []
        if task:
            parts.append(f"task={task[:12]}")
        if peer:
            parts.append(f"peer={peer}")
        record.ctx = (" " + " ".join(parts)) if parts else ""
        return True


FORMAT = "%(asctime)s %(levelname)s %(name)s%(ctx)s: %(message)s"
REDACTED = "<redacted>"
# user:password@ in a URL; the value of an Authorization-like header or a bearer/basic token.
_USERINFO = re.compile(r"(?<=://)[^/\s@]+@")
_AUTH_VALUE = re.compile(
    r"(?i)((?:proxy-)?authorization|cookie|x-registry-auth|x-amz-security-token)(['\"]?\s*[:=]\s*['\"]?)[^'\",}\n]+"
)
_TOKEN = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
# Attributes every LogRecord has: the others come from ``extra=`` and are the line's fields.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "ctx",
    "message",
    "asctime",
}


def scrub(text: str) -> str:
    """``text`` with credentials replaced by ``<redacted>`` (cheap when there are none)."""
    lowered = text.lower()
    if "@" in text:
        text = _USERINFO.sub(REDACTED + "@", text)
    if any(word in lowered for word in ("authorization", "cookie", "x-registry-auth", "security-token")):
        text = _AUTH_VALUE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    if "bearer" in lowered or "basic" in lowered:
        text = _TOKEN.sub(lambda m: m.group(1) + " " + REDACTED, text)
    return text


def _field(key: str, value: Any) -> Any:
    if is_credential(key):
        return REDACTED
    if isinstance(value, Mapping):
        return {str(k): _field(str(k), v) for k, v in redact({str(k): v for k, v in value.items()}).items()}
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_field("", v) for v in value]
    return scrub(str(value))


class TextFormatter(logging.Formatter):
    """:data:`FORMAT`, credentials scrubbed."""

    def __init__(self) -> None:
        super().__init__(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class JSONFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, RFC 3339), level, logger, message, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        task, peer = _task.get(), _peer.get()
        if task:
            out["task_id"] = task
        if peer:
            out["peer_id"] = peer
        if tracing.enabled():
            out.update(tracing.current_ids())
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_") and key not in out:
                out[key] = _field(key, value)
        if record.exc_info:
            out["exception"] = scrub(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exception"] = scrub(record.exc_text)
        if record.stack_info:
            out["stack"] = scrub(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(level: str | int = "INFO", file: str | Path | None = None, *, fmt: str = "text") -> None:
    """Configure the root logger once: to ``file`` when given, else stderr; ``fmt`` "text" or "json"."""
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r}: use text or json")
    handler: logging.Handler
    if file:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def bind(*, task_id: str | None = None, peer_id: str | None = None) -> None:
    """Set the IDs for the current context (an asyncio task and what it spawns)."""
    if task_id is not None:
        _task.set(task_id)
    if peer_id is not None:
        _peer.set(peer_id)


@contextlib.contextmanager
def log_context(*, task_id: str | None = None, peer_id: str | None = None) -> Iterator[None]:
    tokens = []
    if task_id is not None:
        tokens.append((_task, _task.set(task_id)))
    if peer_id is not None:
        tokens.append((_peer, _peer.set(peer_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
