"""Dead-letter queues: the operator's requeue, and forgetting the messages of deleted accounts."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.messaging import Producer
from sqlalchemy import Engine

from ..db import system_tx
from ..tombstones import is_buried
from ._names import dead_queue, service_queue
from .consumer import MalformedEvent, parse_envelope

log = logging.getLogger("coffeeping.messaging.dead_letters")

# Headers the broker adds on dead-lettering / redelivery; a requeued message starts afresh.
_BROKER_HEADERS = ("x-death", "x-delivery-count", "x-first-death-", "x-last-death-")


def _clean_headers(headers: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (headers or {}).items():
        if any(key == h or (h.endswith("-") and key.startswith(h)) for h in _BROKER_HEADERS):
            continue
        out[key] = value
    return out


def requeue_dead_letters(amqp_url: str, prefix: str, service: str, limit: int | None = None) -> int:
    """Move the messages now in ``<prefix>.<service>.dead`` back to ``<prefix>.<service>``.

    Each message is republished (publisher confirm + mandatory) through the default exchange straight
    to the service's own queue, so other services bound to the same routing key do not receive it a
    second time, and only then acked in the dead queue. Only the messages present at the start are
    moved (a message that fails again cannot make this loop forever). Returns how many were moved.
    """
    dead = dead_queue(prefix, service)
    target = service_queue(prefix, service)
    returned: list[str] = []

    def on_return(exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        returned.append(routing_key)

    moved = 0
    with Connection(amqp_url, transport_options={"confirm_publish": True}, connect_timeout=5) as conn:
        channel = conn.channel()
        _, waiting, _ = channel.queue_declare(dead, passive=True)
        channel.queue_declare(target, passive=True)
        if limit is not None:
            waiting = min(waiting, limit)
        producer = Producer(channel, exchange=Exchange(""), auto_declare=False, on_return=on_return)
        source = Queue(dead, no_declare=True)(channel)
        for _ in range(waiting):
            message = source.get(no_ack=False, accept=None)
            if message is None:
                break
            props = message.properties
            # The verified sender travels with the message, or the consumer would refuse it: the
            # operator runs this with a login tagged ``impersonator`` (deploy/bootstrap_broker.py).
            extra = {k: props[k] for k in ("message_id", "correlation_id", "type", "user_id") if props.get(k)}
            producer.publish(
                message.body,
                routing_key=target,
                mandatory=True,
                delivery_mode=2,
                content_type=message.content_type or "application/json",
                content_encoding=message.content_encoding or "utf-8",
                headers=_clean_headers(message.headers),
                retry=False,
                confirm_timeout=10,
                **extra,
            )
            if returned:
                message.reject(requeue=True)
                raise RuntimeError(f"queue {target} did not accept the message")
            message.ack()
            moved += 1
            log.info("dead letter requeued", extra={"message_id": str(props.get("message_id") or "")})
    log.info("dead letters requeued", extra={"service": service, "count": moved})
    return moved


def forget_dead_letters(amqp_url: str, prefix: str, service: str, is_gone: Callable[[str], bool]) -> int:
    """Drop from ``<prefix>.<service>.dead`` every message about a user for whom ``is_gone`` is true.

    RabbitMQ cannot delete one message from the middle of a queue: every message present at the start
    is taken (unacknowledged, so none is taken twice), those of purged users are acked, and the others
    are rejected back into the queue unchanged (their verified ``user_id`` included, which a republish
    could not keep). Only the envelope is read: a message whose payload is not its type's message still
    names its user and goes with them. Messages that are not valid envelopes are kept for the operator.
    Returns how many were dropped.
    """
    dead = dead_queue(prefix, service)
    dropped = 0
    with Connection(amqp_url, connect_timeout=5) as conn:
        channel = conn.channel()
        _, waiting, _ = channel.queue_declare(dead, passive=True)
        source = Queue(dead, no_declare=True)(channel)
        kept = []
        for _ in range(waiting):
            message = source.get(no_ack=False, accept=None)
            if message is None:
                break
            try:
                user_id = parse_envelope(message.body)["user_id"]
            except MalformedEvent:
                user_id = None
            if user_id is not None and is_gone(user_id):
                message.ack()
                dropped += 1
            else:
                kept.append(message)
        for message in kept:
            message.reject(requeue=True)
    if dropped:
        log.info("dead letters of deleted accounts dropped", extra={"service": service, "count": dropped})
    return dropped


def dead_letter_janitor(amqp_url: str, prefix: str, service: str, engine: Engine, schema: str, key: bytes,
                        interval_s: float = 60.0) -> Callable[[threading.Event], None]:
    """A worker that keeps the service's dead-letter queue free of purged users' messages."""
    def gone(user_id: str) -> bool:
        with system_tx(engine) as conn:
            return is_buried(conn, schema, key, user_id)

    def run(stop: threading.Event) -> None:
        while not stop.wait(interval_s):
            try:
                forget_dead_letters(amqp_url, prefix, service, gone)
            except Exception as exc:  # noqa: BLE001 - the broker or the database is away: next round
                log.warning("dead-letter sweep failed", extra={"service": service, "error": type(exc).__name__})

    return run
