"""Header safety at MIME build: the second line of defence behind the API's own checks."""

from __future__ import annotations

import email
import email.policy

import pytest

from coffeeping_mailer.mime import Outgoing, UnsafeHeader, build, check_subject, reply_subject


def _message(**fields):
    base = {"to_email": "bob@example.com", "to_name": "Bob", "from_email": "me@gmail.com", "subject": "Hello",
            "body": "Hi Bob", "message_id": "<cp.1@gmail.com>"}
    return Outgoing(**{**base, **fields})


@pytest.mark.parametrize("fields", [
    {"subject": "Hello\r\nBcc: victim@example.com"},
    {"subject": "Hello\nBcc: victim@example.com"},
    {"subject": "Hello\rBcc: victim@example.com"},
    {"subject": "=?utf-8?q?Hello=0D=0ABcc:_victim@example.com?="},
    {"subject": "=?UTF-8?B?SGVsbG8KQmNjOiB2aWN0aW1AZXhhbXBsZS5jb20=?="},
    {"subject": "x\x00y"},
    {"subject": "x\u2028y"},
    {"subject": "=?utf-8?q?=3D=3Futf-8=3Fq=3F=3D0A=3F=3D?="},  # nested encoded-word
    {"to_name": "Bob\r\nBcc: victim@example.com"},
    {"to_name": "=?utf-8?q?Bob?="},
    {"to_email": "bob@example.com\r\nBcc: victim@example.com"},
    {"to_email": "bob@example.com, victim@example.com"},
    {"to_email": "Bob <bob@example.com>"},
    {"in_reply_to": "<a@b>\r\nBcc: victim@example.com"},
])
def test_unsafe_header_values_are_refused_before_the_email_package_sees_them(fields):
    with pytest.raises(UnsafeHeader):
        build(_message(**fields))


def test_a_built_message_has_exactly_the_intended_headers_and_a_utf8_body():
    raw = build(_message(subject="Café ☕ time", to_name="Zoë", body="Line 1\nLigne 2 é",
                         in_reply_to="<a@b>", references="<a@b>"))
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert str(parsed["Subject"]) == "Café ☕ time"
    assert parsed["To"].addresses[0].display_name == "Zoë"
    assert parsed["In-Reply-To"] == "<a@b>"
    assert parsed.get_content().replace("\r\n", "\n").strip() == "Line 1\nLigne 2 é"
    assert b"\r\n" in raw and b"\n\n" not in raw.replace(b"\r\n", b"")


def test_reply_subject_has_exactly_one_re():
    assert reply_subject("Hello") == "Re: Hello"
    assert reply_subject("Re: Hello") == "Re: Hello"
    assert reply_subject("RE: re: Fwd: Hello") == "Re: Hello"


def test_a_harmless_encoded_word_is_accepted():
    assert check_subject("=?utf-8?q?Caf=C3=A9?=") == "=?utf-8?q?Caf=C3=A9?="
