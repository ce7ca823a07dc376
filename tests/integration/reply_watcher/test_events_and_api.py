"""The watcher's edges: events over real RabbitMQ in and out, the deletion purge, the export stream and
CheckMailbox over mutually authenticated gRPC, and what never reaches its tables or logs."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from contextlib import contextmanager, suppress

import grpc
import pytest
from google.protobuf.message import Message
from kombu import Connection, Exchange, Producer, Queue
from kombu import Consumer as KombuConsumer

from bench.watcher_harness import new_id, send_first_email, tls_for
from coffeeping.common.messaging import OutboxRelay, declare_events_exchange, make_envelope
from coffeeping.common.rpc import call_metadata, channel, serve
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping.types.v1 import export_pb2
from coffeeping.watcher.v1 import watcher_pb2, watcher_pb2_grpc
from coffeeping_reply_watcher.consumers import make_consumer
from coffeeping_reply_watcher.servicer import POLICY, ReplyWatcherServicer
from tests.conftest import signed_by

TOMBSTONE_KEY = b"watcher-test-tombstone-key-0123456789"
OUTGOING = ("reply.detected", "bounce.detected", "takeover.detected", "account.purged")


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def bus(amqp_url, messaging_prefix, engine):
    """The watcher's consumer and relay running against RabbitMQ, and a tap on what it publishes."""
    stop = threading.Event()
    consumer = make_consumer(amqp_url, messaging_prefix, engine, TOMBSTONE_KEY, senders=signed_by("guest"))
    relay = OutboxRelay(engine, "watcher", amqp_url, messaging_prefix)
    received: queue.Queue = queue.Queue()
    tap_name = f"{messaging_prefix}.watcher-tap.{new_id('q')}"
    ready = threading.Event()

    def tap() -> None:
        with Connection(amqp_url, heartbeat=0) as conn:
            channel_ = conn.channel()
            declare_events_exchange(channel_, messaging_prefix)
            channel_.queue_declare(tap_name, durable=False, auto_delete=True)
            for key in OUTGOING:
                channel_.queue_bind(tap_name, f"{messaging_prefix}.events", routing_key=key)

            def on_event(body, message) -> None:
                received.put(body if isinstance(body, dict) else json.loads(body))
                message.ack()

            with KombuConsumer(channel_, queues=[Queue(tap_name, no_declare=True)], callbacks=[on_event],
                               accept=["json", "application/json"]):
                ready.set()
                while not stop.is_set():
                    with suppress(TimeoutError):
                        conn.drain_events(timeout=0.2)

    threads = [threading.Thread(target=fn, args=args, daemon=True)
               for fn, args in ((consumer.run, (stop,)), (relay.run_forever, (stop,)), (tap, ()))]
    for thread in threads:
        thread.start()
    assert consumer.connected.wait(20) and ready.wait(20)

    class Bus:
        def publish(self, user_id: str, message: Message) -> dict:
            return self.publish_envelope(make_envelope(user_id, message))

        def publish_envelope(self, envelope: dict) -> dict:
            """Publish an envelope as it is (a replay, or one no producer could have written)."""
            with Connection(amqp_url, transport_options={"confirm_publish": True}) as conn:
                producer = Producer(conn.channel(), exchange=Exchange(f"{messaging_prefix}.events", type="topic",
                                                                      durable=True, no_declare=True))
                producer.publish(json.dumps(envelope), routing_key=envelope["type"],
                                 content_type="application/json", mandatory=True, user_id="guest")
            return envelope

        def next_event(self, user_id: str, event_type: str, timeout: float = 20.0) -> dict:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    event = received.get(timeout=0.2)
                except queue.Empty:
                    continue
                if event["user_id"] == user_id and event["type"] == event_type:
                    return event
            raise AssertionError(f"no {event_type} for {user_id}")

    yield Bus()
    stop.set()
    for thread in threads:
        thread.join(10)


def test_events_from_rabbitmq_start_watching_and_the_reply_detected_reaches_the_broker(world, bus):
    seq = send_first_email(world.sandbox.gmail, world.user_id, world.email, "maya@contact.example")
    bus.publish(world.user_id, seq.started())
    bus.publish(world.user_id, seq.sent())
    wait_for(lambda: world.admin_rows("SELECT 1 FROM watcher.sent_messages WHERE user_id = %s", world.user_id)
             and world.mailbox(), what="the events to be consumed")
    reply = world.sandbox.gmail.deliver(world.email, "maya@contact.example", thread_id=seq.thread_id)
    assert [e["type"] for e in world.poll()] == ["reply.detected"]
    event = bus.next_event(world.user_id, "reply.detected")
    assert event["payload"]["message_id"] == reply["id"]
    assert event["payload"]["sequence_ids"] == [seq.sequence_id]
    assert set(event) == {"id", "type", "user_id", "occurred_at", "request_id", "payload"}


def test_sequence_stopped_unwatches_the_thread_and_forgets_an_idle_mailbox(world, bus):
    seq = send_first_email(world.sandbox.gmail, world.user_id, world.email, "noor@contact.example")
    bus.publish(world.user_id, seq.started())
    wait_for(world.mailbox, what="the mailbox")
    bus.publish(world.user_id, ev.SequenceStopped(sequence_id=seq.sequence_id, reason="completed"))
    wait_for(lambda: world.mailbox() is None, what="the mailbox to go")
    assert world.admin_rows("SELECT count(*) FROM watcher.watches WHERE user_id = %s", world.user_id) == [(0,)]


def test_a_malformed_started_event_is_dead_lettered_not_half_applied(world, bus, amqp_url, messaging_prefix):
    # A sequence.stopped payload under sequence.started: no thread, no contact.
    stopped = make_envelope(world.user_id, ev.SequenceStopped(sequence_id="s1", reason="completed"))
    bus.publish_envelope({**stopped, "type": "sequence.started"})
    good = send_first_email(world.sandbox.gmail, world.user_id, world.email, "omar@contact.example")
    bus.publish(world.user_id, good.started())
    wait_for(world.mailbox, what="the good event")
    assert world.admin_rows("SELECT sequence_id FROM watcher.watches WHERE user_id = %s",
                            world.user_id) == [(good.sequence_id,)]


def test_account_deletion_purges_every_watcher_row_and_reports_account_purged(world, bus):
    seq = send_first_email(world.sandbox.gmail, world.user_id, world.email, "pia@contact.example")
    bus.publish(world.user_id, seq.started())
    bus.publish(world.user_id, seq.sent())
    wait_for(lambda: world.admin_rows("SELECT 1 FROM watcher.sent_messages WHERE user_id = %s", world.user_id)
             and world.mailbox(), what="the events to be consumed")
    world.sandbox.gmail.deliver(world.email, "pia@contact.example", thread_id=seq.thread_id)
    world.poll()
    bus.next_event(world.user_id, "reply.detected")

    deletion = bus.publish(world.user_id, ev.AccountDeletionRequested(deletion_id="del_1"))
    purged = bus.next_event(world.user_id, "account.purged")
    assert purged["payload"] == {"deletion_id": "del_1", "service": "reply-watcher"}
    # Nothing refers to the user any more (the relay deletes its report once the broker confirmed it).
    for table in ("mailboxes", "watches", "sent_messages", "seen_messages", "inbox", "outbox"):
        wait_for(lambda t=table: world.admin_rows(f"SELECT count(*) FROM watcher.{t} WHERE user_id = %s",
                                                  world.user_id) == [(0,)], what=f"watcher.{table} to be empty")
    # The same delivery again (a redelivery after a crash) changes nothing and reports again.
    bus.publish_envelope(deletion)
    assert bus.next_event(world.user_id, "account.purged")["payload"]["deletion_id"] == "del_1"
    assert world.admin_rows("SELECT count(*) FROM watcher.seen_messages WHERE user_id = %s", world.user_id) == [(0,)]


def test_late_and_replayed_events_after_the_purge_bring_nothing_back(world, bus):
    seq = send_first_email(world.sandbox.gmail, world.user_id, world.email, "ravi@contact.example")
    started = bus.publish(world.user_id, seq.started())
    wait_for(world.mailbox, what="the mailbox")
    bus.publish(world.user_id, ev.AccountDeletionRequested(deletion_id="del_late"))
    bus.next_event(world.user_id, "account.purged")
    # A sequence.started relayed after the purge, one replayed with its original id, and a sent message.
    late = send_first_email(world.sandbox.gmail, world.user_id, world.email, "sara@contact.example")
    bus.publish(world.user_id, late.started())
    bus.publish_envelope(started)
    bus.publish(world.user_id, late.sent())
    marker = send_first_email(world.sandbox.gmail, "user_marker_" + world.user_id[-8:], world.email,
                              "tom@contact.example")
    bus.publish("user_marker_" + world.user_id[-8:], marker.started())
    wait_for(lambda: world.admin_rows("SELECT 1 FROM watcher.mailboxes WHERE user_id = %s",
                                      "user_marker_" + world.user_id[-8:]), what="a later event to be handled")
    for table in ("mailboxes", "watches", "sent_messages", "seen_messages", "inbox"):
        assert world.admin_rows(f"SELECT count(*) FROM watcher.{table} WHERE user_id = %s",
                                world.user_id) == [(0,)], table


def test_connecting_another_google_account_forgets_the_old_mailbox_state(world, bus):
    seq = send_first_email(world.sandbox.gmail, world.user_id, world.email, "uma@contact.example")
    bus.publish(world.user_id, seq.started())
    bus.publish(world.user_id, seq.sent())
    wait_for(lambda: world.admin_rows("SELECT 1 FROM watcher.sent_messages WHERE user_id = %s", world.user_id)
             and world.mailbox(), what="the events to be consumed")
    bus.publish(world.user_id, ev.GmailConnected(email=world.email.upper()))  # the same account
    time.sleep(1)
    assert world.mailbox() is not None
    bus.publish(world.user_id, ev.GmailConnected(email="someone.else@gmail.com"))
    wait_for(lambda: world.mailbox() is None, what="the old mailbox to be forgotten")
    for table in ("watches", "sent_messages", "seen_messages"):
        assert world.admin_rows(f"SELECT count(*) FROM watcher.{table} WHERE user_id = %s",
                                world.user_id) == [(0,)], table


@pytest.fixture(scope="module")
def watcher_rpc(engine, certs):
    woken = threading.Event()
    server = serve("reply-watcher", [(watcher_pb2_grpc.add_ReplyWatcherServicer_to_server,
                                      ReplyWatcherServicer(engine, woken.set), "coffeeping.watcher.v1.ReplyWatcher")],
                   POLICY, 0, tls_for(certs, "reply-watcher"), host="127.0.0.1", grace=1.0)

    @contextmanager
    def as_service(name: str):
        chan = channel(f"127.0.0.1:{server.port}", tls_for(certs, name))
        try:
            yield watcher_pb2_grpc.ReplyWatcherStub(chan)
        finally:
            chan.close()

    yield as_service, woken
    server.stop()


def test_check_mailbox_from_the_gateway_makes_a_watched_mailbox_due_at_once(world, watcher_rpc):
    as_service, woken = watcher_rpc
    seq = send_first_email(world.sandbox.gmail, world.user_id, world.email, "quin@contact.example")
    world.event(seq.started())
    world.admin("UPDATE watcher.mailboxes SET due_at = now() + interval '1 hour' WHERE user_id = %s", world.user_id)
    world.sandbox.gmail.deliver(world.email, "quin@contact.example", thread_id=seq.thread_id)
    pushed = world.sandbox.gmail.mailbox(world.email)["historyId"]
    woken.clear()
    with as_service("auth-gateway") as stub:
        # A history id the cursor has already passed (a late or duplicated push) schedules nothing.
        stale = stub.CheckMailbox(watcher_pb2.CheckMailboxRequest(email=world.email, history_id="1"),
                                  metadata=call_metadata(None), timeout=10)
        assert stale.scheduled is False and not woken.is_set()
        assert world.mailbox()["deferred"] is True
        reply = stub.CheckMailbox(watcher_pb2.CheckMailboxRequest(email=world.email.upper(), history_id=str(pushed)),
                                  metadata=call_metadata(None), timeout=10)
        assert reply.scheduled and woken.is_set()
        assert world.mailbox()["deferred"] is False
        unknown = stub.CheckMailbox(watcher_pb2.CheckMailboxRequest(email="nobody@example.com"), timeout=10)
        assert unknown.scheduled is False


def test_check_mailbox_and_export_refuse_callers_outside_their_allow_lists(world, watcher_rpc):
    as_service, _ = watcher_rpc
    with as_service("mailer") as stub, pytest.raises(grpc.RpcError) as refused:
        stub.CheckMailbox(watcher_pb2.CheckMailboxRequest(email=world.email), timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with as_service("auth-gateway") as stub, pytest.raises(grpc.RpcError) as refused:
        list(stub.ExportData(export_pb2.ExportRequest(), metadata=call_metadata(world.user_id), timeout=10))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_export_streams_detected_replies_and_bounces_with_ids_kind_and_time_only(world, watcher_rpc, caplog):
    as_service, _ = watcher_rpc
    caplog.set_level(logging.INFO)
    secret_subject, secret_body = "Re: my salary details", "Confidential: my number is 555-0199"
    one = send_first_email(world.sandbox.gmail, world.user_id, world.email, "rae@contact.example")
    two = send_first_email(world.sandbox.gmail, world.user_id, world.email, "sam@contact.example")
    for seq in (one, two):
        world.event(seq.started())
        world.event(seq.sent())
    reply = world.sandbox.gmail.deliver(world.email, "Rae Private-Name <rae@contact.example>",
                                        thread_id=one.thread_id, subject=secret_subject, body=secret_body)
    bounce = world.sandbox.gmail.deliver(world.email, "", thread_id=two.thread_id, kind="bounce")
    assert sorted(e["type"] for e in world.poll()) == ["bounce.detected", "reply.detected"]

    with as_service("accounts") as stub:
        records = list(stub.ExportData(export_pb2.ExportRequest(), metadata=call_metadata(world.user_id), timeout=10))
    assert {r.section for r in records} == {"replies"}
    rows = [json.loads(r.json) for r in records]
    assert sorted((r["kind"], r["message_id"]) for r in rows) == sorted(
        [("reply", reply["id"]), ("bounce", bounce["id"])])
    assert all(set(r) == {"kind", "detected_at", "thread_id", "message_id", "contact_id"} for r in rows)

    # Nothing of the received messages' content is stored, logged, or read from Gmail.
    forbidden = [secret_subject, secret_body, "Private-Name", "rae@contact.example", "mailer-daemon",
                 "Delivery Status Notification"]
    dump = json.dumps([world.admin_rows(f"SELECT * FROM watcher.{t} WHERE user_id = %s", world.user_id)
                       for t in ("mailboxes", "watches", "sent_messages", "seen_messages", "outbox")], default=str)
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records if r.name.startswith("coffeeping"))
    for text in forbidden:
        assert text not in dump
        assert text not in logged
    audit = world.sandbox.gmail.privacy_audit(world.email)
    assert audit["count"] == 0 and audit["snippet_exposures"] == []
