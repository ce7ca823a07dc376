"""Messaging metrics sampled from the service's database and broker: the outbox's backlog and the age of
its oldest unpublished row, the depths of the service's queue and of its dead-letter queue. (What the
consumer observes per event is in ``events``.)"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import suppress
from typing import Any

from kombu.connection import Connection
from sqlalchemy import Engine

from coffeeping.common.messaging._names import dead_queue, service_queue
from coffeeping.common.metrics.sampling import SAMPLER, Family, Reading, watch_rows
from coffeeping.common.tables import schema_tables

OUTBOX = (
    Family("coffeeping_outbox_backlog", "Outbox rows not yet published to the broker"),
    Family("coffeeping_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row (0 when none)"),
)
QUEUES = (
    Family("coffeeping_consumer_queue_messages", "Messages ready in the service's own queue, not yet delivered "
           "to its consumer (consumer lag)"),
    Family("coffeeping_consumer_queue_consumers", "Consumers attached to the service's own queue"),
    Family("coffeeping_dead_letter_messages", "Messages in the service's dead-letter queue"),
)

def watch_outbox(engine: Engine, schema: str) -> None:
    """Sample ``<schema>.outbox``'s backlog and oldest unpublished row through the service's own engine."""
    outbox = schema_tables(schema).outbox
    watch_rows("outbox", engine, OUTBOX, outbox.c.created_at, outbox.c.published_at.is_(None))


class _QueueDepths:
    """Passive declares of the service's two queues on a connection of its own (kept between readings)."""

    def __init__(self, amqp_url: str, prefix: str, service: str) -> None:
        self.amqp_url = amqp_url
        self.queue, self.dead = service_queue(prefix, service), dead_queue(prefix, service)
        self._conn: Any = None

    def read(self) -> Iterator[Reading]:
        try:
            if self._conn is None:
                self._conn = Connection(self.amqp_url, connect_timeout=5, heartbeat=0)
                self._conn.connect()
            channel = self._conn.channel()
            try:
                _, ready, consumers = channel.queue_declare(self.queue, passive=True)
                _, dead, _ = channel.queue_declare(self.dead, passive=True)
            finally:
                with suppress(Exception):
                    channel.close()
        except Exception:
            if self._conn is not None:
                with suppress(Exception):
                    self._conn.release()
            self._conn = None
            raise
        yield Reading("coffeeping_consumer_queue_messages", float(ready))
        yield Reading("coffeeping_consumer_queue_consumers", float(consumers))
        yield Reading("coffeeping_dead_letter_messages", float(dead))


def watch_queues(amqp_url: str, prefix: str, service: str) -> None:
    """Sample the depth of ``<prefix>.<service>`` (ready messages, consumers) and of its dead-letter queue."""
    depths = _QueueDepths(amqp_url, prefix, service)
    SAMPLER.add("queues", QUEUES, lambda: list(depths.read()))


__all__ = ["OUTBOX", "QUEUES", "watch_outbox", "watch_queues"]
