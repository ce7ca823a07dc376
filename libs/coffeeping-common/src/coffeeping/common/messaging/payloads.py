"""Event payloads: a registered message to the JSON object an envelope carries, and back.

A payload is the protobuf JSON mapping of the event's message with the proto field names
(``json_format.MessageToDict(message, preserving_proto_field_name=True)``), i.e. the same object the
services wrote as dicts before the messages existed: outbox rows and dead letters written then parse
as the messages now. Reading ignores fields this version does not know (a newer producer may have
added some) but refuses a payload whose known fields have the wrong JSON type, or that leaves a field
marked ``REQUIRED`` (``google.api.field_behavior`` in ``protos/coffeeping/events``) unset. Writing
refuses such a message too, so that no producer publishes what its consumers would refuse.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from .registry import EVENTS, routing_key

__all__ = ["InvalidPayload", "decode_payload", "encode_payload", "missing_required"]


# The extension ``(google.api.field_behavior)``; the generated .pyi types it as a plain FieldDescriptor,
# which ``Extensions[...]`` does not accept.
_FIELD_BEHAVIOR: Any = field_behavior_pb2.field_behavior


class InvalidPayload(ValueError):
    """A payload that is not its event's message (the reason never echoes the content)."""


@cache
def _required(descriptor: Descriptor) -> frozenset[str]:
    return frozenset(
        field.name for field in descriptor.fields
        if field_behavior_pb2.REQUIRED in field.GetOptions().Extensions[_FIELD_BEHAVIOR]
    )


def missing_required(message: Message) -> list[str]:
    """The ``REQUIRED`` fields that ``message`` leaves unset (empty string, zero, no element), sorted."""
    present = {field.name for field, _ in message.ListFields()}
    return sorted(_required(message.DESCRIPTOR) - present)


def encode_payload(message: Message) -> tuple[str, dict[str, Any]]:
    """The routing key of an event message and its payload.

    Raises ``TypeError`` for a message that is no registered event, ``ValueError`` for one that leaves
    a ``REQUIRED`` field unset.
    """
    key = routing_key(message)
    missing = missing_required(message)
    if missing:
        raise ValueError(f"{key}: required field(s) unset: {', '.join(missing)}")
    return key, json_format.MessageToDict(message, preserving_proto_field_name=True)


def decode_payload(event_type: str, payload: object) -> Message:
    """The payload of an event of ``event_type`` as its registered message; ``InvalidPayload`` when it is
    not one (an unregistered type, not an object, a field of the wrong type, a required field unset)."""
    spec = EVENTS.get(event_type)
    if spec is None:
        raise InvalidPayload("not a registered event type")
    if not isinstance(payload, dict):
        raise InvalidPayload("payload is not an object")
    name = spec.message.DESCRIPTOR.name
    try:
        message = json_format.ParseDict(payload, spec.message(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError):
        raise InvalidPayload(f"payload is not a valid {name}") from None
    missing = missing_required(message)
    if missing:
        raise InvalidPayload(f"payload is not a valid {name}: {', '.join(missing)} unset")
    return message
