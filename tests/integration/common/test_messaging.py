"""Messaging backbone against real PostgreSQL and RabbitMQ: outbox, relay, consumer, dead letters."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from google.protobuf.message import Message
from kombu import Connection, Exchange, Producer
from sqlalchemy import text

from coffeeping.common.db import make_engine, user_tx
from coffeeping.common.frozen_ddl import OUTBOX_INBOX_DROP_V1, OUTBOX_INBOX_V1, render
from coffeeping.common.logging import current_request_id
from coffeeping.common.messaging import (
    Consumer,
    Event,
    OutboxRelay,
    declare_topology,
    forget_user,
    pending_count,
    publish_in_tx,
    requeue_dead_letters,
)
from coffeeping.events.v1 import events_pb2 as ev
from tests.conftest import signed_by

pytestmark = pytest.mark.timeout(60)

USER = "user_2abcDEF"
SECRET_SUBJECT = "Quarterly salary review for Alice"  # must never appear in a log line
# The events these tests publish by default; the payload carries the secret (any string field will do).
DEFAULT = ev.AccountPurgeFailed(deletion_id="del-1", service="mailer", error=SECRET_SUBJECT)


def stopped(sequence_id: str = "seq-1") -> ev.SequenceStopped:
    return ev.SequenceStopped(sequence_id=sequence_id, reason="completed")

# Relay and consumers run in this process as ``guest``: the sender check accepts what guest signed.
GuestConsumer = functools.partial(Consumer, senders=signed_by("guest"))


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@contextmanager
def running(target: Callable[[threading.Event], None]) -> Iterator[threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=target, args=(stop,), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(15)
        assert not thread.is_alive(), "worker did not stop"


def queue_depth(amqp_url: str, name: str) -> int:
    with Connection(amqp_url, connect_timeout=5) as conn:
        return conn.channel().queue_declare(name, passive=True).message_count


def note_handler(schema: str, seen: list[Event] | None = None, fail: Callable[[Event], bool] | None = None):
    def handler(conn, event: Event) -> None:
        if seen is not None:
            seen.append(event)
        if fail is not None and fail(event):
            raise RuntimeError("handler refuses this event")
        conn.execute(
            text(f"INSERT INTO {schema}.notes (user_id, event_id, kind) VALUES (:u, CAST(:e AS uuid), :k)"),
            {"u": event.user_id, "e": event.id, "k": event.type},
        )

    return handler


def publish(engine, message: Message = DEFAULT, request_id: str | None = None) -> str:
    with user_tx(engine, USER, system=True) as conn:
        return publish_in_tx(conn, "svc", USER, message, request_id)


def notes(db, schema: str = "svc") -> int:
    return db.scalar(f"SELECT count(*) FROM {schema}.notes")


def test_ddl_is_idempotent_and_reversible_and_rls_is_forced(msg_db):
    """The frozen outbox DDL can run twice; tables have forced RLS; the drop DDL removes both tables."""
    import psycopg

    with psycopg.connect(msg_db.admin_url) as conn:
        conn.execute("CREATE SCHEMA tmpddl")
        for stmt in render(OUTBOX_INBOX_V1, schema="tmpddl") * 2:
            conn.execute(stmt)
        flags = conn.execute(
            "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
            "WHERE relnamespace = 'tmpddl'::regnamespace AND relkind = 'r' ORDER BY relname"
        ).fetchall()
        assert flags == [("inbox", True, True), ("outbox", True, True)]
        for stmt in render(OUTBOX_INBOX_DROP_V1, schema="tmpddl"):
            conn.execute(stmt)
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'tmpddl'").fetchone()[0] == 0
        conn.execute("DROP SCHEMA tmpddl")
    with pytest.raises(ValueError):
        render(OUTBOX_INBOX_V1, schema="svc; DROP TABLE x")


def test_outbox_rows_invisible_to_a_plain_user_of_another_id(engine, msg_db):
    """The outbox is behind RLS: another user's transaction (no system scope) sees no row."""
    publish(engine)
    with user_tx(engine, "user_other") as conn:
        assert conn.execute(text("SELECT count(*) FROM svc.outbox")).scalar_one() == 0
    with user_tx(engine, USER) as conn:
        assert conn.execute(text("SELECT count(*) FROM svc.outbox")).scalar_one() == 1


def test_committed_event_is_delivered_once_to_each_bound_service(engine, msg_db, prefix, amqp_url, caplog):
    """One committed event reaches two services' queues, each handler applies it once, with the
    envelope and request id intact, woken by NOTIFY (the poll interval is far longer), and no log
    line carries the payload."""
    caplog.set_level(logging.INFO, logger="coffeeping")
    seen_a: list[Event] = []
    seen_b: list[Event] = []
    request_ids: list[str] = []
    inner = note_handler("svc", seen_a)

    def handler_a(conn, event):
        request_ids.append(current_request_id())
        inner(conn, event)

    a = GuestConsumer(amqp_url, prefix, "mailer", ["account.purge_failed"], engine, "svc", handler_a)
    b = GuestConsumer(amqp_url, prefix, "vault", ["account.*"], engine, "svc2", note_handler("svc2", seen_b))
    relay = OutboxRelay(engine, "svc", amqp_url, prefix)
    with running(a.run), running(b.run):
        assert a.connected.wait(10) and b.connected.wait(10)
        with running(lambda stop: relay.run_forever(stop, interval=30.0)):
            time.sleep(0.7)  # the relay's first pass is done and it now LISTENs
            started = time.monotonic()
            event_id = publish(engine, request_id="req-123")
            assert wait_until(lambda: notes(msg_db, "svc") == 1 and notes(msg_db, "svc2") == 1, 10)
            latency = time.monotonic() - started
        time.sleep(0.5)  # nothing else arrives
    assert latency < 5.0, "the relay should be woken by NOTIFY, not the 30 s poll"
    assert notes(msg_db, "svc") == 1 and notes(msg_db, "svc2") == 1
    assert [e.id for e in seen_a] == [event_id] and [e.id for e in seen_b] == [event_id]
    event = seen_a[0]
    assert event.type == "account.purge_failed" and event.user_id == USER
    assert event.request_id == "req-123" and event.message == DEFAULT  # the typed payload
    assert isinstance(event.message, ev.AccountPurgeFailed) and event.message.error == SECRET_SUBJECT
    assert event.occurred_at.endswith("Z")
    assert request_ids == ["req-123"]  # the logging context carries the envelope's request id
    assert msg_db.scalar("SELECT count(*) FROM svc.outbox") == 0  # deleted once the broker confirmed it
    assert queue_depth(amqp_url, f"{prefix}.mailer") == 0 and queue_depth(amqp_url, f"{prefix}.vault") == 0
    assert SECRET_SUBJECT not in caplog.text
    assert any(getattr(r, "event_id", None) == event_id for r in caplog.records)


def test_rolled_back_event_is_never_published(engine, msg_db, prefix, amqp_url):
    """An event written in a transaction that rolls back leaves no row and reaches no queue."""
    with Connection(amqp_url) as conn:
        declare_topology(conn, prefix, "mailer", ["sequence.stopped"])
    with pytest.raises(RuntimeError), user_tx(engine, USER, system=True) as conn:
        publish_in_tx(conn, "svc", USER, stopped())
        raise RuntimeError("the business change failed")
    relay = OutboxRelay(engine, "svc", amqp_url, prefix)
    try:
        assert relay.run_once() == 0
    finally:
        relay.close()
    assert msg_db.scalar("SELECT count(*) FROM svc.outbox") == 0
    assert pending_count(engine, "svc") == 0
    assert queue_depth(amqp_url, f"{prefix}.mailer") == 0


def test_unroutable_publish_is_not_marked_published(engine, msg_db, prefix, amqp_url):
    """The broker confirms a message no queue takes; the relay sees the return, keeps the row
    unpublished with attempts incremented, and publishes it once a queue is bound."""
    event_id = publish(engine, ev.GmailDisconnected(reason="needs_reconnect"))  # no queue is bound to it yet
    relay = OutboxRelay(engine, "svc", amqp_url, prefix, retention=timedelta(hours=1))
    try:
        assert relay.run_once() == 0
        row = msg_db.scalar("SELECT (published_at IS NULL, attempts)::text FROM svc.outbox WHERE id = %s", event_id)
        assert row == "(t,1)"
        with Connection(amqp_url) as conn:
            declare_topology(conn, prefix, "watcher", ["gmail.disconnected"])
        time.sleep(0.6)  # the relay's per-row retry backoff (0.5 s after the first failure)
        assert relay.run_once() == 1
    finally:
        relay.close()
    assert msg_db.scalar("SELECT published_at IS NOT NULL FROM svc.outbox WHERE id = %s", event_id) is True
    assert queue_depth(amqp_url, f"{prefix}.watcher") == 1


def test_a_batch_is_confirmed_as_a_whole_and_its_unroutable_rows_stay_behind(engine, msg_db, prefix, amqp_url):
    """One pass publishes a batch with one wait for the broker's confirms: routable rows are marked in
    one statement, a row the broker returned in the middle of the batch stays unpublished."""
    with Connection(amqp_url) as conn:
        declare_topology(conn, prefix, "mailer", ["sequence.stopped"])
    first = [publish(engine, stopped()) for _ in range(30)]
    lost = publish(engine, ev.GmailDisconnected(reason="needs_reconnect"))  # no queue takes it
    last = [publish(engine, stopped()) for _ in range(30)]
    relay = OutboxRelay(engine, "svc", amqp_url, prefix, retention=timedelta(hours=1))
    try:
        assert relay.run_once() == 60
    finally:
        relay.close()
    published = msg_db.scalar("SELECT array_agg(id::text) FROM svc.outbox WHERE published_at IS NOT NULL")
    assert set(published) == set(first + last)
    assert msg_db.scalar("SELECT (published_at IS NULL, attempts)::text FROM svc.outbox WHERE id = %s", lost) == "(t,1)"
    assert queue_depth(amqp_url, f"{prefix}.mailer") == 60


def test_an_outbox_row_written_as_a_dict_by_the_previous_release_is_relayed_and_read_typed(
        engine, msg_db, prefix, amqp_url):
    """Rows the previous release wrote (a dict payload, ``history_id`` as a string) are published as
    stored and reach the handler as the type's message."""
    seen: list[Event] = []
    consumer = GuestConsumer(amqp_url, prefix, "watcher", ["sequence.started"], engine, "svc", note_handler("svc", seen))
    event_id = str(uuid.uuid4())
    old = {"id": event_id, "type": "sequence.started", "user_id": USER, "occurred_at": "2026-11-29T08:00:00Z",
           "request_id": None, "payload": {"sequence_id": "s1", "contact_id": "c1", "contact_email": "bob@example.com",
                                           "thread_id": "t1", "message_id": "m1", "history_id": "4242",
                                           "user_email": "ann@example.com"}}
    msg_db.execute("INSERT INTO svc.outbox (id, user_id, routing_key, body) VALUES (%s, %s, %s, %s::jsonb)",
                   event_id, USER, "sequence.started", json.dumps(old))
    with running(consumer.run):
        assert consumer.connected.wait(10)
        relay = OutboxRelay(engine, "svc", amqp_url, prefix)
        try:
            assert relay.run_once() == 1
        finally:
            relay.close()
        assert wait_until(lambda: notes(msg_db) == 1, 10)
    [event] = seen
    assert event.id == event_id and isinstance(event.message, ev.SequenceStarted)
    assert (event.message.sequence_id, event.message.history_id, event.message.user_email) == ("s1", 4242,
                                                                                                "ann@example.com")


def test_duplicate_delivery_applies_once(engine, msg_db, prefix, amqp_url, caplog):
    """A relay crash after the confirm publishes the same event id twice: the handler runs once."""
    caplog.set_level(logging.INFO, logger="coffeeping")
    with Connection(amqp_url) as conn:
        declare_topology(conn, prefix, "mailer", ["reply.detected"])
    event_id = publish(engine, ev.ReplyDetected(contact_id="c1", thread_id="t1", message_id="m1"))
    relay = OutboxRelay(engine, "svc", amqp_url, prefix, retention=timedelta(hours=1))
    try:
        assert relay.run_once() == 1
        msg_db.execute("UPDATE svc.outbox SET published_at = NULL")  # as if the mark never committed
        assert relay.run_once() == 1
    finally:
        relay.close()
    assert queue_depth(amqp_url, f"{prefix}.mailer") == 2
    consumer = GuestConsumer(amqp_url, prefix, "mailer", ["reply.detected"], engine, "svc", note_handler("svc"))
    with running(consumer.run):
        assert wait_until(lambda: any(r.getMessage() == "duplicate event skipped" for r in caplog.records))
    assert notes(msg_db) == 1
    assert msg_db.scalar("SELECT count(*) FROM svc.inbox WHERE event_id = %s", event_id) == 1
    assert queue_depth(amqp_url, f"{prefix}.mailer") == 0


WORKER = r"""
import os, sys, time, threading
from pathlib import Path
from sqlalchemy import text
from coffeeping.common.db import make_engine
from coffeeping.common.messaging import Consumer

def handler(conn, event):
    conn.execute(text("INSERT INTO svc.notes (user_id, event_id, kind) VALUES (:u, CAST(:e AS uuid), 'worker')"),
                 {"u": event.user_id, "e": event.id})
    Path(os.environ["MARKER"]).write_text(event.id)
    time.sleep(120)  # killed here, mid-message, with the transaction open

engine = make_engine(os.environ["APP_URL"])
Consumer(os.environ["AMQP_URL"], os.environ["PREFIX"], "mailer", ["sequence.stopped"], engine, "svc",
         handler, senders=lambda _t, sender, _c: sender == "guest").run(threading.Event())
"""


def test_killed_consumer_gets_the_message_again_and_applies_it_once(engine, msg_db, prefix, amqp_url, tmp_path):
    """A consumer process SIGKILLed inside the handler commits nothing; the message is redelivered
    and the end state is the handler's effect exactly once."""
    with Connection(amqp_url) as conn:
        declare_topology(conn, prefix, "mailer", ["sequence.stopped"])
    marker = tmp_path / "in-handler"
    env = {**os.environ, "APP_URL": msg_db.app_url, "AMQP_URL": amqp_url, "PREFIX": prefix,
           "MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-c", WORKER], env=env)
    try:
        event_id = publish(engine, stopped())
        relay = OutboxRelay(engine, "svc", amqp_url, prefix)
        try:
            assert relay.run_once() == 1
        finally:
            relay.close()
        assert wait_until(marker.exists, 20), "the worker never reached the handler"
        assert marker.read_text() == event_id
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    seen: list[Event] = []
    consumer = GuestConsumer(amqp_url, prefix, "mailer", ["sequence.stopped"], engine, "svc", note_handler("svc", seen))
    with running(consumer.run):
        assert wait_until(lambda: notes(msg_db) == 1, 20)
        assert wait_until(lambda: queue_depth(amqp_url, f"{prefix}.mailer") == 0)
        time.sleep(0.3)
    assert [e.id for e in seen] == [event_id]
    assert msg_db.scalar("SELECT kind FROM svc.notes") == "sequence.stopped"  # not the killed worker's row
    assert notes(msg_db) == 1
    assert msg_db.scalar("SELECT count(*) FROM svc.inbox") == 1


def test_poison_message_is_dead_lettered_after_the_limit_and_can_be_requeued(engine, msg_db, prefix, amqp_url):
    """A handler that always fails: every attempt rolls back, the broker dead-letters the message
    after x-delivery-limit, and requeue_dead_letters (and its CLI) brings it back for a fixed handler."""
    broken = threading.Event()
    broken.set()
    seen: list[Event] = []
    consumer = GuestConsumer(
        amqp_url, prefix, "mailer", ["sequence.message_sent"], engine, "svc",
        note_handler("svc", seen, fail=lambda e: broken.is_set()), retry_base=0.01, retry_cap=0.05,
    )
    event_id = publish(engine, ev.SequenceMessageSent(sequence_id="s1", thread_id="t1", message_id="m1"))
    with running(consumer.run):
        assert consumer.connected.wait(10)
        relay = OutboxRelay(engine, "svc", amqp_url, prefix)
        try:
            assert relay.run_once() == 1
        finally:
            relay.close()
        assert wait_until(lambda: queue_depth(amqp_url, f"{prefix}.mailer.dead") == 1, 20)
        attempts = len(seen)
        assert attempts >= 5, f"dead-lettered after {attempts} attempts"
        assert notes(msg_db) == 0 and msg_db.scalar("SELECT count(*) FROM svc.inbox") == 0
        time.sleep(0.3)
        assert len(seen) == attempts  # no more deliveries once dead-lettered

        broken.clear()
        assert requeue_dead_letters(amqp_url, prefix, "mailer") == 1
        assert wait_until(lambda: notes(msg_db) == 1, 10)
    assert seen[-1].id == event_id
    assert queue_depth(amqp_url, f"{prefix}.mailer.dead") == 0
    out = subprocess.run(
        [sys.executable, "-m", "coffeeping.common.messaging", "requeue-dead", "--service", "mailer",
         "--prefix", prefix],
        env={**os.environ, "RABBITMQ_URL": amqp_url}, capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("moved 0 message(s)")


def test_malformed_message_is_dead_lettered_at_once(engine, msg_db, prefix, amqp_url):
    """Not-JSON and envelope-less messages, an unregistered type, and a payload that is not its type's
    message go to the dead-letter queue on first delivery; a good one next to them is handled."""
    seen: list[Event] = []
    consumer = GuestConsumer(amqp_url, prefix, "mailer", ["junk.#", "sequence.stopped"], engine, "svc",
                             note_handler("svc", seen))

    def envelope(event_type: str, payload: object) -> bytes:
        return json.dumps({"id": str(uuid.uuid4()), "type": event_type, "user_id": USER,
                           "occurred_at": "2026-11-30T09:00:00Z", "payload": payload}).encode()

    with running(consumer.run):
        assert consumer.connected.wait(10)
        with Connection(amqp_url, transport_options={"confirm_publish": True}) as conn:
            producer = Producer(conn.channel(), exchange=Exchange(f"{prefix}.events", type="topic"),
                                auto_declare=False)
            producer.publish(b"\xff not json", routing_key="junk.bytes", content_type="application/json",
                             content_encoding="binary", mandatory=True)
            producer.publish(b'{"type": "junk.noid", "user_id": "u1"}', routing_key="junk.noid",
                             content_type="application/json", content_encoding="binary", mandatory=True)
            producer.publish(envelope("junk.valid", {}), routing_key="junk.valid", user_id="guest",
                             content_type="application/json", content_encoding="binary", mandatory=True)
            for payload in ({"reason": "completed"}, {"sequence_id": ["s1"], "reason": "completed"},
                            {"sequence_id": "s1", "reason": "completed"}):  # the last one is good
                producer.publish(envelope("sequence.stopped", payload), routing_key="sequence.stopped",
                                 user_id="guest", content_type="application/json", content_encoding="binary",
                                 mandatory=True)
        assert wait_until(lambda: queue_depth(amqp_url, f"{prefix}.mailer.dead") == 5 and notes(msg_db) == 1, 5)
    assert [e.message for e in seen] == [ev.SequenceStopped(sequence_id="s1", reason="completed")]


def test_database_outage_is_told_apart_from_a_poison_event():
    """A refused database connection is an outage (the consumer retries in-process and does not
    spend the message's delivery budget); a handler error or a constraint violation is the event's."""
    from sqlalchemy.exc import IntegrityError

    from coffeeping.common.messaging.consumer import _is_connection_loss

    dead = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    try:
        with pytest.raises(Exception) as info, dead.connect():
            pass
    finally:
        dead.dispose()
    assert _is_connection_loss(info.value)
    assert not _is_connection_loss(RuntimeError("handler bug"))
    assert not _is_connection_loss(IntegrityError("INSERT", {}, Exception("dup")))


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def test_broker_outage_loses_nothing(engine, msg_db, prefix, amqp_url):
    """Events committed while RabbitMQ is stopped wait in the outbox; once it is back the relay and
    the consumer reconnect and every event is applied exactly once."""
    consumer = GuestConsumer(amqp_url, prefix, "mailer", ["sequence.#"], engine, "svc", note_handler("svc"),
                        reconnect_cap=1.0)
    relay = OutboxRelay(engine, "svc", amqp_url, prefix, max_backoff=1.0)
    ids = []
    with running(consumer.run), running(lambda stop: relay.run_forever(stop, interval=0.2)):
        assert consumer.connected.wait(10)
        ids += [publish(engine, stopped(f"before{i}")) for i in range(3)]
        assert wait_until(lambda: notes(msg_db) == 3, 10)
        try:
            _rabbitmqctl("stop_app")
            ids += [publish(engine, stopped(f"during{i}")) for i in range(5)]
            time.sleep(1.5)  # the relay tries, fails, backs off
            assert pending_count(engine, "svc") == 5
        finally:
            _rabbitmqctl("start_app")
            _rabbitmqctl("await_startup")
        ids += [publish(engine, stopped("after"))]
        assert wait_until(lambda: notes(msg_db) == 9, 40), f"only {notes(msg_db)} of 9 applied"
    assert pending_count(engine, "svc") == 0
    assert msg_db.scalar("SELECT count(DISTINCT event_id) FROM svc.notes") == 9
    assert sorted(str(x) for x in ids) == sorted(
        str(r) for r in [msg_db.scalar("SELECT array_agg(event_id::text) FROM svc.notes")][0]
    )


def test_forget_user_drops_dedupe_records_and_published_rows_but_keeps_pending_events(engine, msg_db, prefix, amqp_url):
    """A purge forgets what the messaging tables remember of the user, except events still to send."""
    with Connection(amqp_url) as conn:
        declare_topology(conn, prefix, "mailer", ["sequence.stopped", "account.purged"])
    sent = publish(engine, stopped())
    relay = OutboxRelay(engine, "svc", amqp_url, prefix, retention=timedelta(hours=1))
    try:
        assert relay.run_once() == 1
    finally:
        relay.close()
    with user_tx(engine, USER, system=True) as conn:
        conn.execute(text("INSERT INTO svc.inbox (event_id, user_id) VALUES (gen_random_uuid(), :u)"), {"u": USER})
        conn.execute(text("INSERT INTO svc.inbox (event_id, user_id) VALUES (gen_random_uuid(), 'user_other')"))
        forget_user(conn, "svc", USER)
        pending = publish_in_tx(conn, "svc", USER, ev.AccountPurged(deletion_id="del-1", service="mailer"))
    assert msg_db.scalar("SELECT count(*) FROM svc.inbox WHERE user_id = %s", USER) == 0
    assert msg_db.scalar("SELECT count(*) FROM svc.inbox WHERE user_id = 'user_other'") == 1
    assert msg_db.scalar("SELECT count(*) FROM svc.outbox WHERE id = %s", sent) == 0
    assert msg_db.scalar("SELECT count(*) FROM svc.outbox WHERE id = %s", pending) == 1
