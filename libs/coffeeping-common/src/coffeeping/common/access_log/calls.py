"""Which Gmail API method a request is, from its HTTP verb, path and query alone.

The recorder never reads a request's body or a response: the method, the ids in the path, and the
``format`` and ``metadataHeaders`` of the query say everything the access log keeps. Quota units are
Gmail's per-method table (developers.google.com/gmail/api/reference/quota); a request we cannot name
is recorded as ``other``, with 0 units.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

# Gmail's quota units per method (the official table, looked up 2026-11-30).
QUOTA_UNITS: dict[str, int] = {
    "users.drafts.create": 10, "users.drafts.delete": 10, "users.drafts.get": 5, "users.drafts.list": 5,
    "users.drafts.send": 100, "users.drafts.update": 15, "users.getProfile": 1, "users.history.list": 2,
    "users.messages.attachments.get": 5, "users.messages.batchDelete": 50, "users.messages.batchModify": 50,
    "users.messages.delete": 10, "users.messages.get": 5, "users.messages.import": 25,
    "users.messages.insert": 25, "users.messages.list": 5, "users.messages.modify": 5, "users.messages.send": 100,
    "users.messages.trash": 5, "users.messages.untrash": 5, "users.stop": 50, "users.threads.delete": 20,
    "users.threads.get": 10, "users.threads.list": 10, "users.threads.modify": 10, "users.threads.trash": 10,
    "users.threads.untrash": 10, "users.watch": 100,
}

# What kind of access each call is, for the log's summaries. ``content_read`` is any call that can return
# the content of a message: ``messages.get`` / ``threads.get`` in a format other than metadata or
# minimal (Gmail's default is full), and attachments.
KINDS = ("message_sent", "draft_created", "draft_updated", "draft_deleted", "draft_read", "metadata_read",
         "content_read", "ids_listed", "profile_read", "watch_started", "watch_stopped", "token_issued", "other")
_KIND_OF = {
    "users.messages.send": "message_sent", "users.drafts.send": "message_sent",
    "users.drafts.create": "draft_created", "users.drafts.update": "draft_updated",
    "users.drafts.delete": "draft_deleted", "users.drafts.get": "draft_read",
    "users.messages.attachments.get": "content_read",
    "users.history.list": "ids_listed", "users.messages.list": "ids_listed", "users.threads.list": "ids_listed",
    "users.drafts.list": "ids_listed", "users.getProfile": "profile_read",
    "users.watch": "watch_started", "users.stop": "watch_stopped",
}
_ID_FREE_FORMATS = ("metadata", "minimal")

# (verb, path after ``users/{userId}/``, method); ``{thread}``, ``{message}``, ``{draft}`` and ``{any}``
# match one segment, and the first three are the ids the log keeps.
_ROUTES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("GET", ("profile",), "users.getProfile"),
    ("POST", ("watch",), "users.watch"),
    ("POST", ("stop",), "users.stop"),
    ("GET", ("history",), "users.history.list"),
    ("GET", ("messages",), "users.messages.list"),
    ("POST", ("messages",), "users.messages.insert"),
    ("POST", ("messages", "send"), "users.messages.send"),
    ("POST", ("messages", "import"), "users.messages.import"),
    ("POST", ("messages", "batchDelete"), "users.messages.batchDelete"),
    ("POST", ("messages", "batchModify"), "users.messages.batchModify"),
    ("GET", ("messages", "{message}"), "users.messages.get"),
    ("DELETE", ("messages", "{message}"), "users.messages.delete"),
    ("POST", ("messages", "{message}", "modify"), "users.messages.modify"),
    ("POST", ("messages", "{message}", "trash"), "users.messages.trash"),
    ("POST", ("messages", "{message}", "untrash"), "users.messages.untrash"),
    ("GET", ("messages", "{message}", "attachments", "{any}"), "users.messages.attachments.get"),
    ("GET", ("threads",), "users.threads.list"),
    ("GET", ("threads", "{thread}"), "users.threads.get"),
    ("DELETE", ("threads", "{thread}"), "users.threads.delete"),
    ("POST", ("threads", "{thread}", "modify"), "users.threads.modify"),
    ("POST", ("threads", "{thread}", "trash"), "users.threads.trash"),
    ("POST", ("threads", "{thread}", "untrash"), "users.threads.untrash"),
    ("GET", ("drafts",), "users.drafts.list"),
    ("POST", ("drafts",), "users.drafts.create"),
    ("POST", ("drafts", "send"), "users.drafts.send"),
    ("GET", ("drafts", "{draft}"), "users.drafts.get"),
    ("PUT", ("drafts", "{draft}"), "users.drafts.update"),
    ("DELETE", ("drafts", "{draft}"), "users.drafts.delete"),
)
_API_ROOT = "gmail/v1/users/"
_MAX_ID = 256


@dataclass(frozen=True)
class Call:
    """What the log keeps of one Gmail request."""

    method: str  # e.g. users.threads.get; "other" for a request we cannot name
    kind: str
    thread_id: str | None = None
    message_id: str | None = None
    draft_id: str | None = None
    format: str | None = None
    metadata_headers: tuple[str, ...] = ()
    quota_units: int = 0


def kind_of(method: str, fmt: str | None) -> str:
    if method in ("users.messages.get", "users.threads.get"):
        return "metadata_read" if fmt in _ID_FREE_FORMATS else "content_read"
    return _KIND_OF.get(method, "other")


def _match(verb: str, segments: list[str]) -> tuple[str, dict[str, str]] | None:
    for route_verb, pattern, method in _ROUTES:
        if route_verb != verb or len(pattern) != len(segments):
            continue
        ids: dict[str, str] = {}
        for want, got in zip(pattern, segments, strict=True):
            if want.startswith("{"):
                ids[want[1:-1]] = got
            elif want != got:
                break
        else:
            return method, ids
    return None


def _matched(verb: str, path: str) -> tuple[str, dict[str, str]] | None:
    root = path.find(_API_ROOT)
    segments = [unquote(s) for s in path[root + len(_API_ROOT):].split("/")[1:]] if root >= 0 else []
    return _match(verb.upper(), segments) if segments else None


def method_of(verb: str, uri: str) -> str:
    """Only the Gmail method of a request (``other`` when it has no name): its verb and path, not its query."""
    matched = _matched(verb, uri.partition("?")[0])
    return matched[0] if matched else "other"


def call_of(verb: str, uri: str) -> Call:
    """The Gmail method of a request and the ids, format and header names it names."""
    parts = urlsplit(uri)
    matched = _matched(verb, parts.path)
    if matched is None:
        return Call("other", "other")
    method, ids = matched
    query = parse_qs(parts.query)
    fmt = query.get("format", [None])[0]
    if method in ("users.messages.get", "users.threads.get", "users.drafts.get") and fmt is None:
        fmt = "full"  # Gmail's default
    headers = tuple(h[:_MAX_ID] for h in query.get("metadataHeaders", [])) if fmt == "metadata" else ()

    def named(kind: str) -> str | None:
        value = ids.get(kind)
        return value[:_MAX_ID] if value else None

    return Call(method, kind_of(method, fmt), named("thread"), named("message"), named("draft"),
                fmt[:32] if fmt else None, headers, QUOTA_UNITS.get(method, 0))


def short_scope(scope: str) -> str:
    """``gmail.send`` for ``https://www.googleapis.com/auth/gmail.send``."""
    return scope.removeprefix("https://www.googleapis.com/auth/")


__all__ = ["KINDS", "QUOTA_UNITS", "Call", "call_of", "kind_of", "method_of", "short_scope"]
