"""Recording each Gmail request as it goes on the wire: ``RecordingHttp``, and ``about`` for what a call
is about.

``GmailClients`` hands each user's ``AuthorizedHttp`` a ``RecordingHttp`` around the thread's shared
``httplib2.Http``, so every request that reaches Gmail is seen once, whoever made it: a 401 answered by
a token refresh and a resend is two requests, as Gmail counts them. The hot path only appends a
``Sent`` to the writer's queue; parsing the URL and writing happen on the writer's thread.

What the caller knows and the URL does not (the sequence and the step a call serves, the thread of a
message) comes from ``about``, a context variable set around the calls: the Gmail client runs each
request in the calling thread, so the request sees it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from ..tracing import client_span
from .calls import method_of


@dataclass(frozen=True)
class About:
    """What a call is about, as its caller knows it."""

    sequence_id: str | None = None
    step: int | None = None  # 0: the first email, n: follow-up n
    thread_id: str | None = None


_about: ContextVar[About | None] = ContextVar("gmail_access_about", default=None)


@contextmanager
def about(sequence_id: object = None, step: int | None = None, thread_id: str | None = None) -> Iterator[None]:
    """Every Gmail call made inside the block is recorded as being about this sequence, step and thread."""
    token = _about.set(About(str(sequence_id) if sequence_id is not None else None, step, thread_id or None))
    try:
        yield
    finally:
        _about.reset(token)


@dataclass(frozen=True)
class Sent:
    """One request as it went on the wire, kept raw until the writer parses it."""

    user_id: str
    scopes: tuple[str, ...]
    verb: str
    uri: str
    status: int | None  # None: no answer (a network error or a timeout)
    at: float  # when it was sent (epoch seconds)
    about: About | None


class Sink(Protocol):
    def sent(self, request: Sent) -> None:
        """Take one request; never raises, never blocks for long."""


class RecordingHttp:
    """An ``httplib2.Http`` for one user and scope set that tells ``sink`` about every request it sends,
    and otherwise behaves as the transport it wraps (every other attribute is the transport's)."""

    __slots__ = ("_http", "_sink", "_user_id", "_scopes")

    def __init__(self, http: Any, sink: Sink, user_id: str, scopes: tuple[str, ...]) -> None:
        object.__setattr__(self, "_http", http)
        object.__setattr__(self, "_sink", sink)
        object.__setattr__(self, "_user_id", user_id)
        object.__setattr__(self, "_scopes", scopes)

    def request(self, uri: str, method: str = "GET", *args: Any, **kwargs: Any) -> Any:
        at = time.time()
        status: int | None = None
        try:
            # Named by Gmail's method only when traced: never the address, which holds the ids.
            with client_span("gmail", {"http.request.method": method}) as span:
                response, content = self._http.request(uri, method, *args, **kwargs)
                status = int(response.status)
                if span is not None:
                    span.update_name(f"gmail {method_of(method, uri)}")
                    span.set_attribute("http.response.status_code", status)
            return response, content
        finally:
            self._sink.sent(Sent(self._user_id, self._scopes, method, uri, status, at, _about.get()))

    def __getattr__(self, name: str) -> Any:
        if name in RecordingHttp.__slots__:
            raise AttributeError(name)
        return getattr(self._http, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._http, name, value)


__all__ = ["About", "RecordingHttp", "Sent", "Sink", "about"]
