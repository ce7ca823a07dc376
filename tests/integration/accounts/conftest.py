"""The accounts service's saga and export, in process, against the real PostgreSQL and RabbitMQ.

The other services' side of the saga is played by the test over the broker: it reads the events the
accounts service publishes from its own queue and answers with ``account.purged`` /
``account.purge_failed`` envelopes, exactly as the mailer, the reply watcher and the vault do.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from google.protobuf.message import Message
from kombu import Connection, Exchange, Producer, Queue

from coffeeping.common.db import make_engine
from coffeeping.common.messaging import Consumer, OutboxRelay, delete_topology, make_envelope
from coffeeping_accounts import deletions
from tests.conftest import signed_by

OTHERS = "cpacctest-others"  # the queue suffix the test listens on as "the other services"

TOMBSTONE_KEY = b"accounts-test-tombstone-key-0123456789"


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, step: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


@pytest.fixture(scope="session")
def accounts_engine(isolated_database):
    engine = make_engine(isolated_database.app_url("accounts"), application_name="accounts-test")
    yield engine
    engine.dispose()


@dataclass
class Broker:
    url: str
    prefix: str

    def _queue(self) -> str:
        return f"{self.prefix}.{OTHERS}"

    def take(self, timeout: float = 20.0) -> list[dict]:
        """Every event the accounts service published so far (waits for at least one)."""
        got: list[dict] = []
        deadline = time.monotonic() + timeout
        with Connection(self.url, connect_timeout=5) as conn:
            queue = Queue(self._queue(), no_declare=True)(conn.channel())
            while time.monotonic() < deadline:
                message = queue.get(no_ack=True, accept=None)
                if message is None:
                    if got:
                        return got
                    time.sleep(0.05)
                    continue
                got.append(json.loads(message.body))
        return got

    def report(self, user_id: str, message: Message, event_id: str | None = None) -> str:
        """Publish an event to the exchange as another service would (through its relay)."""
        envelope = make_envelope(user_id, message)
        if event_id:
            envelope["id"] = event_id
        with Connection(self.url, transport_options={"confirm_publish": True}, connect_timeout=5) as conn:
            producer = Producer(conn.channel(), exchange=Exchange(f"{self.prefix}.events", type="topic",
                                                                  durable=True), auto_declare=False)
            producer.publish(json.dumps(envelope).encode(), routing_key=envelope["type"], mandatory=True,
                             content_type="application/json", content_encoding="utf-8",
                             message_id=envelope["id"], user_id="guest", retry=False)
        return str(envelope["id"])


@pytest.fixture(scope="module")
def broker(amqp_url: str) -> Iterator[Broker]:
    prefix = f"cpacc{uuid.uuid4().hex[:8]}"
    with Connection(amqp_url, connect_timeout=5) as conn:
        channel = conn.channel()
        channel.exchange_declare(f"{prefix}.events", "topic", durable=True, auto_delete=False)
        channel.queue_declare(f"{prefix}.{OTHERS}", durable=False, auto_delete=False)
        for key in (deletions.DELETION_REQUESTED, deletions.REVOKE_REQUESTED):
            channel.queue_bind(f"{prefix}.{OTHERS}", f"{prefix}.events", routing_key=key)
    yield Broker(amqp_url, prefix)
    with contextlib.suppress(Exception):
        delete_topology(amqp_url, prefix, extra_queues=[f"{prefix}.{OTHERS}"])


@pytest.fixture(scope="module")
def saga(accounts_engine, broker: Broker) -> Iterator[Consumer]:
    """The accounts service's relay and consumer, running as in the service."""
    stop = threading.Event()
    relay = OutboxRelay(accounts_engine, deletions.SCHEMA, broker.url, broker.prefix)
    consumer = Consumer(broker.url, broker.prefix, "accounts", deletions.CONSUMED, accounts_engine,
                        deletions.SCHEMA, deletions.make_handler(TOMBSTONE_KEY), retry_base=0.05, retry_cap=0.2,
                        tombstone_key=TOMBSTONE_KEY, senders=signed_by("guest"))
    threads = [threading.Thread(target=relay.run_forever, args=(stop,), daemon=True),
               threading.Thread(target=consumer.run, args=(stop,), daemon=True)]
    for thread in threads:
        thread.start()
    assert consumer.connected.wait(15), "consumer did not connect"
    yield consumer
    stop.set()
    for thread in threads:
        thread.join(15)


@pytest.fixture
def admin(isolated_database):
    """Superuser queries on the test database (bypasses RLS): for checks only."""

    def query(sql: str, *params: object) -> list[tuple]:
        with psycopg.connect(isolated_database.admin_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    return query


@pytest.fixture
def user_id() -> str:
    return f"user_acc{uuid.uuid4().hex[:12]}"
