"""Gmail API stand-in (dev/test only).

Serves the paths google-api-python-client calls (``/gmail/v1/users/{userId}/...``) with Google's JSON
shapes, scope rules, quota units and error bodies, plus a control API under ``/_sandbox/gmail/`` that
plays the other side of the mailbox (inbound replies, bounces, the user acting in Gmail itself) and
reports quota use and a privacy audit of content reads. ``users.watch``/``users.stop`` keep one watch per
mailbox; while it lasts, each history change that passes its label filter is published to the Pub/Sub
stand-in (:mod:`coffeeping_sandbox.pubsub`) as ``{"emailAddress", "historyId"}``.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import email.utils
import json
import math
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

import flask

from .control import Control, InjectedFault
from .gmail_batch import batch_view
from .gmail_errors import (
    ApiError,
    backend_error,
    forbidden,
    from_status,
    insufficient_scopes,
    invalid_argument,
    not_found,
    rate_limited,
    unauthenticated,
)
from .gmail_store import (
    HISTORY_TYPES,
    Draft,
    Mailbox,
    Message,
    build_mime,
    decode_raw,
    ensure_headers,
    header_str,
    message_ids_in,
    new_message_id_header,
    parse_mime,
    text_body,
)

if TYPE_CHECKING:  # pragma: no cover
    from .gmail_store import HistoryRecord
    from .pubsub import PubSubSandbox

__all__ = ["DEFAULT_UNITS_PER_SECOND", "SCOPES", "UNITS", "GmailSandbox", "TokenInfo"]

_G = "https://www.googleapis.com/auth/"
MAIL = "https://mail.google.com/"
METADATA = _G + "gmail.metadata"


def _scopes(*names: str) -> frozenset[str]:
    return frozenset({MAIL, *(_G + n for n in names)})


_READ = _scopes(
    "gmail.metadata",
    "gmail.modify",
    "gmail.readonly",
    "gmail.addons.current.message.action",
    "gmail.addons.current.message.metadata",
    "gmail.addons.current.message.readonly",
)
_COMPOSE = _scopes("gmail.compose", "gmail.modify", "gmail.addons.current.action.compose")

# Accepted scopes per method, as listed in Google's discovery document (gmail.v1.json).
SCOPES: dict[str, frozenset[str]] = {
    "messages.send": _COMPOSE | {_G + "gmail.send"},
    "messages.get": _READ,
    "messages.list": _scopes("gmail.metadata", "gmail.modify", "gmail.readonly"),
    "messages.attachments.get": _scopes(
        "gmail.modify",
        "gmail.readonly",
        "gmail.addons.current.message.action",
        "gmail.addons.current.message.readonly",
    ),
    "threads.get": _READ,
    "threads.list": _scopes("gmail.metadata", "gmail.modify", "gmail.readonly"),
    "drafts.create": _COMPOSE,
    "drafts.update": _COMPOSE,
    "drafts.delete": _COMPOSE,
    "drafts.send": _COMPOSE,
    "drafts.get": _scopes("gmail.compose", "gmail.modify", "gmail.readonly"),
    "drafts.list": _scopes("gmail.compose", "gmail.modify", "gmail.readonly"),
    "history.list": _scopes("gmail.metadata", "gmail.modify", "gmail.readonly"),
    "getProfile": _scopes("gmail.compose", "gmail.metadata", "gmail.modify", "gmail.readonly"),
    "watch": _scopes("gmail.metadata", "gmail.modify", "gmail.readonly"),
    "stop": _scopes("gmail.metadata", "gmail.modify", "gmail.readonly"),
}

# Google's published quota units per method.
UNITS: dict[str, int] = {
    "messages.send": 100,
    "drafts.send": 100,
    "drafts.create": 10,
    "drafts.update": 15,
    "drafts.delete": 10,
    "drafts.get": 5,
    "drafts.list": 5,
    "messages.get": 5,
    "messages.list": 5,
    "threads.get": 10,
    "threads.list": 10,
    "history.list": 2,
    "getProfile": 1,
    "watch": 100,
    "stop": 50,
    "messages.attachments.get": 5,
}
DEFAULT_UNITS_PER_SECOND: float = 250.0

_MESSAGE_FORMATS = ("minimal", "full", "raw", "metadata")
_THREAD_FORMATS = ("full", "metadata", "minimal")
_MESSAGE_FIELDS = {
    "id",
    "threadId",
    "labelIds",
    "snippet",
    "historyId",
    "internalDate",
    "payload",
    "sizeEstimate",
    "raw",
    "classificationLabelValues",
}
_DRAFT_FIELDS = {"id", "message"}
_TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")
WATCH_LIFETIME_S = 7 * 86400  # a watch lasts seven days unless renewed
_LABEL_FILTERS = ("include", "exclude")
_NOTIFICATION_LOG_LIMIT = 10_000
_RAW_REQUIRED = "'raw' RFC822 payload message string or uploading message via /upload/* URL required"


@dataclass(frozen=True)
class TokenInfo:
    email: str
    scopes: frozenset[str]


@dataclass
class _Usage:
    units: int = 0
    by_method: Counter = field(default_factory=Counter)
    calls: Counter = field(default_factory=Counter)
    rejected: int = 0
    window: deque = field(default_factory=deque)  # (monotonic t, units)


def _json(obj: Any, status: int = 200) -> flask.Response:
    resp = flask.Response(json.dumps(obj, indent=2), status=status)
    resp.headers["Content-Type"] = "application/json; charset=UTF-8"
    return resp


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    value = flask.request.args.get(name)
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise invalid_argument(
            f"Invalid value at '{name}' (TYPE_UINT32), \"{value}\"", reason="invalid"
        ) from None
    if n < lo:
        raise invalid_argument(f"Invalid value at '{name}', must be at least {lo}", reason="invalid")
    return min(n, hi)


def _encode_token(n: int) -> str:
    return base64.urlsafe_b64encode(f"sbx:{n}".encode()).decode().rstrip("=")


def _decode_token(token: str | None) -> int | None:
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, n = text.split(":", 1)
        if prefix != "sbx":
            raise ValueError
        return int(n)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid_argument("Invalid pageToken", reason="invalid") from None


def _content_reason(fmt: str, metadata_headers: list[str]) -> str | None:
    """Why a read at this format exposes message content (None for From-only metadata or minimal)."""
    if fmt in ("full", "raw"):
        return f"format={fmt}"
    if fmt == "metadata":
        if not metadata_headers:
            return "format=metadata without metadataHeaders (all headers)"
        extra = sorted({h for h in metadata_headers if h.lower() != "from"})
        if extra:
            return f"metadataHeaders beyond From: {extra}"
    return None


class GmailSandbox:
    """The Gmail API stand-in. Thread safe; mount :meth:`blueprint` on a Flask app."""

    def __init__(
        self,
        token_lookup: Callable[[str], TokenInfo | None],
        control: Control,
        pubsub: PubSubSandbox | None = None,
    ) -> None:
        self._token_lookup = token_lookup
        self._control = control
        self.pubsub = pubsub
        self._lock = threading.RLock()
        self._mailboxes: dict[str, Mailbox] = {}
        self._usage: dict[str, _Usage] = {}
        self._rate_default: float | None = DEFAULT_UNITS_PER_SECOND
        self._rate_user: dict[str, float | None] = {}
        self._reads: dict[str, list[dict[str, Any]]] = {}
        self._snippets: dict[str, list[dict[str, Any]]] = {}
        self._watch_lifetime_s: float = WATCH_LIFETIME_S
        self._notify_interval_s: float | None = None
        self._last_notified: dict[str, float] = {}
        self._notifications: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        with self._lock:
            self._mailboxes.clear()
            self._usage.clear()
            self._rate_default = DEFAULT_UNITS_PER_SECOND
            self._rate_user.clear()
            self._reads.clear()
            self._snippets.clear()
            self._watch_lifetime_s = WATCH_LIFETIME_S
            self._notify_interval_s = None
            self._last_notified.clear()
            self._notifications.clear()

    def _mailbox(self, user: str) -> Mailbox:
        key = (email.utils.parseaddr(user)[1] or user).strip().lower()
        mb = self._mailboxes.get(key)
        if mb is None:
            mb = self._mailboxes[key] = Mailbox(email=key, on_record=self._on_record)
        return mb

    # ------------------------------------------------------------------ quota / rate limit
    def set_rate_limit(self, units_per_second: float | None, user: str | None = None) -> None:
        """Units per user per sliding second; ``None`` disables the limit. Per user or the default."""
        with self._lock:
            if user is None:
                self._rate_default = units_per_second
            else:
                self._rate_user[user.lower()] = units_per_second

    def _rate_for(self, user: str) -> float | None:
        return self._rate_user.get(user, self._rate_default)

    def _admit(self, user: str, method: str) -> None:
        units = UNITS[method]
        with self._lock:
            usage = self._usage.setdefault(user, _Usage())
            now = time.monotonic()
            while usage.window and usage.window[0][0] <= now - 1.0:
                usage.window.popleft()
            limit = self._rate_for(user)
            used = sum(u for _, u in usage.window)
            if limit is not None and used + units > limit:
                usage.rejected += 1
                need, acc, wait = used + units - limit, 0, 1.0
                for t, u in usage.window:
                    acc += u
                    if acc >= need:
                        wait = t + 1.0 - now
                        break
                retry = max(1, math.ceil(wait))
                until = (datetime.now(UTC) + timedelta(seconds=retry)).strftime("%Y-%m-%dT%H:%M:%S.%f")[
                    :-3
                ] + "Z"
                raise rate_limited(retry, until)
            usage.window.append((now, units))
            usage.units += units
            usage.by_method[method] += units
            usage.calls[method] += 1

    def quota(self, user: str) -> dict[str, Any]:
        with self._lock:
            key = user.lower()
            usage = self._usage.get(key, _Usage())
            now = time.monotonic()
            return {
                "user": key,
                "units_used": usage.units,
                "by_method": dict(usage.by_method),
                "calls": dict(usage.calls),
                "rate_limited": usage.rejected,
                "units_last_second": sum(u for t, u in usage.window if t > now - 1.0),
                "units_per_second": self._rate_for(key),
            }

    # ------------------------------------------------------------------ request pipeline
    def _handle(
        self, method: str, handler: Callable[[TokenInfo], Any], user_id: str, **details: Any
    ) -> flask.Response:
        auth = flask.request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        info = self._token_lookup(token) if token else None
        try:
            try:
                self._control.enter(f"gmail.{method}", user=info.email.lower() if info else None, **details)
            except InjectedFault as fault:
                if fault.status == "hang":
                    raise backend_error(503) from None
                raise from_status(int(fault.status)) from None
            if info is None:
                raise unauthenticated()
            if user_id != "me" and user_id.lower() != info.email.lower():
                raise forbidden(f"Delegation denied for {info.email}")
            if not (info.scopes & SCOPES[method]):
                raise insufficient_scopes(method)
            self._admit(info.email.lower(), method)
            result = handler(info)
        except ApiError as err:
            return err.response()
        if result is None:
            return flask.Response(status=204)
        return _json(result)

    @staticmethod
    def _body(allowed: set[str]) -> dict[str, Any]:
        data = flask.request.get_data()
        if not data.strip():
            return {}
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise invalid_argument(
                "Invalid JSON payload received. Unexpected token.", reason="parseError"
            ) from None
        if not isinstance(obj, dict):
            raise invalid_argument("Invalid JSON payload received. Expected an object.", reason="invalid")
        for key in obj:
            if key not in allowed:
                raise invalid_argument(
                    f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.',
                    reason="invalid",
                )
        return obj

    @staticmethod
    def _message_body(obj: Any, where: str) -> dict[str, Any]:
        if obj is None:
            return {}
        if not isinstance(obj, dict):
            raise invalid_argument(
                f"Invalid JSON payload received. '{where}' must be an object.", reason="invalid"
            )
        for key in obj:
            if key not in _MESSAGE_FIELDS:
                raise invalid_argument(
                    f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field.",
                    reason="invalid",
                )
        return obj

    @staticmethod
    def _format(allowed: tuple[str, ...], default: str = "full") -> str:
        fmt = flask.request.args.get("format", default)
        if fmt not in allowed:
            raise invalid_argument(
                f"Invalid value at 'format' (type.googleapis.com/caribou.api.proto.Format), \"{fmt}\"",
                reason="invalid",
            )
        return fmt

    @staticmethod
    def _check_metadata_scope(info: TokenInfo, fmt: str | None = None, q: str | None = None) -> None:
        if METADATA not in info.scopes:
            return
        if fmt in ("full", "raw"):
            raise forbidden(f"Metadata scope does not allow format {fmt.upper()}")
        if q:
            raise forbidden("Metadata scope does not support 'q' parameter")

    @staticmethod
    def _prepare_outgoing(raw_value: Any, user: str, where: str, *, require_recipient: bool) -> bytes:
        if raw_value in (None, ""):
            raise invalid_argument(_RAW_REQUIRED)
        raw = decode_raw(raw_value, where)
        mime = parse_mime(raw)
        if require_recipient and not any(header_str(mime, h) for h in ("To", "Cc", "Bcc")):
            raise invalid_argument("Recipient address required")
        return ensure_headers(
            raw,
            {
                "Message-ID": new_message_id_header(),
                "From": user,
                "Date": email.utils.formatdate(localtime=False),
            },
        )

    def _record_read(
        self,
        info: TokenInfo,
        method: str,
        target: str,
        fmt: str,
        headers: list[str],
        messages: list[Message],
        with_snippet: bool,
    ) -> None:
        user = info.email.lower()
        received = [m.id for m in messages if m.received]
        if not received:
            return
        reason = (
            "attachment content" if method == "messages.attachments.get" else _content_reason(fmt, headers)
        )
        entry = {
            "t": time.time(),
            "method": f"gmail.{method}",
            "id": target,
            "format": fmt,
            "metadataHeaders": list(headers),
            "received_message_ids": received,
        }
        with self._lock:
            if reason:
                self._reads.setdefault(user, []).append({**entry, "reason": reason})
            elif with_snippet:
                self._snippets.setdefault(user, []).append({**entry, "reason": "snippet returned"})

    # ------------------------------------------------------------------ API handlers
    def _messages_send(self, info: TokenInfo) -> dict[str, Any]:
        body = self._body(_MESSAGE_FIELDS)
        raw = self._prepare_outgoing(body.get("raw"), info.email, "message.raw", require_recipient=True)
        with self._lock:
            mb = self._mailbox(info.email)
            thread_id = body.get("threadId") or None
            if thread_id is not None and thread_id not in mb.threads:
                raise not_found()
            return mb.add_message(raw, ["SENT"], thread_id).brief()

    def _messages_get(self, info: TokenInfo, msg_id: str) -> dict[str, Any]:
        fmt = self._format(_MESSAGE_FORMATS)
        self._check_metadata_scope(info, fmt)
        headers = flask.request.args.getlist("metadataHeaders")
        snippet = METADATA not in info.scopes
        with self._lock:
            msg = self._mailbox(info.email).messages.get(msg_id)
            if msg is None:
                raise not_found()
            out = msg.resource(fmt, headers, with_snippet=snippet)
        self._record_read(info, "messages.get", msg_id, fmt, headers, [msg], snippet)
        return out

    def _attachments_get(self, info: TokenInfo, msg_id: str, att_id: str) -> dict[str, Any]:
        with self._lock:
            msg = self._mailbox(info.email).messages.get(msg_id)
            if msg is None:
                raise not_found()
            data = msg.attachment(att_id)
        if data is None:
            raise invalid_argument("Invalid attachment token", reason="invalid")
        self._record_read(info, "messages.attachments.get", msg_id, "raw", [], [msg], False)
        return {
            "attachmentId": att_id,
            "size": len(data),
            "data": base64.urlsafe_b64encode(data).decode("ascii"),
        }

    def _threads_get(self, info: TokenInfo, thread_id: str) -> dict[str, Any]:
        fmt = self._format(_THREAD_FORMATS)
        self._check_metadata_scope(info, fmt)
        headers = flask.request.args.getlist("metadataHeaders")
        snippet = METADATA not in info.scopes
        with self._lock:
            mb = self._mailbox(info.email)
            ids = mb.threads.get(thread_id)
            if not ids:
                raise not_found()
            msgs = [mb.messages[m] for m in ids]
            out: dict[str, Any] = {"id": thread_id}
            if snippet:
                out["snippet"] = msgs[-1].snippet()
            out["historyId"] = str(max(m.history_id for m in msgs))
            out["messages"] = [m.resource(fmt, headers, with_snippet=snippet) for m in msgs]
        self._record_read(info, "threads.get", thread_id, fmt, headers, msgs, snippet)
        return out

    def _matches(self, msg: Message, q: str, label_ids: list[str]) -> bool:
        if any(lbl not in msg.label_ids for lbl in label_ids):
            return False
        if not q:
            return True
        mime = msg.mime
        for term in q.split():
            op, _, value = term.partition(":")
            value = value.strip('"').lower()
            if not _:
                hay = f"{header_str(mime, 'Subject') or ''} {text_body(mime)}".lower()
                ok = op.strip('"').lower() in hay
            elif op == "from":
                ok = value in (header_str(mime, "From") or "").lower()
            elif op == "to":
                ok = value in (header_str(mime, "To") or "").lower()
            elif op == "subject":
                ok = value in (header_str(mime, "Subject") or "").lower()
            elif op == "rfc822msgid":
                ok = value.strip("<>") == (header_str(mime, "Message-ID") or "").strip().strip("<>").lower()
            elif op in ("in", "label"):
                ok = value.upper() in msg.label_ids
            elif op == "is":
                ok = {"unread": "UNREAD" in msg.label_ids, "read": "UNREAD" not in msg.label_ids}.get(
                    value, True
                )
            else:
                ok = True  # unsupported operators are ignored by the sandbox
            if not ok:
                return False
        return True

    def _list_page(self, items: list[Any]) -> tuple[list[Any], str | None]:
        size = _int_arg("maxResults", 100, 1, 500)
        start = _decode_token(flask.request.args.get("pageToken")) or 0
        page = items[start : start + size]
        nxt = _encode_token(start + size) if start + size < len(items) else None
        return page, nxt

    def _messages_list(self, info: TokenInfo) -> dict[str, Any]:
        q = flask.request.args.get("q", "")
        self._check_metadata_scope(info, q=q)
        labels = flask.request.args.getlist("labelIds")
        with self._lock:
            mb = self._mailbox(info.email)
            found = [
                m
                for m in sorted(
                    mb.messages.values(), key=lambda m: (m.internal_date, m.history_id), reverse=True
                )
                if self._matches(m, q, labels)
            ]
        page, nxt = self._list_page(found)
        out: dict[str, Any] = {}
        if page:
            out["messages"] = [m.ref() for m in page]
        if nxt:
            out["nextPageToken"] = nxt
        out["resultSizeEstimate"] = len(found)
        return out

    def _threads_list(self, info: TokenInfo) -> dict[str, Any]:
        q = flask.request.args.get("q", "")
        self._check_metadata_scope(info, q=q)
        labels = flask.request.args.getlist("labelIds")
        snippet = METADATA not in info.scopes
        with self._lock:
            mb = self._mailbox(info.email)
            rows = []
            for tid, ids in mb.threads.items():
                msgs = [mb.messages[m] for m in ids]
                if any(self._matches(m, q, labels) for m in msgs):
                    row: dict[str, Any] = {"id": tid}
                    if snippet:
                        row["snippet"] = msgs[-1].snippet()
                    row["historyId"] = str(max(m.history_id for m in msgs))
                    rows.append((max(m.internal_date for m in msgs), row))
            found = [r for _, r in sorted(rows, key=lambda x: x[0], reverse=True)]
        page, nxt = self._list_page(found)
        out: dict[str, Any] = {}
        if page:
            out["threads"] = page
        if nxt:
            out["nextPageToken"] = nxt
        out["resultSizeEstimate"] = len(found)
        return out

    def _drafts_create(self, info: TokenInfo) -> dict[str, Any]:
        body = self._body(_DRAFT_FIELDS)
        message = self._message_body(body.get("message"), "draft.message")
        raw = self._prepare_outgoing(
            message.get("raw"), info.email, "draft.message.raw", require_recipient=False
        )
        with self._lock:
            mb = self._mailbox(info.email)
            thread_id = message.get("threadId") or None
            if thread_id is not None and thread_id not in mb.threads:
                raise not_found()
            return mb.draft_resource(mb.create_draft(raw, thread_id))

    def _draft(self, mb: Mailbox, draft_id: str) -> Draft:
        draft = mb.drafts.get(draft_id)
        if draft is None:
            raise not_found()
        return draft

    def _drafts_get(self, info: TokenInfo, draft_id: str) -> dict[str, Any]:
        fmt = self._format(_MESSAGE_FORMATS)
        self._check_metadata_scope(info, fmt)
        with self._lock:
            mb = self._mailbox(info.email)
            draft = self._draft(mb, draft_id)
            msg = mb.messages[draft.message_id]
            return {
                "id": draft.id,
                "message": msg.resource(fmt, None, with_snippet=METADATA not in info.scopes),
            }

    def _drafts_list(self, info: TokenInfo) -> dict[str, Any]:
        q = flask.request.args.get("q", "")
        self._check_metadata_scope(info, q=q)
        with self._lock:
            mb = self._mailbox(info.email)
            found = [
                {"id": d.id, "message": mb.messages[d.message_id].ref()}
                for d in sorted(
                    mb.drafts.values(), key=lambda d: mb.messages[d.message_id].internal_date, reverse=True
                )
                if self._matches(mb.messages[d.message_id], q, [])
            ]
        page, nxt = self._list_page(found)
        out: dict[str, Any] = {}
        if page:
            out["drafts"] = page
        if nxt:
            out["nextPageToken"] = nxt
        out["resultSizeEstimate"] = len(found)
        return out

    def _drafts_update(self, info: TokenInfo, draft_id: str) -> dict[str, Any]:
        body = self._body(_DRAFT_FIELDS)
        message = self._message_body(body.get("message"), "draft.message")
        with self._lock:
            mb = self._mailbox(info.email)
            draft = self._draft(mb, draft_id)
        raw = self._prepare_outgoing(
            message.get("raw"), info.email, "draft.message.raw", require_recipient=False
        )
        with self._lock:
            mb = self._mailbox(info.email)
            draft = self._draft(mb, draft_id)
            thread_id = message.get("threadId") or None
            if thread_id is not None and thread_id not in mb.threads:
                raise not_found()
            return mb.draft_resource(mb.update_draft(draft, raw, thread_id))

    def _drafts_delete(self, info: TokenInfo, draft_id: str) -> None:
        with self._lock:
            mb = self._mailbox(info.email)
            mb.delete_draft(self._draft(mb, draft_id))

    def _drafts_send(self, info: TokenInfo) -> dict[str, Any]:
        body = self._body(_DRAFT_FIELDS)
        draft_id = body.get("id")
        if not draft_id or not isinstance(draft_id, str):
            raise invalid_argument("Invalid draft: 'id' is required")
        message = self._message_body(body.get("message"), "draft.message")
        raw = None
        if message.get("raw"):
            raw = self._prepare_outgoing(
                message["raw"], info.email, "draft.message.raw", require_recipient=True
            )
        with self._lock:
            mb = self._mailbox(info.email)
            draft = self._draft(mb, draft_id)
            if raw is not None:
                mb.update_draft(
                    draft, raw, message.get("threadId") or mb.messages[draft.message_id].thread_id
                )
            mime = mb.messages[draft.message_id].mime
            if not any(header_str(mime, h) for h in ("To", "Cc", "Bcc")):
                raise invalid_argument("Recipient address required")
            return mb.send_draft(draft).brief()

    def _history_list(self, info: TokenInfo) -> dict[str, Any]:
        args = flask.request.args
        start_s = args.get("startHistoryId")
        if not start_s:
            raise invalid_argument("Missing required parameter: startHistoryId", reason="invalid")
        try:
            start = int(start_s)
            if start < 0:
                raise ValueError
        except ValueError:
            raise invalid_argument(
                f"Invalid value at 'start_history_id' (TYPE_UINT64), \"{start_s}\"", reason="invalid"
            ) from None
        types = args.getlist("historyTypes")
        for t in types:
            if t not in HISTORY_TYPES:
                raise invalid_argument(
                    f"Invalid value at 'history_types' (type.googleapis.com/"
                    f'caribou.api.proto.HistoryType), "{t}"',
                    reason="invalid",
                )
        label = args.get("labelId")
        size = _int_arg("maxResults", 100, 1, 500)
        after = _decode_token(args.get("pageToken"))
        with self._lock:
            mb = self._mailbox(info.email)
            if start < mb.oldest_valid_start():
                raise not_found()
            records = [
                r
                for r in mb.history_since(max(start, after or 0))
                if (not types or r.kind in types)
                and (not label or label in r.message["labelIds"] or label in r.label_ids)
            ]
            page = records[:size]
            out: dict[str, Any] = {}
            if page:
                out["history"] = [r.resource() for r in page]
            if len(records) > size:
                out["nextPageToken"] = _encode_token(page[-1].id)
            out["historyId"] = str(mb.history_id)
            return out

    def _get_profile(self, info: TokenInfo) -> dict[str, Any]:
        with self._lock:
            return self._mailbox(info.email).profile()

    def _watch(self, info: TokenInfo) -> dict[str, Any]:
        body = self._body({"topicName", "labelIds", "labelFilterAction", "labelFilterBehavior"})
        topic = body.get("topicName")
        if topic in (None, ""):
            raise invalid_argument("topicName required")
        if not isinstance(topic, str) or not _TOPIC.match(topic):
            raise invalid_argument("Invalid topicName does not match projects/SOME_PROJECT/topics/SOME_TOPIC")
        labels = body.get("labelIds")
        if labels is None:
            labels = []
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise invalid_argument(
                "Invalid JSON payload received. 'labelIds' must be a list of strings.", reason="invalid"
            )
        behavior = self._label_filter(body)
        # Gmail sends a test message to the topic; it fails unless the topic exists and Gmail's push
        # account (gmail-api-push@system.gserviceaccount.com) may publish to it.
        if self.pubsub is not None and not self.pubsub.gmail_can_publish(topic):
            raise forbidden(
                f"Error sending test message to Cloud PubSub {topic} : User not authorized to perform this action."
            )
        now = time.time()
        expiration = int((now + self._watch_lifetime_s) * 1000)
        with self._lock:
            mb = self._mailbox(info.email)
            mb.watch = {  # one watch per mailbox: a new one replaces the old
                "topicName": topic,
                "labelIds": list(dict.fromkeys(labels)),
                "labelFilterBehavior": behavior,
                "historyId": str(mb.history_id),
                "expiration": str(expiration),
                "created": now,
            }
            return {"historyId": str(mb.history_id), "expiration": str(expiration)}

    @staticmethod
    def _label_filter(body: dict[str, Any]) -> str:
        """labelFilterBehavior replaces the deprecated labelFilterAction; "include" by default."""
        for key, field_name in (
            ("labelFilterBehavior", "label_filter_behavior"),
            ("labelFilterAction", "label_filter_action"),
        ):
            value = body.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or value.lower() not in _LABEL_FILTERS:
                raise invalid_argument(
                    f"Invalid value at '{field_name}' "
                    f'(type.googleapis.com/caribou.api.proto.WatchRequest.LabelFilterAction), "{value}"',
                    reason="invalid",
                )
            return value.lower()
        return "include"

    def _stop(self, info: TokenInfo) -> None:
        self._body(set())  # "The request body must be empty."
        with self._lock:
            self._mailbox(info.email).watch = None

    # ------------------------------------------------------------------ push notifications
    @staticmethod
    def _filter_passes(watch: dict[str, Any], record: HistoryRecord) -> bool:
        wanted = set(watch.get("labelIds") or ())
        if not wanted:
            return True  # no labelIds: every change is pushed
        related = bool(wanted & (set(record.message.get("labelIds") or ()) | set(record.label_ids)))
        return related if watch.get("labelFilterBehavior", "include") == "include" else not related

    def _on_record(self, mb: Mailbox, record: HistoryRecord) -> None:
        """A history record was added to ``mb`` (lock held): publish ``{emailAddress, historyId}``."""
        watch = mb.watch
        if watch is None:
            return
        now = time.time()
        entry: dict[str, Any] = {
            "t": now,
            "user": mb.email,
            "historyId": record.id,
            "change": record.kind,
            "messageId": record.message.get("id"),
            "topic": watch["topicName"],
            "published": False,
            "pubsub_message_id": None,
            "reason": None,
        }
        last = self._last_notified.get(mb.email)
        if now * 1000 >= int(watch["expiration"]):
            entry["reason"] = "watch expired"
        elif not self._filter_passes(watch, record):
            entry["reason"] = "label filter"
        elif self._notify_interval_s and last is not None and now - last < self._notify_interval_s:
            entry["reason"] = "notification rate limit"
        elif self.pubsub is None:
            entry["reason"] = "no Pub/Sub stand-in"
        else:
            message_id, why = self.pubsub.publish_as_gmail(
                watch["topicName"], {"emailAddress": mb.email, "historyId": record.id}
            )
            entry.update(published=message_id is not None, pubsub_message_id=message_id, reason=why)
            if message_id is not None:
                self._last_notified[mb.email] = now
        if len(self._notifications) < _NOTIFICATION_LOG_LIMIT:
            self._notifications.append(entry)

    # ------------------------------------------------------------------ control (Python API)
    @staticmethod
    def _last_sent_or_received(mb: Mailbox, thread_id: str) -> Message:
        ids = mb.threads.get(thread_id)
        if not ids:
            raise LookupError(f"no thread {thread_id} for {mb.email}")
        real = [mb.messages[m] for m in ids if "DRAFT" not in mb.messages[m].label_ids]
        return (real or [mb.messages[m] for m in ids])[-1]

    @staticmethod
    def _reply_headers(mb: Mailbox, thread_id: str, in_reply_to: str | None) -> tuple[str, str, str]:
        last = GmailSandbox._last_sent_or_received(mb, thread_id)
        mime = last.mime
        irt = in_reply_to or header_str(mime, "Message-ID") or ""
        refs = " ".join([*message_ids_in(header_str(mime, "References")), irt]).strip()
        first = mb.messages[mb.threads[thread_id][0]].mime
        subject = header_str(first, "Subject") or ""
        base = subject[len(subject) - len(subject.lstrip()) :]
        stripped = re.sub(r"^\s*((re|fwd?)\s*:\s*)+", "", base, flags=re.IGNORECASE)
        return irt, refs, f"Re: {stripped}" if stripped else "Re:"

    def deliver(
        self,
        to: str,
        from_: str,
        thread_id: str | None = None,
        in_reply_to: str | None = None,
        subject: str | None = None,
        body: str = "",
        labels: list[str] | None = None,
        headers: dict[str, str] | None = None,
        kind: str | None = None,
        strict_threading: bool = False,
    ) -> dict[str, Any]:
        """Deliver an inbound message to ``to``'s mailbox.

        ``kind``: ``"reply"`` (default), ``"auto_reply"`` (adds Auto-Submitted/X-Autoreply headers) or
        ``"bounce"`` (a delivery failure from mailer-daemon@googlemail.com). With ``thread_id`` the message
        replies to the thread's last message (``In-Reply-To``/``References``) and joins it, unless
        ``strict_threading`` applies Gmail's rule (matching references and subject) instead.
        """
        extra = dict(headers or {})
        if kind == "bounce":
            from_ = from_ or "Mail Delivery Subsystem <mailer-daemon@googlemail.com>"
            subject = subject or "Delivery Status Notification (Failure)"
            body = (
                body
                or "Address not found\n\nYour message wasn't delivered because the address couldn't be found."
            )
            extra.setdefault("Auto-Submitted", "auto-replied")
        elif kind == "auto_reply":
            extra.setdefault("Auto-Submitted", "auto-replied")
            extra.setdefault("X-Autoreply", "yes")
        elif kind not in (None, "reply"):
            raise ValueError(f"unknown kind {kind!r}")
        if not from_:
            raise ValueError("'from' is required")
        with self._lock:
            mb = self._mailbox(to)
            irt = refs = None
            if thread_id:
                irt, refs, default_subject = self._reply_headers(mb, thread_id, in_reply_to)
                if kind == "auto_reply" and subject is None:
                    default_subject = "Automatic reply: " + default_subject.removeprefix("Re: ")
                subject = subject if subject is not None else default_subject
            elif in_reply_to:
                irt = refs = in_reply_to
            domain = email.utils.parseaddr(from_)[1].rpartition("@")[2] or "example.com"
            raw = build_mime(
                {
                    "From": from_,
                    "To": mb.email,
                    "Subject": subject if subject is not None else "(no subject)",
                    "Date": email.utils.formatdate(localtime=False),
                    "Message-ID": new_message_id_header(domain),
                    "In-Reply-To": irt,
                    "References": refs,
                    **extra,
                },
                body,
            )
            msg = mb.add_message(
                raw,
                list(labels) if labels is not None else ["INBOX", "UNREAD"],
                thread_id,
                force_thread=not strict_threading,
            )
            return msg.summary()

    def user_send(
        self,
        user: str,
        thread_id: str | None = None,
        body: str = "",
        to: str | None = None,
        subject: str | None = None,
    ) -> dict[str, Any]:
        """A message the user writes in Gmail itself (labelled SENT), replying in ``thread_id``."""
        with self._lock:
            mb = self._mailbox(user)
            irt = refs = None
            if thread_id:
                irt, refs, default_subject = self._reply_headers(mb, thread_id, None)
                subject = subject if subject is not None else default_subject
                if to is None:
                    for mid in reversed(mb.threads[thread_id]):
                        m = mb.messages[mid]
                        if m.received and not header_str(m.mime, "Auto-Submitted"):
                            to = header_str(m.mime, "Reply-To") or header_str(m.mime, "From")
                            break
                        if "SENT" in m.label_ids:
                            to = header_str(m.mime, "To")
                            break
            if not to:
                raise ValueError("'to' is required when the thread has no correspondent")
            raw = build_mime(
                {
                    "From": mb.email,
                    "To": to,
                    "Subject": subject or "",
                    "Date": email.utils.formatdate(),
                    "Message-ID": new_message_id_header(),
                    "In-Reply-To": irt,
                    "References": refs,
                },
                body,
            )
            return mb.add_message(raw, ["SENT"], thread_id, force_thread=True).summary()

    def edit_draft(self, user: str, draft_id: str, body: str) -> dict[str, Any]:
        """The user edits a draft's body in Gmail: the draft keeps its id, its message id changes."""
        with self._lock:
            mb = self._mailbox(user)
            draft = mb.drafts.get(draft_id)
            if draft is None:
                raise LookupError(f"no draft {draft_id} for {mb.email}")
            old = mb.messages[draft.message_id].mime
            new = EmailMessage()
            for name, value in old.raw_items():
                if name.lower() not in ("content-type", "content-transfer-encoding", "mime-version"):
                    new[name] = value
            new.set_content(body)
            mb.update_draft(draft, new.as_bytes(policy=email.policy.SMTP), None, keep_thread=True)
            return {"id": draft.id, "message": mb.messages[draft.message_id].summary()}

    def delete_draft(self, user: str, draft_id: str) -> None:
        with self._lock:
            mb = self._mailbox(user)
            draft = mb.drafts.get(draft_id)
            if draft is None:
                raise LookupError(f"no draft {draft_id} for {mb.email}")
            mb.delete_draft(draft)

    def delete_thread(self, user: str, thread_id: str) -> dict[str, Any]:
        """The user deletes a whole thread in Gmail (forever): its messages and the drafts in it."""
        with self._lock:
            mb = self._mailbox(user)
            ids = list(mb.threads.get(thread_id, []))
            if not ids:
                raise LookupError(f"no thread {thread_id} for {mb.email}")
            for draft in [d for d in mb.drafts.values() if d.message_id in ids]:
                mb.delete_draft(draft)
            for mid in [m for m in ids if m in mb.messages]:
                mb.delete_message(mid)
            return {"deleted": len(ids)}

    def modify_labels(
        self, user: str, message_id: str, add: list[str] | None = None, remove: list[str] | None = None
    ) -> dict[str, Any]:
        """The user changes labels in Gmail (e.g. reads a message: remove UNREAD)."""
        with self._lock:
            mb = self._mailbox(user)
            if message_id not in mb.messages:
                raise LookupError(f"no message {message_id} for {mb.email}")
            return mb.change_labels(message_id, list(add or []), list(remove or [])).brief()

    def mailbox(self, user: str) -> dict[str, Any]:
        with self._lock:
            return self._mailbox(user).dump()

    def expire_history(self, user: str, retention_seconds: float | None = None) -> dict[str, Any]:
        """Without ``retention_seconds`` every startHistoryId before now 404s; with it, keep that window."""
        with self._lock:
            mb = self._mailbox(user)
            mb.expire_history(retention_seconds)
            return {
                "user": mb.email,
                "historyId": str(mb.history_id),
                "oldestValidStart": mb.oldest_valid_start(),
            }

    def watch_of(self, user: str) -> dict[str, Any] | None:
        """The mailbox's watch (topicName, labelIds, labelFilterBehavior, historyId, expiration, expired)."""
        with self._lock:
            watch = self._mailbox(user).watch
            if watch is None:
                return None
            return {**watch, "expired": time.time() * 1000 >= int(watch["expiration"])}

    def expire_watch(self, user: str) -> dict[str, Any]:
        """Let the mailbox's watch run out now (no more notifications until ``watch`` is called again)."""
        with self._lock:
            mb = self._mailbox(user)
            if mb.watch is None:
                raise LookupError(f"no watch for {mb.email}")
            mb.watch["expiration"] = str(int(time.time() * 1000) - 1)
        return self.watch_of(user) or {}

    def set_watch_lifetime(self, seconds: float | None) -> None:
        """How long new watches last (Gmail: seven days); ``None`` restores that."""
        if seconds is not None and (not isinstance(seconds, int | float) or seconds <= 0):
            raise ValueError("seconds must be a positive number")
        with self._lock:
            self._watch_lifetime_s = WATCH_LIFETIME_S if seconds is None else float(seconds)

    def set_notification_interval(self, seconds: float | None) -> None:
        """Gmail's per-user notification rate limit (documented as 1 event/s, excess dropped).

        Off (``None``) by default so tests are deterministic; ``1.0`` imitates Gmail.
        """
        if seconds is not None and (not isinstance(seconds, int | float) or seconds < 0):
            raise ValueError("seconds must be a number >= 0")
        with self._lock:
            self._notify_interval_s = float(seconds) if seconds else None

    def notifications(self, user: str | None = None) -> list[dict[str, Any]]:
        """Every history change of a watched mailbox: published (with the Pub/Sub messageId) or why not."""
        key = user.lower() if user else None
        with self._lock:
            return [dict(e) for e in self._notifications if key is None or e["user"] == key]

    def privacy_audit(self, user: str) -> dict[str, Any]:
        """Requests that read content of messages the user did not send."""
        with self._lock:
            key = user.lower()
            reads = [dict(e) for e in self._reads.get(key, [])]
            snippets = [dict(e) for e in self._snippets.get(key, [])]
        return {"user": key, "content_reads": reads, "count": len(reads), "snippet_exposures": snippets}

    # ------------------------------------------------------------------ blueprint
    def blueprint(self) -> flask.Blueprint:
        bp = flask.Blueprint("coffeeping_gmail_sandbox", __name__)
        base = "/gmail/v1/users/<user_id>"
        args = flask.request

        def fmt_details(default: str = "full") -> dict[str, Any]:
            return {
                "format": args.args.get("format", default),
                "metadataHeaders": args.args.getlist("metadataHeaders"),
            }

        def route(
            rule: str,
            method: str,
            http: str,
            fn: Callable[..., Any],
            details: Callable[..., dict] | None = None,
            id_arg: str | None = None,
        ) -> None:
            def view(user_id: str, **kw: Any) -> flask.Response:
                d = {"id": kw.get(id_arg) if id_arg else None, "format": None, "metadataHeaders": None}
                if details:
                    d.update(details())
                return self._handle(method, lambda info: fn(info, **kw), user_id, **d)

            bp.add_url_rule(base + rule, f"{method}_{http}".replace(".", "_"), view, methods=[http])

        route("/messages/send", "messages.send", "POST", self._messages_send)
        route(
            "/messages",
            "messages.list",
            "GET",
            self._messages_list,
            lambda: {"q": args.args.get("q"), "labelIds": args.args.getlist("labelIds")},
        )
        route("/messages/<msg_id>", "messages.get", "GET", self._messages_get, fmt_details, "msg_id")
        route(
            "/messages/<msg_id>/attachments/<att_id>",
            "messages.attachments.get",
            "GET",
            self._attachments_get,
            lambda: {"format": "raw"},
            "msg_id",
        )
        route(
            "/threads",
            "threads.list",
            "GET",
            self._threads_list,
            lambda: {"q": args.args.get("q"), "labelIds": args.args.getlist("labelIds")},
        )
        route("/threads/<thread_id>", "threads.get", "GET", self._threads_get, fmt_details, "thread_id")
        route("/drafts", "drafts.create", "POST", self._drafts_create)
        route("/drafts", "drafts.list", "GET", self._drafts_list, lambda: {"q": args.args.get("q")})
        route("/drafts/send", "drafts.send", "POST", self._drafts_send)
        route("/drafts/<draft_id>", "drafts.get", "GET", self._drafts_get, fmt_details, "draft_id")
        route("/drafts/<draft_id>", "drafts.update", "PUT", self._drafts_update, None, "draft_id")
        route("/drafts/<draft_id>", "drafts.delete", "DELETE", self._drafts_delete, None, "draft_id")
        route(
            "/history",
            "history.list",
            "GET",
            self._history_list,
            lambda: {
                "startHistoryId": args.args.get("startHistoryId"),
                "historyTypes": args.args.getlist("historyTypes"),
                "labelId": args.args.get("labelId"),
                "pageToken": args.args.get("pageToken"),
            },
        )
        route("/profile", "getProfile", "GET", self._get_profile)
        route("/watch", "watch", "POST", self._watch)
        route("/stop", "stop", "POST", self._stop)

        @bp.route("/gmail/v1/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        def unknown_api(rest: str) -> flask.Response:
            return ApiError(404, f"Method not found: /gmail/v1/{rest}", "notFound").response()

        bp.add_url_rule("/batch/gmail/v1", "batch_gmail_v1", batch_view, methods=["POST"])
        bp.add_url_rule("/batch", "batch", batch_view, methods=["POST"])
        self._control_routes(bp)
        return bp

    def _control_routes(self, bp: flask.Blueprint) -> None:
        def wrap(fn: Callable[[dict[str, Any]], Any]) -> Callable[[], flask.Response]:
            def view() -> flask.Response:
                if flask.request.method == "GET":
                    data: dict[str, Any] = dict(flask.request.args)
                else:
                    try:
                        data = json.loads(flask.request.get_data() or b"{}")
                    except ValueError:
                        return _json({"error": "malformed JSON"}, 400)
                    if not isinstance(data, dict):
                        return _json({"error": "expected a JSON object"}, 400)
                try:
                    result = fn(data)
                except LookupError as exc:
                    return _json({"error": str(exc).strip("'\"")}, 404)
                except (ValueError, TypeError) as exc:
                    return _json({"error": str(exc)}, 400)
                return _json(result if result is not None else {"ok": True})

            return view

        def req(data: dict[str, Any], name: str) -> Any:
            if not data.get(name):
                raise ValueError(f"'{name}' is required")
            return data[name]

        routes: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {
            "deliver": (
                "POST",
                lambda d: self.deliver(
                    req(d, "to"),
                    req(d, "from"),
                    thread_id=d.get("thread_id"),
                    in_reply_to=d.get("in_reply_to"),
                    subject=d.get("subject"),
                    body=d.get("body") or "",
                    labels=d.get("labels"),
                    headers=d.get("headers"),
                    kind=d.get("kind"),
                    strict_threading=bool(d.get("strict_threading")),
                ),
            ),
            "user-send": (
                "POST",
                lambda d: self.user_send(
                    req(d, "user"),
                    thread_id=d.get("thread_id"),
                    body=d.get("body") or "",
                    to=d.get("to"),
                    subject=d.get("subject"),
                ),
            ),
            "drafts/edit": (
                "POST",
                lambda d: self.edit_draft(req(d, "user"), req(d, "draft_id"), d.get("body") or ""),
            ),
            "drafts/delete": ("POST", lambda d: self.delete_draft(req(d, "user"), req(d, "draft_id"))),
            "threads/delete": ("POST", lambda d: self.delete_thread(req(d, "user"), req(d, "thread_id"))),
            "labels": (
                "POST",
                lambda d: self.modify_labels(
                    req(d, "user"), req(d, "message_id"), d.get("add"), d.get("remove")
                ),
            ),
            "mailbox": ("GET", lambda d: self.mailbox(req(d, "user"))),
            "quota": ("GET", lambda d: self.quota(req(d, "user"))),
            "history/expire": (
                "POST",
                lambda d: self.expire_history(req(d, "user"), d.get("retention_seconds")),
            ),
            "rate-limit": ("POST", lambda d: self.set_rate_limit(d.get("units_per_second"), d.get("user"))),
            "privacy-audit": ("GET", lambda d: self.privacy_audit(req(d, "user"))),
            "watch": ("GET", lambda d: {"watch": self.watch_of(req(d, "user"))}),
            "watch/expire": ("POST", lambda d: self.expire_watch(req(d, "user"))),
            "watch/lifetime": ("POST", lambda d: self.set_watch_lifetime(d.get("seconds"))),
            "notifications": ("GET", lambda d: {"notifications": self.notifications(d.get("user"))}),
            "notification-interval": ("POST", lambda d: self.set_notification_interval(d.get("seconds"))),
            "reset": ("POST", lambda d: self.reset()),
        }
        for path, (http, fn) in routes.items():
            bp.add_url_rule(
                f"/_sandbox/gmail/{path}",
                "control_" + path.replace("/", "_").replace("-", "_"),
                wrap(fn),
                methods=[http],
            )
