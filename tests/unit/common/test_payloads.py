"""Event payloads are the registry's protobuf messages: every event has one, it round-trips through an
envelope, old dict payloads still parse, and a body that is not its type's message is refused."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from coffeeping.common.messaging import (
    EVENTS,
    Event,
    InvalidPayload,
    MalformedEvent,
    decode_payload,
    encode_payload,
    make_envelope,
    message_class,
    parse_event,
    routing_key,
)
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping.vault.v1 import vault_pb2

USER = "user_2abcDEF"


def sample(cls: type[Message]) -> Message:
    """A message of ``cls`` with every field set."""
    message = cls()
    for field in cls.DESCRIPTOR.fields:
        if field.message_type is not None:  # google.protobuf.Timestamp
            getattr(message, field.name).FromDatetime(dt.datetime(2026, 11, 30, 9, 15, 0, 123000, tzinfo=dt.UTC))
        elif field.is_repeated:
            getattr(message, field.name).extend([f"{field.name}-1", f"{field.name}-2"])
        elif field.type == FieldDescriptor.TYPE_STRING:
            setattr(message, field.name, f"{field.name}-1")
        else:
            setattr(message, field.name, 7)
    return message


def body(event_type: str, payload: object) -> bytes:
    envelope = {"id": "6b0c1f6e-8a43-4a52-9f0e-4e0c51a7a9b1", "type": event_type, "user_id": USER,
                "occurred_at": "2026-11-30T09:15:00Z", "request_id": None, "payload": payload}
    return json.dumps(envelope).encode()


def test_every_registered_event_has_its_own_message_class_from_events_proto():
    classes = [spec.message for spec in EVENTS.values()]
    assert len(set(classes)) == len(classes)
    assert {cls.DESCRIPTOR.full_name for cls in classes} == {
        f"coffeeping.events.v1.{name}" for name in ev.DESCRIPTOR.message_types_by_name}
    for event_type, spec in EVENTS.items():
        assert routing_key(spec.message()) == event_type
        assert message_class(event_type) is spec.message


@pytest.mark.parametrize("event_type", sorted(EVENTS))
def test_every_event_round_trips_through_its_envelope(event_type):
    message = sample(EVENTS[event_type].message)
    envelope = make_envelope(USER, message, request_id="req-1")
    assert envelope["type"] == event_type and envelope["user_id"] == USER
    event = parse_event(json.dumps(envelope).encode())
    assert isinstance(event, Event)
    assert (event.id, event.type, event.user_id, event.request_id) == (envelope["id"], event_type, USER, "req-1")
    assert type(event.message) is type(message) and event.message == message
    # The payload is the JSON mapping with the proto field names, readable as it is.
    assert set(envelope["payload"]) == {f.name for f in message.DESCRIPTOR.fields}


def test_the_payloads_services_wrote_as_dicts_before_still_parse_as_the_messages():
    """Outbox rows and dead letters written by the previous release keep their meaning."""
    old = {
        "gmail.connected": {"email": "ann@example.com"},
        "gmail.disconnected": {"reason": "needs_reconnect"},
        "sequence.started": {"sequence_id": "s1", "contact_id": "c1", "contact_email": "bob@example.com",
                             "thread_id": "t1", "message_id": "m1", "history_id": "4242", "user_email": "a@x.com"},
        "sequence.message_sent": {"sequence_id": "s1", "thread_id": "t1", "message_id": "m1"},
        "sequence.stopped": {"sequence_id": "s1", "reason": "replied"},
        "reply.detected": {"contact_id": "c1", "sequence_ids": ["s1", "s2"], "thread_id": "t1", "message_id": "m2",
                           "detected_at": "2026-11-30T09:15:00.123456Z"},
        "bounce.detected": {"contact_id": "c1", "sequence_ids": [], "thread_id": "t1", "message_id": "m2",
                            "detected_at": "2026-11-30T09:15:00Z"},
        "takeover.detected": {"contact_id": "c1", "sequence_ids": ["s1"], "thread_id": "t1", "message_id": "m3",
                              "detected_at": "2026-11-30T09:15:00+00:00"},
        "account.deletion_requested": {"deletion_id": "d1"},
        "account.revoke_requested": {"deletion_id": "d1"},
        "account.purged": {"deletion_id": "d1", "service": "mailer", "drafts_not_removed": 2},
        "account.purge_failed": {"deletion_id": "d1", "service": "token-vault", "error": "google_unavailable"},
    }
    assert set(old) == set(EVENTS)
    for event_type, payload in old.items():
        event = parse_event(body(event_type, payload))
        assert isinstance(event.message, EVENTS[event_type].message)
    started = decode_payload("sequence.started", old["sequence.started"])
    assert isinstance(started, ev.SequenceStarted) and started.history_id == 4242
    assert not decode_payload("sequence.started", {**old["sequence.started"], "history_id": None}).HasField(
        "history_id")
    reply = decode_payload("reply.detected", old["reply.detected"])
    assert isinstance(reply, ev.ReplyDetected)
    assert reply.detected_at.ToDatetime(tzinfo=dt.UTC) == dt.datetime(2026, 11, 30, 9, 15, 0, 123456, tzinfo=dt.UTC)
    assert list(reply.sequence_ids) == ["s1", "s2"]


def test_fields_from_a_newer_producer_are_ignored():
    event = parse_event(body("sequence.stopped", {"sequence_id": "s1", "reason": "replied", "added_later": {"x": 1}}))
    assert event.message == ev.SequenceStopped(sequence_id="s1", reason="replied")


@pytest.mark.parametrize(("event_type", "payload"), [
    ("reply.detected", {"sequence_id": "s1", "reason": "replied"}),  # a sequence.stopped under another key
    ("sequence.stopped", {"reason": "replied"}),  # a required field unset
    ("sequence.stopped", {"sequence_id": "", "reason": "replied"}),
    ("account.purged", {"deletion_id": "d1", "service": "mailer", "drafts_not_removed": "many"}),
    ("account.purged", {"deletion_id": "d1", "service": "mailer", "drafts_not_removed": -1}),
    ("reply.detected", {"contact_id": "c1", "sequence_ids": "s1", "thread_id": "t1", "message_id": "m1"}),
    ("reply.detected", {"contact_id": "c1", "thread_id": "t1", "message_id": "m1", "detected_at": "yesterday"}),
    ("sequence.started", {"sequence_id": "s1", "contact_id": "c1", "thread_id": "t1", "history_id": "abc"}),
    ("account.deletion_requested", {"deletion_id": 42}),
    ("account.deletion_requested", ["d1"]),
    ("account.deletion_requested", "d1"),
    ("contact.deleted", {"contact_id": "c1"}),  # not a registered type
])
def test_a_body_that_is_not_its_types_message_is_refused(event_type, payload):
    with pytest.raises(MalformedEvent) as refused:
        parse_event(body(event_type, payload))
    with pytest.raises(InvalidPayload):
        decode_payload(event_type, payload)
    assert "many" not in str(refused.value) and "yesterday" not in str(refused.value)  # never echoes content


def test_only_a_registered_event_message_with_its_required_fields_can_be_published():
    with pytest.raises(TypeError):
        make_envelope(USER, {"sequence_id": "s1"})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_payload(vault_pb2.AccessToken())
    with pytest.raises(ValueError, match="sequence_id"):
        make_envelope(USER, ev.SequenceStopped(reason="completed"))
    key, payload = encode_payload(ev.AccountPurged(deletion_id="d1", service="mailer"))
    assert (key, payload) == ("account.purged", {"deletion_id": "d1", "service": "mailer"})


def test_an_events_repr_never_shows_its_payload():
    event = parse_event(body("gmail.connected", {"email": "secret.person@example.com"}))
    assert "secret.person" not in repr(event)
