"""Each event's message, who may publish it and who consumes it: docs/EVENTS.md as code (a test keeps
them equal).

Every routing key has its own message class (``coffeeping.events.v1``, ``protos/coffeeping/events``),
so the key of a message follows from its class: ``publish_in_tx`` takes the message alone, and the
consumer parses each payload as the class of its key (``payloads``).

The broker enforces it twice. Its topic permissions let each service's login publish only the routing
keys it produces (``deploy/bootstrap_broker.py`` writes them from here), and every message carries the
AMQP ``user_id`` property, which RabbitMQ checks against the connection's login. The consumer then acts
only on a message whose verified sender is a registered producer of its type, and whose payload, when
it names a service, names that sender.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from google.protobuf.message import Message

from coffeeping.events.v1 import events_pb2 as ev

from .. import services

ACCOUNTS, VAULT, MAILER, WATCHER = (s.name for s in (services.ACCOUNTS, services.VAULT, services.MAILER,
                                                    services.WATCHER))
BACKENDS = tuple(s.name for s in services.BACKENDS)


class EventSpec(NamedTuple):
    message: type[Message]  # the payload's class
    producers: tuple[str, ...]
    consumers: tuple[str, ...]


# routing key (the envelope's ``type``): its message, producers and consumers
EVENTS: dict[str, EventSpec] = {
    "gmail.connected": EventSpec(ev.GmailConnected, (VAULT,), (MAILER, WATCHER)),
    "gmail.disconnected": EventSpec(ev.GmailDisconnected, (VAULT,), (MAILER, WATCHER)),
    "sequence.started": EventSpec(ev.SequenceStarted, (MAILER,), (WATCHER,)),
    "sequence.message_sent": EventSpec(ev.SequenceMessageSent, (MAILER,), (WATCHER,)),
    "sequence.stopped": EventSpec(ev.SequenceStopped, (MAILER,), (WATCHER,)),
    "reply.detected": EventSpec(ev.ReplyDetected, (WATCHER,), (MAILER,)),
    "bounce.detected": EventSpec(ev.BounceDetected, (WATCHER,), (MAILER,)),
    "takeover.detected": EventSpec(ev.TakeoverDetected, (WATCHER,), (MAILER,)),
    "account.deletion_requested": EventSpec(ev.AccountDeletionRequested, (ACCOUNTS,), (MAILER, WATCHER)),
    "account.revoke_requested": EventSpec(ev.AccountRevokeRequested, (ACCOUNTS,), (VAULT,)),
    "account.purged": EventSpec(ev.AccountPurged, (MAILER, WATCHER, VAULT), (ACCOUNTS,)),
    "account.purge_failed": EventSpec(ev.AccountPurgeFailed, (MAILER, WATCHER, VAULT), (ACCOUNTS,)),
}

# The way back: one class per key, so a message's class names its key.
_KEYS: dict[type[Message], str] = {spec.message: key for key, spec in EVENTS.items()}
if len(_KEYS) != len(EVENTS):
    raise RuntimeError("two routing keys share a message class")


def routing_key(message: Message) -> str:
    """The routing key (event type) of a message; ``TypeError`` for anything that is no event message."""
    key = _KEYS.get(type(message))
    if key is None:
        raise TypeError(f"not a registered event message: {type(message).__name__}")
    return key


def message_class(event_type: str) -> type[Message]:
    """The message class of a routing key; ``KeyError`` for a key that is no event."""
    return EVENTS[event_type].message


def produced_by(service: str) -> tuple[str, ...]:
    return tuple(kind for kind, spec in EVENTS.items() if service in spec.producers)


def consumed_by(service: str) -> tuple[str, ...]:
    return tuple(kind for kind, spec in EVENTS.items() if service in spec.consumers)


def broker_login(prefix: str, service: str) -> str:
    """The RabbitMQ user of ``service`` in the deployment whose names start with ``prefix``."""
    return f"{prefix}-{service}"


# (event type, the broker-verified sender login or None, the service the payload names or None) -> allowed
SenderCheck = Callable[[str, "str | None", "str | None"], bool]


def registered_producers(prefix: str) -> SenderCheck:
    """The consumer's check: the sender is a registered producer of the type, and the service the
    payload names (``account.purged`` names its reporter) is that sender's own."""
    def allowed(event_type: str, login: str | None, claimed: str | None) -> bool:
        spec = EVENTS.get(event_type)
        producers = {broker_login(prefix, s): s for s in (spec.producers if spec else ())}
        if login not in producers:
            return False
        return claimed is None or producers[login] == claimed

    return allowed


__all__ = ["BACKENDS", "EVENTS", "EventSpec", "SenderCheck", "broker_login", "consumed_by", "message_class",
           "produced_by", "registered_producers", "routing_key"]
