"""Structured logging: one JSON object per line, with the request id that follows a request.

The request id lives in a context variable. The gateway sets it per HTTP request, the gRPC
interceptor per call (from ``x-request-id`` metadata), and the messaging consumer per event (from the
envelope), so a request can be followed across HTTP, gRPC and AMQP.

With tracing on (``tracing``), each line also carries the current span's ``trace_id`` and
``span_id``, so a line leads to its trace and a trace to its lines.

Log calls must never carry a token, key, ``Authorization`` header, subject or body. As a second line of
defence the formatter masks anything that looks like a bearer token, JWT or Google token.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .tracing import current_trace_ids, setup_tracing, tracing_enabled

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_SECRET_PATTERNS = [
    re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),  # JWT
    re.compile(r"ya29\.[A-Za-z0-9._-]+"),  # Google access token
    re.compile(r"1//[A-Za-z0-9._-]+"),  # Google refresh token
    re.compile(r"(?i)(access_token|refresh_token|client_secret|code_verifier)=[^&\s]+"),
]
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


# Every pattern above matches only text holding one of these (compared lower-cased): a line without
# any is returned as it is, without running the patterns (every log line pays for this check).
_MARKERS = ("bearer", "eyj", "ya29.", "1//", "access_token=", "refresh_token=", "client_secret=", "code_verifier=")


def mask_secrets(text: str) -> str:
    lowered = text.lower()
    if not any(marker in lowered for marker in _MARKERS):
        return text
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("[redacted]", text)
    return text


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str:
    return request_id_var.get()


_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def accepted_request_id(request_id: str | None) -> str:
    """``request_id`` when it looks like one (up to 64 letters, digits, ``.``, ``_``, ``-``: a hyphenated
    UUID from a load balancer included), else a new one."""
    return request_id if request_id and _REQUEST_ID.fullmatch(request_id) else new_request_id()


@contextmanager
def request_context(request_id: str | None) -> Iterator[str]:
    """Bind a request id (a new one when none is given or it looks wrong) for the block."""
    rid = accepted_request_id(request_id)
    token = request_id_var.set(rid)
    try:
        yield rid
    finally:
        request_id_var.reset(token)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            entry["request_id"] = rid
        if tracing_enabled() and (ids := current_trace_ids()):
            entry["trace_id"], entry["span_id"] = ids
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value if isinstance(value, (int, float, bool)) or value is None else str(value)
        if record.exc_info:
            # The exception, and where it was raised: each frame's file, line and function, never the
            # values of its variables or the source text (a traceback's locals can hold anything).
            exc, traceback_ = record.exc_info[1], record.exc_info[2]
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["stack"] = [f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"
                              for frame in traceback.extract_tb(traceback_, limit=-30)]
        return mask_secrets(json.dumps(entry, ensure_ascii=False))


def configure_logging(service: str, level: str = "INFO") -> None:
    """Log lines as JSON on stdout and, when the environment asks for them, traces (``setup_tracing``):
    set up together, first thing in each process, so that every line can carry its trace id."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library warnings become log records too, so every line a service writes is one JSON object.
    logging.captureWarnings(True)
    # Client libraries log request URLs and bodies at DEBUG; keep them quiet.
    for noisy in ("googleapiclient", "google", "urllib3", "kombu", "amqp", "grpc", "werkzeug", "opentelemetry"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    setup_tracing(service)
