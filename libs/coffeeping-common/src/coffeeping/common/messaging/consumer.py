"""Consumer: one database transaction per event, deduplicated by event id, ack after commit.

For each delivery the consumer parses the envelope and its payload as the registry's message for the
event's type (``parse_event``), opens ``user_tx(engine, event.user_id, system=True)``, inserts the
event id into ``<schema>.inbox`` (``ON CONFLICT DO NOTHING``) and, only if the id is new, calls
``handler(conn, event)`` in the same transaction (``event.message`` is the typed payload). The message
is acked after the commit, so a crash at any point either redelivers the event (nothing committed) or
redelivers a duplicate that the inbox absorbs (committed, not yet acked).

Before any of that, two refusals. A message whose broker-verified sender (the AMQP ``user_id``
property) is not a registered producer of its type, or whose payload names another service than its
sender, is logged and dead-lettered, never handled (``senders``, by default the registry's producers).
An event of a user this service has buried (``tombstone_key``) is acked and dropped without writing
anything, unless it is one of the deletion saga's own ``account.*`` events, whose handlers are
idempotent and must be able to report again.

A handler exception rolls back, waits ``min(retry_base * 2**n, retry_cap)`` seconds where ``n`` is the
quorum queue's ``x-delivery-count`` header, and rejects with requeue; after the queue's
``x-delivery-limit`` the broker dead-letters the message to ``<prefix>.<service>.dead``. A malformed
message (not JSON, no valid id / type / user_id, a type the registry does not know, or a payload that
is not the type's message: a field of the wrong type or a required field unset) is dead-lettered at
once. Fields the consumer does not know (a newer producer's) are ignored. Losing the database
connection is not the message's fault: the consumer keeps the delivery and retries it in-process until
the database is back (so an outage does not dead-letter good messages).

The handler may do external I/O (it runs inside the transaction, before the commit); it must then be
idempotent towards that system too, since the event can be redelivered after a crash. One consumer
processes one message at a time; run several for parallelism.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import psycopg
from google.protobuf.message import Message
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Consumer as KombuConsumer
from sqlalchemy import Connection as SAConnection
from sqlalchemy import Engine, bindparam
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import ReturningInsert

from ..db import InvalidUserId, user_tx, validate_user_id
from ..logging import request_context
from ..metrics import events as metrics
from ..tables import schema_tables
from ..tombstones import is_buried
from ..tracing import consumer_span
from ._names import check_binding_key, check_event_type, check_name, check_schema, service_queue
from .payloads import InvalidPayload, decode_payload
from .registry import SenderCheck, registered_producers
from .topology import DEFAULT_DELIVERY_LIMIT, declare_topology

log = logging.getLogger("coffeeping.messaging.consumer")


@dataclass(frozen=True)
class Event:
    """A delivered event: its envelope, and its payload parsed as the registry's message for ``type``
    (handlers narrow it by class, ``match event.message: case SequenceStopped() as stopped: ...``)."""

    id: str
    type: str
    user_id: str
    message: Message = field(repr=False)  # never in a log line
    occurred_at: str = ""
    request_id: str | None = None


Handler = Callable[[SAConnection, Event], None]

# The deletion saga's own events (``account.*``) still reach a purged user's handlers, which are
# idempotent: a retried or replayed purge must report again. Every other event for them is dropped.
SAGA_PREFIX = "account."
_OUTCOME_LOG = {"handled": "event handled", "duplicate": "duplicate event skipped",
                "dropped": "event for a deleted account dropped"}


class MalformedEvent(ValueError):
    pass


def parse_envelope(body: bytes | str) -> dict[str, Any]:
    """Decode and check an envelope, not its payload; raise ``MalformedEvent`` (never echoing the content)."""
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedEvent("not JSON") from None
    if not isinstance(event, dict):
        raise MalformedEvent("not an object")
    try:
        event["id"] = str(uuid.UUID(str(event["id"])))
        check_event_type(event["type"])
        validate_user_id(event["user_id"])
    except (KeyError, ValueError, TypeError, InvalidUserId):
        raise MalformedEvent("missing or invalid id, type or user_id") from None
    if not isinstance(event.get("payload", {}), dict):
        raise MalformedEvent("payload is not an object")
    event.setdefault("payload", {})
    return event


def parse_event(body: bytes | str) -> Event:
    """Decode an envelope and its payload as the message registered for its type; raise
    ``MalformedEvent`` (never echoing the content)."""
    envelope = parse_envelope(body)
    try:
        message = decode_payload(envelope["type"], envelope["payload"])
    except InvalidPayload as exc:
        raise MalformedEvent(str(exc)) from None
    request_id = envelope.get("request_id")
    return Event(envelope["id"], envelope["type"], envelope["user_id"], message,
                 str(envelope.get("occurred_at") or ""), str(request_id) if request_id else None)


def _claimed_service(message: Message) -> str | None:
    """The service a payload names as its reporter (``account.purged``), if its message has one."""
    if "service" not in message.DESCRIPTOR.fields_by_name:
        return None
    claimed = getattr(message, "service", "")
    return claimed if isinstance(claimed, str) and claimed else None


def _is_connection_loss(exc: BaseException) -> bool:
    """True when the database (not the event) is the problem: connection refused, dropped, reset."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        return type(orig) is psycopg.OperationalError or isinstance(orig, psycopg.errors.AdminShutdown)
    return isinstance(exc, psycopg.OperationalError) and type(exc) is psycopg.OperationalError


class Consumer:
    def __init__(
        self,
        amqp_url: str,
        prefix: str,
        service: str,
        routing_keys: Iterable[str],
        engine: Engine,
        schema: str,
        handler: Handler,
        prefetch: int = 10,
        *,
        delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
        retry_base: float = 0.2,
        retry_cap: float = 5.0,
        heartbeat: int = 30,
        reconnect_cap: float = 5.0,
        tombstone_key: bytes | None = None,
        senders: SenderCheck | None = None,
    ) -> None:
        self.amqp_url = amqp_url
        self.prefix = check_name(prefix, "prefix")
        self.service = check_name(service, "service")
        self.routing_keys = [check_binding_key(k) for k in routing_keys]
        self.engine = engine
        self.schema = check_schema(schema)
        inbox = schema_tables(self.schema).inbox
        # Built once (a statement object memoises its cache key); ``p_*`` are never a column's name, which
        # an INSERT would take for that column's value.
        self._record: ReturningInsert[tuple[uuid.UUID]] = (
            insert(inbox).values(event_id=bindparam("p_event", type_=inbox.c.event_id.type),
                                 user_id=bindparam("p_user", type_=inbox.c.user_id.type))
            .on_conflict_do_nothing(index_elements=[inbox.c.event_id])
            .returning(inbox.c.event_id))
        self.handler = handler
        self.prefetch = int(prefetch)
        self.delivery_limit = delivery_limit
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.heartbeat = heartbeat
        self.reconnect_cap = reconnect_cap
        self.tombstone_key = tombstone_key
        self.senders = senders or registered_producers(self.prefix)
        self.connected = threading.Event()  # set while consuming (tests, health checks)
        self._stop = threading.Event()
        self._conn: Connection | None = None

    # -- one message ----------------------------------------------------------------------------------
    def _sleep(self, seconds: float) -> None:
        """Sleep, interruptible by stop, keeping AMQP heartbeats going."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, 1.0))
            if self._conn is not None:
                with suppress(Exception):  # the drain loop will notice a dead connection
                    self._conn.heartbeat_check()

    def _apply(self, event: Event) -> str:
        """Run dedupe + handler in one transaction: ``handled``, ``duplicate``, or ``dropped`` (the user
        was purged here; nothing is written, not even the dedupe record that would name them)."""
        with user_tx(self.engine, event.user_id, system=True) as conn:
            if (self.tombstone_key is not None and not event.type.startswith(SAGA_PREFIX)
                    and is_buried(conn, self.schema, self.tombstone_key, event.user_id)):
                return "dropped"
            fresh = conn.execute(self._record, {"p_event": uuid.UUID(event.id), "p_user": event.user_id}).first()
            if fresh is None:
                return "duplicate"
            self.handler(conn, event)
            return "handled"

    def _on_message(self, message: Any) -> None:
        try:
            event = parse_event(message.body)
        except MalformedEvent as exc:
            log.error(
                "malformed message dead-lettered",
                extra={"reason": str(exc), "message_id": str(message.properties.get("message_id") or "")},
            )
            message.reject(requeue=False)
            metrics.consumed(metrics.UNKNOWN_TYPE, "malformed")
            return
        metrics.delivered(event.type, event.occurred_at)
        sender = message.properties.get("user_id")
        if not self.senders(event.type, sender, _claimed_service(event.message)):
            # RabbitMQ verified ``user_id`` against the publisher's login: a message another service
            # (or nobody) signed for this type is never acted on. Kept in the dead-letter queue.
            log.warning("message refused: not from a registered producer of its type",
                        extra={"event_id": event.id, "event_type": event.type, "sender": str(sender or "")})
            message.reject(requeue=False)
            metrics.consumed(event.type, "refused")
            return
        request_id = event.request_id or message.properties.get("correlation_id")
        info = {"event_id": event.id, "event_type": event.type}
        with request_context(str(request_id) if request_id else None), \
                consumer_span(event.type, message.headers, {"messaging.message.id": event.id}):
            db_failures = 0
            while True:
                try:
                    outcome = self._apply(event)
                except Exception as exc:  # noqa: BLE001
                    if _is_connection_loss(exc) and not self._stop.is_set():
                        db_failures += 1
                        delay = min(0.2 * 2 ** min(db_failures, 10), self.retry_cap)
                        log.warning("database unavailable, retrying event",
                                    extra={**info, "error": type(exc).__name__, "retry_in_s": delay})
                        self._sleep(delay)
                        if not self._stop.is_set():
                            continue
                    count = int((message.headers or {}).get("x-delivery-count") or 0)
                    delay = min(self.retry_base * 2**count, self.retry_cap)
                    log.warning(
                        "event handler failed, requeueing",
                        extra={**info, "error": type(exc).__name__, "delivery_count": count,
                               "retry_in_s": delay},
                    )
                    self._sleep(delay)
                    message.reject(requeue=True)
                    metrics.consumed(event.type, "requeued")
                    return
                break
            message.ack()
            metrics.consumed(event.type, outcome)
            log.info(_OUTCOME_LOG[outcome], extra=info)

    # -- loop -----------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set, reconnecting with capped backoff when RabbitMQ goes away."""
        self._stop = stop
        failures = 0
        queue = Queue(service_queue(self.prefix, self.service), no_declare=True)
        while not stop.is_set():
            conn = Connection(self.amqp_url, heartbeat=self.heartbeat, connect_timeout=5)
            try:
                conn.connect()
                self._conn = conn
                channel = conn.channel()
                declare_topology(channel, self.prefix, self.service, self.routing_keys, self.delivery_limit)
                consumer = KombuConsumer(
                    channel, queues=[queue], on_message=self._on_message, no_ack=False,
                    prefetch_count=self.prefetch, auto_declare=False,
                )
                with consumer:
                    self.connected.set()
                    if failures:
                        log.info("consumer reconnected", extra={"service": self.service})
                    failures = 0
                    while not stop.is_set():
                        with suppress(TimeoutError):
                            conn.drain_events(timeout=0.5)
                        conn.heartbeat_check()
            except Exception as exc:  # noqa: BLE001
                self.connected.clear()
                if stop.is_set():
                    break
                failures += 1
                delay = min(0.2 * 2 ** min(failures, 10), self.reconnect_cap)
                log.warning("consumer connection failed, reconnecting",
                            extra={"service": self.service, "error": type(exc).__name__, "retry_in_s": delay})
                stop.wait(delay)
            finally:
                self.connected.clear()
                self._conn = None
                with suppress(Exception):
                    conn.release()
