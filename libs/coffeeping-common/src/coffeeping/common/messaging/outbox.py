"""Transactional outbox: events written with the change that caused them, relayed to RabbitMQ.

``publish_in_tx`` inserts the event envelope into ``<schema>.outbox`` inside the caller's transaction
(and queues a ``NOTIFY <schema>_outbox`` that PostgreSQL delivers only if it commits). It takes the
event's message (``coffeeping.events.v1``): the routing key is the registry's for the message's class,
and the payload is the message's JSON mapping (``payloads``). The
``OutboxRelay`` claims unpublished rows with ``FOR UPDATE SKIP LOCKED``, publishes each with publisher
confirms and ``mandatory=True`` and marks it published after the broker's confirm. A message the broker
returns as unroutable stays unpublished (``attempts`` is incremented and it is retried later with
backoff). A crash after the confirm and before the commit publishes the row again: consumers
deduplicate by event id. The relay publishes the stored envelope as it is (``body jsonb``), so rows
written before the payloads were messages are published unchanged: their payloads are the same JSON
objects, and consumers parse them as the messages.

Published rows are deleted as soon as the broker confirms them (``retention=timedelta(0)``, the
default): an event may name a user, and a purged user must leave nothing behind. A positive
``retention`` keeps them that long for inspection instead.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from google.protobuf.message import Message
from kombu.connection import Connection
from kombu.entity import Exchange
from kombu.messaging import Producer
from sqlalchemy import Connection as SAConnection
from sqlalchemy import (
    Delete,
    Engine,
    Integer,
    Select,
    Text,
    Update,
    Uuid,
    any_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from ..db import system_tx, validate_user_id
from ..tables import schema_tables
from ..tracing import producer_span, trace_context
from ._names import check_event_type, check_name, check_schema, events_exchange, notify_channel
from .payloads import encode_payload
from .topology import declare_events_exchange

log = logging.getLogger("coffeeping.messaging.outbox")

try:  # the request id of the current request, if the logging module is there
    from ..logging import current_request_id
except ImportError:  # pragma: no cover
    def current_request_id() -> str:
        return ""


def make_envelope(user_id: str, message: Message, request_id: str | None = None) -> dict[str, Any]:
    """The envelope of an event about ``user_id`` whose payload is ``message``, a registered event message
    (``TypeError`` otherwise; ``ValueError`` when it leaves a required field unset)."""
    event_type, payload = encode_payload(message)
    envelope: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "type": check_event_type(event_type),
        "user_id": validate_user_id(user_id),
        "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "request_id": request_id if request_id is not None else (current_request_id() or None),
        "payload": payload,
    }
    if (trace := trace_context()) is not None:  # W3C trace headers only: ids, nothing about the user
        envelope["trace"] = trace
    return envelope


@functools.cache
def _publish_statement(schema: str) -> Select[Any]:
    """The outbox insert and the notification of ``schema`` as one statement (one round trip), built once
    per schema (a statement object memoises its cache key). The parameters are ``p_*``: never a column's
    name, which an INSERT would take for that column's value."""
    outbox = schema_tables(schema).outbox
    row = insert(outbox).values(
        id=bindparam("p_id", type_=outbox.c.id.type), user_id=bindparam("p_user", type_=outbox.c.user_id.type),
        routing_key=bindparam("p_type", type_=outbox.c.routing_key.type),
        body=bindparam("p_body", type_=outbox.c.body.type)).returning(outbox.c.id).cte("written")
    return select(func.pg_notify(notify_channel(schema), "")).select_from(row)


def publish_in_tx(
    conn: SAConnection,
    schema: str,
    user_id: str,
    message: Message,
    request_id: str | None = None,
) -> str:
    """Write the event ``message`` about ``user_id`` into ``<schema>.outbox`` inside the caller's open
    transaction; return its id. Its routing key is the registry's for the message's class.

    Call it inside ``user_tx(engine, user_id, system=True)`` or ``system_tx(engine)``. Nothing is sent
    unless the transaction commits. ``request_id`` defaults to the logging context's request id.
    """
    if not conn.in_transaction():
        raise RuntimeError("publish_in_tx needs an open transaction")
    envelope = make_envelope(user_id, message, request_id)
    # The notification is delivered on commit only; identical ones in one transaction are folded into one.
    conn.execute(_publish_statement(schema), {"p_id": uuid.UUID(envelope["id"]), "p_user": envelope["user_id"],
                                              "p_type": envelope["type"], "p_body": envelope})
    event_id: str = envelope["id"]
    return event_id


class _Listener:
    """A dedicated autocommit psycopg connection LISTENing on ``<schema>_outbox``."""

    def __init__(self, engine: Engine, channel: str) -> None:
        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._conn = psycopg.connect(url, autocommit=True, connect_timeout=5,
                                     application_name="coffeeping-outbox-listen")
        # LISTEN is a command of this connection, not a query (psycopg, outside SQLAlchemy); ``channel``
        # is ``notify_channel``'s, built from a checked schema name.
        self._conn.execute(f"LISTEN {channel}")

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a notification; True if one came."""
        got = False
        for _ in self._conn.notifies(timeout=timeout, stop_after=1):
            got = True
        if got:  # swallow the burst that came with it
            for _ in self._conn.notifies(timeout=0.0):
                pass
        return got

    def close(self) -> None:
        with suppress(Exception):
            self._conn.close()


class _RelayStatements:
    """The relay's statements on one schema's outbox, built once per schema (``_relay_statements``)."""

    def __init__(self, schema: str) -> None:
        outbox = schema_tables(schema).outbox
        row_ids = bindparam("p_ids", type_=ARRAY(outbox.c.id.type))
        # Unpublished rows but those in ``p_skip``, ``p_limit`` at most. The body as PostgreSQL prints
        # it: published as stored, byte for byte.
        self.claim: Select[Any] = (
            select(outbox.c.id, outbox.c.routing_key, cast(outbox.c.body, Text).label("body"), outbox.c.attempts)
            .where(outbox.c.published_at.is_(None),
                   ~(outbox.c.id == any_(bindparam("p_skip", type_=ARRAY(Uuid(as_uuid=False))))))
            .order_by(outbox.c.created_at, outbox.c.id)
            .limit(bindparam("p_limit", type_=Integer()))
            .with_for_update(skip_locked=True)
        )
        self.delete: Delete = delete(outbox).where(outbox.c.id == any_(row_ids))
        self.mark_published: Update = (update(outbox).where(outbox.c.id == any_(row_ids))
                                       .values(published_at=func.now(), attempts=outbox.c.attempts + 1))
        self.count_attempt: Update = (update(outbox).where(outbox.c.id == any_(row_ids))
                                      .values(attempts=outbox.c.attempts + 1))


@functools.cache
def _relay_statements(schema: str) -> _RelayStatements:
    return _RelayStatements(schema)


class OutboxRelay:
    """Moves committed outbox rows of one schema to ``<prefix>.events``.

    Several relays may run against the same schema (rows are claimed with ``SKIP LOCKED``). Order is
    by ``created_at`` within a batch but not guaranteed across failures: consumers must not rely on it.
    A pass publishes up to ``batch_size`` rows and waits once for their confirms; while rows keep
    coming, passes are ``linger_s`` apart so that batches gather.
    """

    def __init__(
        self,
        engine: Engine,
        schema: str,
        amqp_url: str,
        prefix: str,
        batch_size: int = 100,
        *,
        retention: timedelta = timedelta(0),
        confirm_timeout: float = 10.0,
        listen: bool = True,
        max_backoff: float = 10.0,
        linger_s: float = 0.025,
    ) -> None:
        self.engine = engine
        self.schema = check_schema(schema)
        self._outbox = schema_tables(self.schema).outbox
        self._statements = _relay_statements(self.schema)
        self.amqp_url = amqp_url
        self.prefix = check_name(prefix, "prefix")
        self.batch_size = int(batch_size)
        self.retention = retention
        self.confirm_timeout = confirm_timeout
        self.listen = listen
        self.max_backoff = max_backoff
        self.linger_s = linger_s
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._returned: set[str] = set()
        self._next_tag = 0  # the channel's last delivery tag (publisher confirms count from 1)
        self._unconfirmed: set[int] = set()
        self._nacked: set[int] = set()
        self._retry_after: dict[str, float] = {}  # row id -> monotonic time before which it is skipped
        self._last_purge = 0.0
        self._listener: _Listener | None = None
        self._listener_retry_at = 0.0

    # -- AMQP ---------------------------------------------------------------------------------------
    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        message_id = (getattr(message, "properties", None) or {}).get("message_id")
        if message_id:
            self._returned.add(str(message_id))

    def _on_confirm(self, delivery_tag: int, multiple: bool, *, acked: bool) -> None:
        confirmed = [t for t in self._unconfirmed if t <= delivery_tag] if multiple else [delivery_tag]
        for tag in confirmed:
            self._unconfirmed.discard(tag)
            if not acked:
                self._nacked.add(tag)

    def _ensure_producer(self) -> Producer:
        if self._producer is not None:
            return self._producer
        conn = Connection(self.amqp_url, connect_timeout=5, heartbeat=0)
        try:
            conn.connect()
            channel = conn.channel()
            # Publisher confirms, waited for once per batch (``_publish_batch``), not once per message.
            channel.confirm_select()
            channel.events["basic_ack"].add(functools.partial(self._on_confirm, acked=True))
            channel.events["basic_nack"].add(functools.partial(self._on_confirm, acked=False))
            declare_events_exchange(channel, self.prefix)
            exchange = Exchange(events_exchange(self.prefix), type="topic", durable=True)
            producer = Producer(channel, exchange=exchange, auto_declare=False, on_return=self._on_return)
        except Exception:
            conn.release()
            raise
        self._connection, self._producer = conn, producer
        self._next_tag = 0
        self._unconfirmed.clear()
        self._nacked.clear()
        log.info("outbox relay connected", extra={"schema": self.schema})
        return producer

    def close(self) -> None:
        if self._connection is not None:
            with suppress(Exception):
                self._connection.release()
        self._connection = self._producer = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _publish_batch(self, producer: Producer, rows: Sequence[Any]) -> tuple[list[Any], list[Any]]:
        """Publish ``rows``, then wait once for the broker to confirm them all: (confirmed, unroutable).

        A row the broker returned (no queue bound) or refused is not confirmed. Raises when the
        confirms do not all come within ``confirm_timeout`` or the connection fails; rows confirmed
        before that are not reported, so they stay unpublished and go again (consumers dedupe by id).
        """
        tags: dict[int, Any] = {}
        self._returned.clear()
        self._nacked.clear()
        for row in rows:
            body = row.body if isinstance(row.body, str) else json.dumps(row.body)
            envelope = json.loads(body)
            # ``user_id`` is our login; RabbitMQ refuses the message if it is not, so consumers can trust it.
            properties: dict[str, Any] = {"message_id": str(row.id), "type": row.routing_key,
                                          "user_id": self._connection.userid if self._connection else None}
            if envelope.get("request_id"):
                properties["correlation_id"] = str(envelope["request_id"])
            # With tracing on, the event's publication continues the trace it was written in, and its
            # headers carry that trace on to the consumer.
            span = producer_span(row.routing_key, envelope.get("trace"), {"messaging.message.id": str(row.id)})
            with span as headers:
                producer.publish(body.encode("utf-8"), routing_key=row.routing_key, mandatory=True,
                                 delivery_mode=2, content_type="application/json", content_encoding="utf-8",
                                 retry=False, headers=headers or None, **properties)
            self._next_tag += 1
            self._unconfirmed.add(self._next_tag)
            tags[self._next_tag] = row
        deadline = time.monotonic() + self.confirm_timeout
        assert self._connection is not None
        while self._unconfirmed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("publisher confirms did not arrive in time")
            self._connection.drain_events(timeout=left)
        # The broker sends a message's basic.return before its basic.ack.
        unroutable = [row for tag, row in tags.items() if str(row.id) in self._returned]
        confirmed = [row for tag, row in tags.items() if tag not in self._nacked and str(row.id) not in self._returned]
        return confirmed, unroutable

    # -- one pass -------------------------------------------------------------------------------------
    def run_once(self) -> int:
        """Publish up to ``batch_size`` unpublished rows with one confirm wait; return how many were
        confirmed and marked (in one statement).

        Raises on a broker or database failure; rows not confirmed stay unpublished.
        """
        self._maybe_purge()
        producer = self._ensure_producer()
        now = time.monotonic()
        self._retry_after = {k: v for k, v in self._retry_after.items() if v > now}
        skip = list(self._retry_after)
        statements = self._statements
        with system_tx(self.engine) as conn:
            rows = conn.execute(statements.claim, {"p_skip": skip, "p_limit": self.batch_size}).all()
            if not rows:
                return 0
            try:
                confirmed, unroutable = self._publish_batch(producer, rows)
            except BaseException:
                self.close()
                raise
            if confirmed:
                ids = [row.id for row in confirmed]
                done = statements.delete if self.retention <= timedelta(0) else statements.mark_published
                conn.execute(done, {"p_ids": ids})
            for row in unroutable:
                conn.execute(statements.count_attempt, {"p_ids": [row.id]})
                delay = min(0.5 * 2 ** min(row.attempts, 10), 60.0)
                self._retry_after[str(row.id)] = time.monotonic() + delay
                log.error(
                    "event unroutable: no queue bound, kept unpublished",
                    extra={"event_id": str(row.id), "event_type": row.routing_key,
                           "attempts": row.attempts + 1, "retry_in_s": delay},
                )
        if confirmed:
            log.info("outbox relayed", extra={"schema": self.schema, "count": len(confirmed)})
        return len(confirmed)

    def _maybe_purge(self) -> None:
        if time.monotonic() - self._last_purge < 60.0:
            return
        self.purge_published()

    def purge_published(self) -> int:
        """Delete published rows older than ``retention``; return how many."""
        self._last_purge = time.monotonic()
        outbox = self._outbox
        keep = timedelta(seconds=int(self.retention.total_seconds()))
        with system_tx(self.engine) as conn:
            deleted = conn.execute(
                delete(outbox).where(outbox.c.published_at.is_not(None), outbox.c.published_at < func.now() - keep)
            ).rowcount
        if deleted:
            log.info("outbox purged", extra={"schema": self.schema, "count": deleted})
        return deleted

    # -- loop -----------------------------------------------------------------------------------------
    def _wait(self, stop: threading.Event, interval: float) -> None:
        if self.listen and self._listener is None and time.monotonic() >= self._listener_retry_at:
            try:
                self._listener = _Listener(self.engine, notify_channel(self.schema))
            except Exception as exc:  # noqa: BLE001 - polling still works
                log.warning("outbox LISTEN unavailable, polling", extra={"error": type(exc).__name__})
                self._listener_retry_at = time.monotonic() + 30.0
        if self._listener is not None:
            try:
                deadline = time.monotonic() + interval
                while not stop.is_set():  # in short slices so that stop is honoured quickly
                    left = deadline - time.monotonic()
                    if left <= 0 or self._listener.wait(min(left, 0.5)):
                        return
                return
            except Exception as exc:  # noqa: BLE001
                log.warning("outbox LISTEN lost, polling", extra={"error": type(exc).__name__})
                self._listener.close()
                self._listener = None
        stop.wait(interval)

    def run_forever(self, stop: threading.Event, interval: float = 0.2) -> None:
        """Relay until ``stop`` is set; survives broker and database outages with capped backoff."""
        failures = 0
        try:
            while not stop.is_set():
                try:
                    count = self.run_once()
                except Exception as exc:  # noqa: BLE001
                    failures += 1
                    delay = min(0.2 * 2 ** min(failures, 10), self.max_backoff)
                    log.warning(
                        "outbox relay failed, retrying",
                        extra={"error": type(exc).__name__, "failures": failures, "retry_in_s": delay},
                    )
                    self.close()
                    stop.wait(delay)
                    continue
                if failures:
                    log.info("outbox relay recovered", extra={"failures": failures})
                failures = 0
                if count >= self.batch_size:
                    continue  # more waiting
                if count:
                    # Under load: let the next batch gather for a moment rather than wake for every
                    # commit (each pass costs a transaction and a confirm wait); idle, wake at once.
                    stop.wait(self.linger_s)
                else:
                    self._wait(stop, interval)
        finally:
            self.close()


def forget_user(conn: SAConnection, schema: str, user_id: str) -> None:
    """Remove what the messaging tables remember of a user whose data is being purged.

    Call it inside the purge's own transaction. The dedupe records go (a redelivered purge is
    idempotent anyway) and so do published outbox rows; unpublished rows stay, since they include the
    purge's own report, and the relay deletes them once the broker confirms them.
    """
    outbox, inbox, _ = schema_tables(schema)
    conn.execute(delete(inbox).where(inbox.c.user_id == user_id))
    conn.execute(delete(outbox).where(outbox.c.user_id == user_id, outbox.c.published_at.is_not(None)))


def pending_count(engine: Engine, schema: str) -> int:
    """How many outbox rows wait to be published (for health checks and tests)."""
    outbox = schema_tables(schema).outbox
    with system_tx(engine) as conn:
        count: int = conn.execute(
            select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
        ).scalar_one()
        return count


__all__ = [
    "OutboxRelay",
    "make_envelope",
    "pending_count",
    "publish_in_tx",
]
