"""Messaging backbone: transactional outbox, confirmed relay, deduplicating consumer, dead letters.

Topology (``declare_topology``): topic exchange ``<prefix>.events``; per consuming service a quorum
queue ``<prefix>.<service>`` with ``x-delivery-limit`` dead-lettering through ``<prefix>.dlx`` into
``<prefix>.<service>.dead``. Events are JSON envelopes
``{"id", "type", "user_id", "occurred_at", "request_id", "payload"}`` routed by ``type``; the payload is
the JSON mapping of the protobuf message the registry names for the type (``coffeeping.events.v1``):
``publish_in_tx(conn, schema, user_id, message)`` writes one, and handlers receive an ``Event`` whose
``message`` is that type's class.

Log lines carry event ids, types and counts, never payloads.
"""

from __future__ import annotations

from .consumer import Consumer, Event, Handler, MalformedEvent, parse_envelope, parse_event
from .dead_letters import dead_letter_janitor, forget_dead_letters, requeue_dead_letters
from .outbox import (
    OutboxRelay,
    forget_user,
    make_envelope,
    pending_count,
    publish_in_tx,
)
from .payloads import InvalidPayload, decode_payload, encode_payload
from .registry import (
    BACKENDS,
    EVENTS,
    broker_login,
    consumed_by,
    message_class,
    produced_by,
    registered_producers,
    routing_key,
)
from .topology import DEFAULT_DELIVERY_LIMIT, declare_events_exchange, declare_topology, delete_topology

__all__ = [
    "BACKENDS",
    "EVENTS",
    "broker_login",
    "consumed_by",
    "message_class",
    "produced_by",
    "registered_producers",
    "routing_key",
    "DEFAULT_DELIVERY_LIMIT",
    "Consumer",
    "Event",
    "Handler",
    "InvalidPayload",
    "MalformedEvent",
    "OutboxRelay",
    "dead_letter_janitor",
    "declare_events_exchange",
    "declare_topology",
    "decode_payload",
    "delete_topology",
    "encode_payload",
    "forget_dead_letters",
    "forget_user",
    "make_envelope",
    "parse_envelope",
    "parse_event",
    "pending_count",
    "publish_in_tx",
    "requeue_dead_letters",
]
