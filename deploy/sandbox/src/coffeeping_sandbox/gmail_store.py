"""In-memory Gmail mailboxes: messages, threads, drafts, history, and the MIME views Gmail serves."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import email.utils
import html
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from .gmail_errors import invalid_argument

HISTORY_TYPES = ("messageAdded", "messageDeleted", "labelAdded", "labelRemoved")
_RECORD_KEY = {
    "messageAdded": "messagesAdded",
    "messageDeleted": "messagesDeleted",
    "labelAdded": "labelsAdded",
    "labelRemoved": "labelsRemoved",
}
_SUBJECT_PREFIX = re.compile(r"^\s*((re|fwd?|aw|wg|sv|antw)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_B64_CHARS = re.compile(r"^[A-Za-z0-9+/_\-]*={0,2}$")
_MSGID = re.compile(r"<[^<>\s]+>")


def normalize_subject(subject: str | None) -> str:
    s = _SUBJECT_PREFIX.sub("", subject or "")
    return " ".join(s.split()).lower()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def decode_raw(value: Any, field_name: str = "message.raw") -> bytes:
    """Decode a Google ByteString (base64url or base64, padding optional) strictly."""
    if not isinstance(value, str):
        raise invalid_argument(
            f"Invalid value at '{field_name}' (TYPE_BYTES), expected a base64 string", reason="invalid"
        )
    s = "".join(value.split())
    if not _B64_CHARS.match(s) or len(s.rstrip("=")) % 4 == 1:
        raise invalid_argument(
            f"Invalid value at '{field_name}' (TYPE_BYTES), Base64 decoding failed for \"{value[:40]}\"",
            reason="invalid",
        )
    s = s.replace("-", "+").replace("_", "/").rstrip("=")
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument(
            f"Invalid value at '{field_name}' (TYPE_BYTES), Base64 decoding failed for \"{value[:40]}\"",
            reason="invalid",
        ) from None


def new_message_id_header(domain: str = "mail.gmail.com") -> str:
    return f"<CA+sbx{secrets.token_urlsafe(24).replace('-', 'x').replace('_', 'y')}@{domain}>"


def message_ids_in(value: str | None) -> list[str]:
    return _MSGID.findall(value or "")


def parse_mime(raw: bytes) -> EmailMessage:
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
    except Exception:  # noqa: BLE001 - the parser is lenient; keep any bad input a 400
        raise invalid_argument("Invalid RFC 822 message") from None
    if not isinstance(msg, EmailMessage):  # pragma: no cover
        raise invalid_argument("Invalid RFC 822 message")
    return msg


def header_str(msg: EmailMessage, name: str) -> str | None:
    try:
        v = msg.get(name)
    except Exception:  # noqa: BLE001 - malformed MIME must never become a 500
        return None
    return None if v is None else str(v)


def headers_list(part: EmailMessage) -> list[dict[str, str]]:
    out = []
    for k, v in part.raw_items():
        try:
            value = str(part.policy.header_fetch_parse(k, v))
        except Exception:  # noqa: BLE001 - malformed MIME must never become a 500
            value = str(v)
        out.append({"name": k, "value": value.replace("\r\n", "").replace("\n", "")})
    return out


def text_body(msg: EmailMessage) -> str:
    try:
        part = msg.get_body(preferencelist=("plain", "html"))
        if part is None:
            return ""
        content = part.get_content()
        return content if isinstance(content, str) else ""
    except Exception:  # noqa: BLE001 - malformed MIME must never become a 500
        payload = msg.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""


def ensure_headers(raw: bytes, defaults: dict[str, str]) -> bytes:
    """Prepend headers the message lacks, as Gmail does for Message-ID, From and Date."""
    msg = parse_mime(raw)
    extra = b""
    for name, value in defaults.items():
        if msg.get(name) is None:
            extra += f"{name}: {value}\r\n".encode()
    return extra + raw


def build_mime(headers: dict[str, str | None], body: str) -> bytes:
    msg = EmailMessage()
    for k, v in headers.items():
        if v:
            msg[k] = v
    msg.set_content(body or "")
    return msg.as_bytes(policy=email.policy.SMTP)


@dataclass
class Message:
    id: str
    thread_id: str
    label_ids: list[str]
    raw: bytes
    internal_date: int
    history_id: int
    created: float = field(default_factory=time.time)

    @property
    def mime(self) -> EmailMessage:
        return parse_mime(self.raw)

    @property
    def received(self) -> bool:
        """True when the user did not write it (not sent and not a draft)."""
        return "SENT" not in self.label_ids and "DRAFT" not in self.label_ids

    def snippet(self) -> str:
        text = " ".join(text_body(self.mime).split())
        return html.escape(text[:200], quote=True).replace("&#x27;", "&#39;")

    def ref(self) -> dict[str, Any]:
        return {"id": self.id, "threadId": self.thread_id}

    def brief(self) -> dict[str, Any]:
        return {"id": self.id, "threadId": self.thread_id, "labelIds": list(self.label_ids)}

    def summary(self) -> dict[str, Any]:
        """The control API's view: headers and body decoded, for test assertions."""
        mime = self.mime
        return {
            "id": self.id,
            "threadId": self.thread_id,
            "labelIds": list(self.label_ids),
            "historyId": str(self.history_id),
            "internalDate": str(self.internal_date),
            "message_id": header_str(mime, "Message-ID"),
            "in_reply_to": header_str(mime, "In-Reply-To"),
            "references": header_str(mime, "References"),
            "from": header_str(mime, "From"),
            "to": header_str(mime, "To"),
            "cc": header_str(mime, "Cc"),
            "subject": header_str(mime, "Subject"),
            "headers": headers_list(mime),
            "body": text_body(mime),
        }

    def resource(self, fmt: str, metadata_headers: list[str] | None, with_snippet: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "threadId": self.thread_id, "labelIds": list(self.label_ids)}
        if with_snippet:
            out["snippet"] = self.snippet()
        out["sizeEstimate"] = len(self.raw)
        out["historyId"] = str(self.history_id)
        out["internalDate"] = str(self.internal_date)
        if fmt == "raw":
            out["raw"] = b64url(self.raw)
        elif fmt == "full":
            out["payload"] = payload(self.mime, "", self.id)
        elif fmt == "metadata":
            mime = self.mime
            hdrs = headers_list(mime)
            if metadata_headers:
                wanted = {h.lower() for h in metadata_headers}
                hdrs = [h for h in hdrs if h["name"].lower() in wanted]
            out["payload"] = {"mimeType": mime.get_content_type(), "headers": hdrs}
        return out

    def attachment(self, attachment_id: str) -> bytes | None:
        for part_id, part in walk_parts(self.mime, ""):
            if (
                not part.is_multipart()
                and part.get_filename()
                and attachment_id_for(self.id, part_id) == attachment_id
            ):
                data = part.get_payload(decode=True)
                return data if isinstance(data, bytes) else b""
        return None


def attachment_id_for(message_id: str, part_id: str) -> str:
    return "ANGjdJ" + b64url(f"{message_id}:{part_id}".encode()).rstrip("=")


def walk_parts(part: EmailMessage, part_id: str):
    yield part_id, part
    if part.is_multipart():
        for i, sub in enumerate(part.iter_parts()):
            yield from walk_parts(sub, f"{part_id}.{i}" if part_id else str(i))


def payload(part: EmailMessage, part_id: str, message_id: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {
        "partId": part_id,
        "mimeType": part.get_content_type(),
        "filename": part.get_filename() or "",
        "headers": headers_list(part),
    }
    if part.is_multipart():
        out["body"] = {"size": 0}
        out["parts"] = [
            payload(sub, f"{part_id}.{i}" if part_id else str(i), message_id)
            for i, sub in enumerate(part.iter_parts())
        ]
        return out
    data = part.get_payload(decode=True)
    data = data if isinstance(data, bytes) else b""
    if out["filename"]:
        out["body"] = {"attachmentId": attachment_id_for(message_id, part_id), "size": len(data)}
    else:
        out["body"] = {"size": len(data), "data": b64url(data)} if data else {"size": 0}
    return out


@dataclass
class HistoryRecord:
    id: int
    t: float
    kind: str  # one of HISTORY_TYPES
    message: dict[str, Any]  # {id, threadId, labelIds} at the time of the change
    label_ids: list[str] = field(default_factory=list)  # labels added/removed

    def resource(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"message": dict(self.message)}
        if self.kind in ("labelAdded", "labelRemoved"):
            entry["labelIds"] = list(self.label_ids)
        return {
            "id": str(self.id),
            "messages": [{"id": self.message["id"], "threadId": self.message["threadId"]}],
            _RECORD_KEY[self.kind]: [entry],
        }


@dataclass
class Draft:
    id: str
    message_id: str


@dataclass
class Mailbox:
    email: str
    history_id: int = field(default_factory=lambda: 1000 + secrets.randbelow(9000))
    messages: dict[str, Message] = field(default_factory=dict)
    threads: dict[str, list[str]] = field(default_factory=dict)  # thread id -> message ids in order
    drafts: dict[str, Draft] = field(default_factory=dict)
    history: list[HistoryRecord] = field(default_factory=list)
    min_start_history_id: int = 0  # startHistoryId below this -> 404
    retention_s: float | None = None
    watch: dict[str, Any] | None = None
    # Called (under the Gmail stand-in's lock) after every history record: push notifications.
    on_record: Callable[[Mailbox, HistoryRecord], None] | None = field(default=None, repr=False, compare=False)

    # -- history ---------------------------------------------------------------------------------------
    def _bump(self) -> int:
        self.history_id += 1
        return self.history_id

    def _record(self, kind: str, msg: Message, label_ids: list[str] | None = None) -> None:
        hid = self._bump()
        msg.history_id = hid
        record = HistoryRecord(hid, time.time(), kind, msg.brief(), list(label_ids or []))
        self.history.append(record)
        if self.on_record is not None:
            self.on_record(self, record)

    def oldest_valid_start(self) -> int:
        """The smallest startHistoryId still answered; drops records that left the retention window."""
        if self.retention_s is not None:
            cutoff = time.time() - self.retention_s
            expired = [r.id for r in self.history if r.t < cutoff]
            if expired:
                self.min_start_history_id = max(self.min_start_history_id, max(expired))
                self.history = [r for r in self.history if r.id > self.min_start_history_id]
        return self.min_start_history_id

    def expire_history(self, retention_s: float | None = None) -> None:
        """Without ``retention_s`` every start id before now expires; with it, keep only that window."""
        if retention_s is None:
            self.min_start_history_id = self.history_id
            self.history.clear()
        else:
            self.retention_s = retention_s
        self.oldest_valid_start()

    # -- messages --------------------------------------------------------------------------------------
    def new_message_id(self) -> str:
        while True:
            mid = f"{(int(time.time() * 1000) << 20 | secrets.randbits(20)):x}"[-16:]
            if mid not in self.messages:
                return mid

    def new_draft_id(self) -> str:
        while True:
            did = "r" + str(secrets.randbelow(10**19)).rjust(19, "1")
            if did not in self.drafts:
                return did

    def thread_for(self, raw_mime: EmailMessage, thread_id: str | None) -> str | None:
        """Gmail's rule: join only with threadId + In-Reply-To/References naming it + same subject."""
        if not thread_id or thread_id not in self.threads:
            return None
        refs = set(message_ids_in(header_str(raw_mime, "In-Reply-To")))
        refs |= set(message_ids_in(header_str(raw_mime, "References")))
        subject = normalize_subject(header_str(raw_mime, "Subject"))
        for mid in self.threads[thread_id]:
            other = self.messages[mid].mime
            other_id = header_str(other, "Message-ID")
            if other_id and other_id.strip() in refs:
                break
        else:
            return None
        subjects = {
            normalize_subject(header_str(self.messages[m].mime, "Subject")) for m in self.threads[thread_id]
        }
        return thread_id if subject in subjects else None

    def add_message(
        self, raw: bytes, label_ids: list[str], thread_id: str | None, *, force_thread: bool = False
    ) -> Message:
        mime = parse_mime(raw)
        mid = self.new_message_id()
        joined = (
            thread_id if (force_thread and thread_id in self.threads) else self.thread_for(mime, thread_id)
        )
        tid = joined or mid
        msg = Message(mid, tid, list(label_ids), raw, int(time.time() * 1000), self.history_id)
        self.messages[mid] = msg
        self.threads.setdefault(tid, []).append(mid)
        self._record("messageAdded", msg)
        return msg

    def delete_message(self, mid: str) -> None:
        msg = self.messages.pop(mid)
        ids = self.threads.get(msg.thread_id, [])
        if mid in ids:
            ids.remove(mid)
        if not ids:
            self.threads.pop(msg.thread_id, None)
        self._record("messageDeleted", msg)

    def change_labels(self, mid: str, add: list[str], remove: list[str]) -> Message:
        msg = self.messages[mid]
        added = [x for x in add if x not in msg.label_ids]
        removed = [x for x in remove if x in msg.label_ids and x not in added]
        if added:
            msg.label_ids.extend(added)
            self._record("labelAdded", msg, added)
        if removed:
            msg.label_ids[:] = [x for x in msg.label_ids if x not in removed]
            self._record("labelRemoved", msg, removed)
        return msg

    # -- drafts ----------------------------------------------------------------------------------------
    def create_draft(self, raw: bytes, thread_id: str | None) -> Draft:
        msg = self.add_message(raw, ["DRAFT"], thread_id)
        draft = Draft(self.new_draft_id(), msg.id)
        self.drafts[draft.id] = draft
        return draft

    def update_draft(
        self, draft: Draft, raw: bytes, thread_id: str | None, *, keep_thread: bool = False
    ) -> Draft:
        old = self.messages[draft.message_id]
        if keep_thread:
            thread_id = old.thread_id
        self.delete_message(old.id)
        msg = self.add_message(raw, ["DRAFT"], thread_id, force_thread=keep_thread)
        draft.message_id = msg.id
        return draft

    def delete_draft(self, draft: Draft) -> None:
        self.drafts.pop(draft.id, None)
        if draft.message_id in self.messages:
            self.delete_message(draft.message_id)

    def send_draft(self, draft: Draft) -> Message:
        old = self.messages[draft.message_id]
        self.drafts.pop(draft.id, None)
        self.delete_message(old.id)
        return self.add_message(old.raw, ["SENT"], old.thread_id, force_thread=True)

    def draft_resource(self, draft: Draft) -> dict[str, Any]:
        return {"id": draft.id, "message": self.messages[draft.message_id].brief()}

    # -- views -----------------------------------------------------------------------------------------
    def history_since(self, start: int) -> list[HistoryRecord]:
        return [r for r in self.history if r.id > start]

    def profile(self) -> dict[str, Any]:
        return {
            "emailAddress": self.email,
            "messagesTotal": len(self.messages),
            "threadsTotal": len(self.threads),
            "historyId": str(self.history_id),
        }

    def dump(self) -> dict[str, Any]:
        draft_by_msg = {d.message_id: d.id for d in self.drafts.values()}
        threads = []
        for tid, ids in self.threads.items():
            msgs = []
            for mid in ids:
                s = self.messages[mid].summary()
                if mid in draft_by_msg:
                    s["draft_id"] = draft_by_msg[mid]
                msgs.append(s)
            threads.append({"id": tid, "messages": msgs})
        drafts = []
        for d in self.drafts.values():
            s = self.messages[d.message_id].summary()
            drafts.append({"id": d.id, "message": s})
        return {
            "email": self.email,
            "historyId": str(self.history_id),
            "threads": threads,
            "drafts": drafts,
            "watch": self.watch,
        }
