"""The reply watcher's access log against the sandbox's Gmail and the real schema: every request of a poll
recorded as Gmail saw it, described in plain words, counted per day and kind; forgotten with a contact and
with the account, also when the record was still queued; expired after the retention period; and a
log that cannot be written never fails a poll."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import create_engine, make_url

from bench.watcher_harness import SCOPES, new_id, send_first_email
from coffeeping.common.access_log import AccessLog, Filter, Page, list_entries, summarize
from coffeeping.common.access_log.words import short_id
from coffeeping.common.db import user_tx
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping.types.v1 import access_pb2
from coffeeping_reply_watcher.services import SCHEMA

KEY = b"watcher-test-tombstone-key-0123456789"  # the key World.event's handler buries users with
SANDBOX_KINDS = {"gmail.history.list": "users.history.list", "gmail.messages.get": "users.messages.get",
                 "gmail.threads.get": "users.threads.get", "gmail.getProfile": "users.getProfile"}


@pytest.fixture
def log(engine):
    return AccessLog(engine, SCHEMA, KEY)


def start(world):
    seq = send_first_email(world.sandbox.gmail, world.user_id, world.email, f"{new_id('c')}@contact.example")
    world.event(seq.started())
    world.event(seq.sent())
    return seq


def entries(world, engine, **page) -> list[access_pb2.AccessEntry]:
    request = access_pb2.ListAccessEntriesRequest(page_size=100, **page)
    return list(list_entries(engine, SCHEMA, "reply-watcher", world.user_id, Page.of(request)).entries)


def rows(world) -> list[tuple]:
    return world.admin_rows("SELECT method, thread_id, message_id, sequence_id, contact_deleted FROM "
                            "watcher.gmail_access WHERE user_id = %s ORDER BY id", world.user_id)


def test_every_request_of_a_poll_is_recorded_as_gmail_saw_it_with_the_headers_asked_and_no_value(world, engine, log):
    seq = start(world)
    since = world.sandbox.control.log("gmail.")[-1]["t"] if world.sandbox.control.log("gmail.") else 0.0
    world.poll(world.poller(access_log=log))
    reply = world.sandbox.gmail.deliver(world.email, "Priya Secret <priya@contact.example>", thread_id=seq.thread_id,
                                        subject="Private subject 4471", body="Private body 4471")
    world.poll(world.poller(access_log=log))
    assert log.flush() > 0

    seen = [(SANDBOX_KINDS[e["method"]], e.get("id"), e.get("format")) for e in world.gmail_requests(since)]
    recorded = entries(world, engine)[::-1]  # oldest first, as the sandbox logged them
    assert [(e.method, e.message_id or e.thread_id or None, e.format or None) for e in recorded] == seen
    read = next(e for e in recorded if e.method == "users.messages.get")
    assert read.message_id == reply["id"] and read.thread_id == seq.thread_id and read.sequence_id == seq.sequence_id
    assert list(read.metadata_headers) == ["From"] and read.format == "metadata" and read.kind == "metadata_read"
    # The scopes of the token the call went out with, as the vault said (this double hands out the whole grant).
    assert list(read.scopes) == sorted(SCOPES) and read.http_status == 200 and read.quota_units == 5
    assert read.description == f"Reply watcher read the From header of 1 message in thread {short_id(seq.thread_id)}"
    assert all(e.quota_units == 2 for e in recorded if e.method == "users.history.list")
    stored = " ".join(str(r) for r in world.admin_rows("SELECT g::text FROM watcher.gmail_access g WHERE user_id = %s",
                                                        world.user_id))
    assert "4471" not in stored and "priya" not in stored.lower() and world.email not in stored


def test_a_history_404_is_recorded_with_its_status_then_the_threads_it_made_the_watcher_read(world, engine, log):
    seq = start(world)
    world.poll(world.poller(access_log=log))
    world.sandbox.gmail.deliver(world.email, "news@else.example", body="Unrelated")
    world.sandbox.gmail.expire_history(world.email)
    world.poll(world.poller(access_log=log))
    log.flush()
    recorded = entries(world, engine)[::-1]
    methods = [(e.method, e.http_status) for e in recorded]
    assert ("users.history.list", 404) in methods
    after = methods[methods.index(("users.history.list", 404)) + 1:]
    assert after[:2] == [("users.getProfile", 200), ("users.threads.get", 200)]
    thread_read = next(e for e in recorded if e.method == "users.threads.get")
    assert thread_read.thread_id == seq.thread_id and thread_read.sequence_id == seq.sequence_id
    failed = next(e for e in recorded if e.http_status == 404)
    assert failed.description.endswith("(not found (404))")


def test_pages_go_back_in_time_and_filters_and_counts_agree_with_the_entries(world, engine, log):
    start(world)
    for _ in range(4):
        world.poll(world.poller(access_log=log))
    log.flush()
    everything = entries(world, engine)
    first = entries(world, engine)[:3]
    rest = entries(world, engine, before=first[-1].at, before_id=first[-1].id)
    assert [e.id for e in first + rest] == [e.id for e in everything]
    only = entries(world, engine, filter=access_pb2.AccessFilter(kind="ids_listed"))
    assert only and {e.method for e in only} == {"users.history.list"}
    counted = summarize(engine, SCHEMA, world.user_id, Filter())
    by_kind: dict[str, int] = {}
    for count in counted.counts:
        by_kind[count.kind] = by_kind.get(count.kind, 0) + count.calls
        assert count.day == dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    assert by_kind == {k: sum(1 for e in everything if e.kind == k) for k in {e.kind for e in everything}}
    assert "content_read" not in by_kind


def test_a_deleted_contact_takes_its_entries_and_a_late_record_about_it_keeps_no_id(world, engine, log):
    seq = start(world)
    other = start(world)
    world.sandbox.gmail.deliver(world.email, "x@contact.example", thread_id=seq.thread_id, body="Hello")
    poller = world.poller(access_log=log)
    world.poll(poller)
    queued = world.sandbox.gmail.deliver(world.email, "x@contact.example", thread_id=other.thread_id, body="Hi")
    log.flush()
    assert any(r[3] == seq.sequence_id for r in rows(world))
    world.poll(poller)  # reads the other thread's new message: still queued when its contact goes
    world.event(ev.SequenceStopped(sequence_id=other.sequence_id, reason="contact_deleted"))
    world.event(ev.SequenceStopped(sequence_id=seq.sequence_id, reason="contact_deleted"))
    assert not [r for r in rows(world) if r[3] in (seq.sequence_id, other.sequence_id)]
    log.flush()
    late = [r for r in rows(world) if r[4]]
    assert late == [("users.messages.get", None, None, None, True)]
    assert queued["id"] not in str(rows(world))
    described = next(e for e in entries(world, engine) if e.contact_deleted)
    assert described.description == "Reply watcher read the From header of 1 message, for an email to a contact " \
                                    "you deleted"


def test_the_account_purge_takes_every_entry_and_no_queued_record_brings_one_back(world, engine, log):
    start(world)
    poller = world.poller(access_log=log)
    world.poll(poller)
    log.flush()
    world.poll(poller)  # queued, not written
    assert rows(world) and log.pending()
    world.event(ev.AccountDeletionRequested(deletion_id=new_id("del")))
    assert rows(world) == []
    log.flush()
    assert rows(world) == []


def test_entries_older_than_the_retention_period_and_old_marks_are_expired(world, engine, log):
    start(world)
    world.poll(world.poller(access_log=log))
    log.flush()
    world.admin("UPDATE watcher.gmail_access SET at = at - interval '401 days' WHERE user_id = %s", world.user_id)
    world.admin("INSERT INTO watcher.forgotten_sequences (subject, forgotten_at) VALUES ('\\xdead', now() - "
                "interval '8 days'), ('\\xbeef', now())")
    world.poll(world.poller(access_log=log))
    log.flush()
    kept = len(rows(world))
    aged = world.admin_rows("SELECT count(*) FROM watcher.gmail_access WHERE at < now() - interval '400 days'")[0][0]
    assert aged >= 1
    assert log.expire() == aged
    assert len(rows(world)) == kept - aged
    marks = {bytes(r[0]) for r in world.admin_rows("SELECT subject FROM watcher.forgotten_sequences")}
    assert b"\xbe\xef" in marks and b"\xde\xad" not in marks


def test_a_log_the_database_refuses_never_fails_a_poll_and_every_failure_is_counted(world, engine, database):
    refused = create_engine(make_url(database.app_url("watcher")).set(database="cp_no_such_database"))
    log = AccessLog(refused, SCHEMA, KEY)
    seq = start(world)
    world.sandbox.gmail.deliver(world.email, "x@contact.example", thread_id=seq.thread_id, body="Hello")
    assert [e["type"] for e in world.poll(world.poller(access_log=log))] == ["reply.detected"]
    queued = log.pending()
    assert queued >= 2
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises
        log.flush()
    assert log.failures == 1 and log.pending() == queued and log.dropped == 0
    with user_tx(engine, world.user_id) as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM watcher.gmail_access").scalar() == 0
