"""Names and validation shared by the messaging modules (exchanges, queues, identifiers)."""

from __future__ import annotations

import re

from ..db import check_schema

__all__ = ["check_binding_key", "check_event_type", "check_name", "check_schema", "dead_queue", "dlx_exchange",
           "events_exchange", "notify_channel", "service_queue"]

# Exchange/queue name parts.
_NAME_PART = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
# A routing key / event type: dotted words, no AMQP topic wildcards.
_EVENT_TYPE = re.compile(r"^[a-z0-9_\-]+(\.[a-z0-9_\-]+)*$")
# A binding key may use the topic wildcards ``*`` and ``#`` as whole words.
_BINDING_KEY = re.compile(r"^([a-z0-9_\-]+|\*|#)(\.([a-z0-9_\-]+|\*|#))*$")


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or len(value) > 100 or not _NAME_PART.match(value):
        raise ValueError(f"invalid {what}")
    return value


def check_event_type(event_type: str) -> str:
    if not isinstance(event_type, str) or len(event_type) > 200 or not _EVENT_TYPE.match(event_type):
        raise ValueError("invalid event type")
    return event_type


def check_binding_key(key: str) -> str:
    if not isinstance(key, str) or len(key) > 200 or not _BINDING_KEY.match(key):
        raise ValueError("invalid routing key")
    return key


def events_exchange(prefix: str) -> str:
    return f"{check_name(prefix, 'prefix')}.events"


def dlx_exchange(prefix: str) -> str:
    return f"{check_name(prefix, 'prefix')}.dlx"


def service_queue(prefix: str, service: str) -> str:
    return f"{check_name(prefix, 'prefix')}.{check_name(service, 'service')}"


def dead_queue(prefix: str, service: str) -> str:
    return f"{service_queue(prefix, service)}.dead"


def notify_channel(schema: str) -> str:
    return f"{check_schema(schema)}_outbox"
