"""Building outgoing messages, and the header checks that keep them safe.

Python 3.11.7's ``email`` package lets a header be injected by a value carrying CR/LF or by an RFC 2047
encoded-word that decodes to one (CVE-2024-6923). So every header value is checked here, before the
``email`` package sees it, and the built message is parsed back and its header set compared with what
we meant to write.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import quopri
import re
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser

MAX_SUBJECT_CHARS = 250
MAX_NAME_CHARS = 200
MAX_EMAIL_CHARS = 254

# C0 controls, DEL, C1 controls and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ENCODED_WORD = re.compile(r"=\?([^?\s]*)\?([bBqQ])\?([^?\s]*)\?=")
# A deliberately plain address: no quoted local parts, comments, routes or IP literals.
_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+$")


class UnsafeHeader(ValueError):
    """A header value that could change the message's structure; the message says why, not the value."""


def _decode_word(charset: str, encoding: str, text: str) -> str:
    try:
        if encoding in "bB":
            raw = base64.b64decode(text + "=" * (-len(text) % 4))
        else:
            raw = quopri.decodestring(text.replace("_", " ").encode("ascii"), header=True)
        return raw.decode(charset.split("*", 1)[0] or "ascii", errors="strict")
    except (binascii.Error, LookupError, UnicodeError, ValueError):
        raise UnsafeHeader("contains an encoded-word that cannot be decoded") from None


def check_header_text(value: str) -> str:
    """Refuse control characters, directly or inside RFC 2047 encoded-words; return the value."""
    if not isinstance(value, str):
        raise UnsafeHeader("must be text")
    if _CONTROL.search(value):
        raise UnsafeHeader("must not contain line breaks or control characters")
    for match in _ENCODED_WORD.finditer(value):
        decoded = _decode_word(*match.groups())
        if _CONTROL.search(decoded):
            raise UnsafeHeader("contains an encoded-word that hides line breaks or control characters")
        if _ENCODED_WORD.search(decoded):
            raise UnsafeHeader("contains a nested encoded-word")
    return value


def check_subject(value: str) -> str:
    check_header_text(value)
    if not value.strip():
        raise UnsafeHeader("must not be empty")
    if len(value) > MAX_SUBJECT_CHARS:
        raise UnsafeHeader(f"must be at most {MAX_SUBJECT_CHARS} characters")
    return value


def check_name(value: str) -> str:
    check_header_text(value)
    if len(value) > MAX_NAME_CHARS:
        raise UnsafeHeader(f"must be at most {MAX_NAME_CHARS} characters")
    if _ENCODED_WORD.search(value):
        # A display name is ours to encode; a pre-encoded one is only ever a trick.
        raise UnsafeHeader("must not contain encoded-words")
    return value


def check_address(value: str) -> str:
    check_header_text(value)
    if len(value) > MAX_EMAIL_CHARS or not _ADDRESS.match(value):
        raise UnsafeHeader("must be a plain email address like name@example.com")
    return value


def reply_subject(subject: str) -> str:
    """The subject with exactly one ``Re: `` in front."""
    stripped = re.sub(r"^\s*((re|fwd?)\s*:\s*)+", "", subject, flags=re.IGNORECASE)
    return f"Re: {stripped}"


def new_message_id(from_email: str) -> str:
    domain = from_email.rpartition("@")[2] or "coffeeping.invalid"
    return f"<cp.{uuid.uuid4().hex}@{domain}>"


@dataclass(frozen=True)
class Outgoing:
    to_email: str
    to_name: str | None
    from_email: str | None
    subject: str
    body: str
    message_id: str
    in_reply_to: str | None = None
    references: str | None = None


def _format_address(address: str, name: str | None) -> str:
    from email.headerregistry import Address

    return str(Address(display_name=name or "", addr_spec=address))


def build(message: Outgoing) -> bytes:
    """RFC 5322 bytes (CRLF) for ``message``; raises ``UnsafeHeader`` on any unsafe value."""
    check_address(message.to_email)
    if message.to_name:
        check_name(message.to_name)
    if message.from_email:
        check_address(message.from_email)
    check_subject(message.subject)
    for value in (message.message_id, message.in_reply_to, message.references):
        if value is not None:
            check_header_text(value)
    msg = EmailMessage(policy=email.policy.SMTP)
    expected = {"to": 1, "subject": 1, "message-id": 1}
    msg["To"] = _format_address(message.to_email, message.to_name)
    if message.from_email:
        msg["From"] = message.from_email
        expected["from"] = 1
    msg["Subject"] = message.subject
    msg["Message-ID"] = message.message_id
    if message.in_reply_to:
        msg["In-Reply-To"] = message.in_reply_to
        expected["in-reply-to"] = 1
    if message.references:
        msg["References"] = message.references
        expected["references"] = 1
    msg.set_content(message.body, subtype="plain", charset="utf-8")
    raw = msg.as_bytes(policy=email.policy.SMTP)
    _verify(raw, expected)
    return raw


def _verify(raw: bytes, expected: dict[str, int]) -> None:
    """Parse the bytes back: the top-level headers must be exactly the ones we wrote."""
    parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
    seen: dict[str, int] = {}
    for name in parsed:
        key = name.lower()
        seen[key] = seen.get(key, 0) + 1
    for structural in ("mime-version", "content-type", "content-transfer-encoding"):
        seen.pop(structural, None)
    if seen != expected:
        raise UnsafeHeader("the built message's headers differ from the ones intended")
    for name in expected:
        if _CONTROL.search(str(parsed[name])):
            raise UnsafeHeader("a header decodes to a control character")


def to_raw(data: bytes) -> str:
    """The Gmail API's ``raw`` field: base64url of the RFC 5322 bytes."""
    return base64.urlsafe_b64encode(data).decode("ascii")
