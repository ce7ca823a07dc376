"""Gmail push in the watcher: watches made, renewed and stopped against the sandbox's Gmail, pushes that
make a mailbox due (and those that must not), and the safety-net poll of watched mailboxes.

These tests run the loop and claim work across all users, so they get a database of their own.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from bench.watcher_harness import new_id, send_first_email
from coffeeping.common.db import make_engine
from coffeeping.common.gmail import SCOPE_METADATA
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping_reply_watcher import services
from coffeeping_reply_watcher.poller import STOP_ATTEMPTS
from coffeeping_reply_watcher.services import StopItem
from tests.conftest import fresh_database

TOPIC = "projects/coffeeping-test/topics/gmail-push"
KEY = b"watcher-test-tombstone-key-0123456789"  # the World's handler buries with this key


@pytest.fixture(scope="module")
def database(pg_admin_url):
    with fresh_database(pg_admin_url) as db:
        yield db


@pytest.fixture(scope="module")
def engine(database):
    eng = make_engine(database.app_url("watcher"), pool_size=8, application_name="watcher-push-tests")
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture(scope="module", autouse=True)
def topic(sandbox):
    sandbox.pubsub.create_topic(TOPIC, exist_ok=True)
    return TOPIC


def pusher(world, **overrides):
    options = {"push_topic": TOPIC, "fallback_interval_s": 600.0, "tombstone_key": KEY}
    options.update(overrides)
    return world.poller(**options)


def start(world):
    # A watch (100 units), a stop (50) and a second watch can fall in one second here: no per-user rate.
    world.sandbox.gmail.set_rate_limit(None, user=world.email)
    seq = send_first_email(world.sandbox.gmail, world.user_id, world.email, f"{new_id('c')}@contact.example")
    world.event(seq.started())
    world.event(seq.sent())
    return seq


def watch_row(world) -> dict:
    rows = world.admin_rows(
        "SELECT watch_expires_at, watch_due_at, watch_failures, watch_error, paused, "
        "extract(epoch FROM due_at - now()), extract(epoch FROM watch_due_at - now()), pushed_history_id "
        "FROM watcher.mailboxes WHERE user_id = %s", world.user_id)
    assert rows, "no mailbox"
    expires, watch_due, failures, error, paused, due_in, watch_due_in, pushed = rows[0]
    return {"expires": expires, "watch_due": watch_due, "failures": failures, "error": error, "paused": paused,
            "due_in": float(due_in), "watch_due_in": float(watch_due_in), "pushed": pushed}


def stops(world) -> list[tuple]:
    return world.admin_rows("SELECT deletion_id, attempts FROM watcher.watch_stops WHERE user_id = %s", world.user_id)


def run_stop(world, poller) -> str:
    """Run the user's queued stop as the loop would (its attempts as recorded)."""
    (deletion_id, attempts), = stops(world)
    return poller.stop_watch(StopItem(world.user_id, deletion_id, attempts))


def methods_since(world, since: float) -> list[str]:
    return [e["method"] for e in world.gmail_requests(since)]


def settle(world, poller) -> None:
    """First poll, the watch, and the read the new watch asks for: the mailbox is then quiet and watched."""
    world.poll(poller)
    assert poller.watch_user(world.user_id) == "watched"
    world.poll(poller)


def test_a_live_sequence_gets_a_metadata_only_watch_on_inbox_and_sent_then_the_fallback_interval(world):
    start(world)
    poller = pusher(world, interval_s=30.0)
    world.poll(poller)
    assert 25 < watch_row(world)["due_in"] <= 30  # not watched yet: the normal interval

    assert poller.watch_user(world.user_id) == "watched"
    watch = world.sandbox.gmail.watch_of(world.email)
    assert watch["topicName"] == TOPIC and watch["labelIds"] == ["INBOX", "SENT"]
    assert watch["labelFilterBehavior"] == "include" and not watch["expired"]
    row = watch_row(world)
    assert row["expires"] == dt.datetime.fromtimestamp(int(watch["expiration"]) / 1000, dt.UTC)
    assert row["watch_due"] == row["expires"] - dt.timedelta(days=1)  # renewed a day before it expires
    assert row["failures"] == 0 and row["error"] is None
    # A new watch asks for one read from the cursor, so nothing that came before it waits for the fallback.
    assert row["due_in"] <= 0 and row["pushed"] == int(watch["historyId"])
    since = time.time()
    world.poll(poller)
    assert methods_since(world, since) == ["gmail.history.list"]
    assert 590 < watch_row(world)["due_in"] <= 600  # watched: the fallback interval
    assert world.vault.asked[world.user_id] == {(SCOPE_METADATA,)}  # gmail.metadata alone, for watch too


def test_the_safety_net_poll_of_a_quiet_watched_mailbox_costs_one_unit_and_reads_history_only_after_a_change(world):
    seq = start(world)
    poller = pusher(world)
    settle(world, poller)
    before = world.sandbox.gmail.quota(world.email)
    since = time.time()
    assert world.poll(poller) == []
    assert methods_since(world, since) == ["gmail.getProfile"]
    assert world.sandbox.gmail.quota(world.email)["units_used"] - before["units_used"] == 1

    reply = world.sandbox.gmail.deliver(world.email, "Dana <dana@contact.example>", thread_id=seq.thread_id)
    since = time.time()
    events = world.poll(poller)  # a lost push: the safety net finds the reply
    assert [(e["type"], e["payload"]["message_id"]) for e in events] == [("reply.detected", reply["id"])]
    assert methods_since(world, since) == ["gmail.getProfile", "gmail.history.list", "gmail.messages.get"]


def test_a_push_makes_the_mailbox_due_now_and_a_push_the_cursor_has_passed_does_nothing(world):
    seq = start(world)
    poller = pusher(world)
    settle(world, poller)
    cursor = world.mailbox()["history_id"]
    assert services.schedule_check(world.engine, world.email.upper(), cursor) is False  # duplicate or late
    assert services.schedule_check(world.engine, world.email, cursor - 3) is False  # out of order
    assert watch_row(world)["due_in"] > 500

    reply = world.sandbox.gmail.deliver(world.email, "erin@contact.example", thread_id=seq.thread_id)
    pushed = int(world.sandbox.gmail.mailbox(world.email)["historyId"])
    assert services.schedule_check(world.engine, world.email, pushed) is True
    assert services.schedule_check(world.engine, world.email, pushed) is True  # not read yet: still due
    assert watch_row(world)["due_in"] <= 0
    since = time.time()
    result = poller.poll_user(world.user_id)  # the pushes coalesce into this one read
    assert [e["payload"]["message_id"] for e in result.events] == [reply["id"]]
    assert methods_since(world, since).count("gmail.history.list") == 1
    # Every copy of those pushes, late or duplicated, now finds the cursor past it.
    for history_id in (pushed, pushed - 1, cursor + 1):
        assert services.schedule_check(world.engine, world.email, history_id) is False
    assert services.schedule_check(world.engine, "nobody@example.com", pushed) is False
    assert len(world.outbox("reply.detected")) == 1


def test_a_push_during_a_poll_reads_again_at_once_only_when_it_names_news_the_poll_did_not_read(world):
    start(world)
    poller = pusher(world)
    settle(world, poller)
    cursor = world.mailbox()["history_id"]
    claim = "UPDATE watcher.mailboxes SET claimed_at = now(), due_at = now() + interval '1 minute' WHERE user_id = %s"

    # A push arrives while a poll is in flight: the lease stands (no second poll at once)...
    world.admin(claim, world.user_id)
    assert services.schedule_check(world.engine, world.email, cursor + 5) is True
    assert 50 < watch_row(world)["due_in"] <= 60
    # ...and the poll's commit, having read up to cursor + 5 or beyond, goes back to the fallback.
    services.commit_poll(world.engine, world.user_id, [], cursor + 5, set(), 0.0, 600.0)
    assert watch_row(world)["due_in"] > 590 and watch_row(world)["pushed"] is None

    # Had the poll read less than the push named, it reads again at once.
    world.admin(claim, world.user_id)
    assert services.schedule_check(world.engine, world.email, cursor + 9) is True
    services.commit_poll(world.engine, world.user_id, [], cursor + 6, set(), 0.0, 600.0)
    assert watch_row(world)["due_in"] <= 0 and watch_row(world)["pushed"] is None
    assert world.mailbox()["history_id"] == cursor + 6


def test_a_failed_watch_is_recorded_retried_with_backoff_and_keeps_the_normal_interval(world):
    start(world)
    poller = pusher(world, interval_s=30.0, max_backoff_s=3600.0)
    world.poll(poller)
    world.sandbox.control.arm("gmail.watch", 503, count=2)
    try:
        assert poller.watch_user(world.user_id) == "failed"
        row = watch_row(world)
        assert row["failures"] == 1 and row["error"] == "gmail_503" and row["expires"] is None
        assert 25 < row["watch_due_in"] <= 30
        world.poll(poller)
        assert 25 < watch_row(world)["due_in"] <= 30  # polled as before while unwatched
        assert poller.watch_user(world.user_id) == "failed"
        assert 55 < watch_row(world)["watch_due_in"] <= 60  # the backoff doubles
    finally:
        world.sandbox.control.clear_faults("gmail.watch")
    assert poller.watch_user(world.user_id) == "watched"
    row = watch_row(world)
    assert row["failures"] == 0 and row["error"] is None and row["expires"] is not None


def test_an_unregistered_topic_is_a_recorded_failure_not_a_crash(world):
    start(world)
    poller = pusher(world, push_topic="projects/coffeeping-test/topics/nobody-made-this")
    assert poller.watch_user(world.user_id) == "failed"
    assert watch_row(world)["error"] == "gmail_403"
    assert world.sandbox.gmail.watch_of(world.email) is None


def test_the_loop_renews_a_watch_before_it_expires(world, stop_event):
    start(world)
    # The loop looks for due work every interval / 4 (at most 5 s with push on): 0.25 s here.
    poller = pusher(world, interval_s=1.0, fallback_interval_s=3600.0)
    world.sandbox.gmail.set_watch_lifetime(4)
    loop = threading.Thread(target=poller.run, args=(stop_event,), daemon=True)
    try:
        loop.start()
        deadline = time.monotonic() + 15
        lapsed = []
        while time.monotonic() < deadline:
            watch = world.sandbox.gmail.watch_of(world.email)
            if watch is not None:
                lapsed.append(watch["expired"])
            if methods_since(world, 0).count("gmail.watch") >= 4:
                break
            time.sleep(0.1)
        assert methods_since(world, 0).count("gmail.watch") >= 4, "the watch was not renewed"
        assert lapsed and not any(lapsed), "the watch expired before it was renewed"
    finally:
        world.sandbox.gmail.set_watch_lifetime(None)
        stop_event.set()
        loop.join(10)


def test_the_watch_is_stopped_when_the_last_sequence_stops(world):
    seq = start(world)
    poller = pusher(world)
    settle(world, poller)
    world.event(ev.SequenceStopped(sequence_id=seq.sequence_id, reason="completed"))
    assert world.mailbox() is None and stops(world) == [(None, 0)]
    assert world.sandbox.gmail.watch_of(world.email) is not None  # nothing called Gmail in the event's transaction
    assert run_stop(world, poller) == "stopped"
    assert world.sandbox.gmail.watch_of(world.email) is None and stops(world) == []


def test_a_sequence_started_before_the_stop_ran_keeps_the_mailbox_watched(world):
    seq = start(world)
    poller = pusher(world)
    settle(world, poller)
    world.event(ev.SequenceStopped(sequence_id=seq.sequence_id, reason="completed"))
    start(world)
    since = time.time()
    assert run_stop(world, poller) == "superseded"
    assert "gmail.stop" not in methods_since(world, since) and stops(world) == []
    assert poller.watch_user(world.user_id) == "watched"  # the new mailbox row makes its own watch
    assert world.sandbox.gmail.watch_of(world.email) is not None


def test_a_watch_gmail_accepts_after_the_mailbox_went_is_stopped_again(world):
    seq = start(world)
    poller = pusher(world)
    world.poll(poller)
    world.event(ev.SequenceStopped(sequence_id=seq.sequence_id, reason="completed"))
    assert stops(world) == []  # no watch was held
    # The loop had claimed the watch just before: it lands after the mailbox went.
    assert poller.watch_user(world.user_id) == "gone"
    assert world.mailbox() is None  # never re-created
    assert stops(world) == [(None, 0)]
    assert run_stop(world, poller) == "stopped"
    assert world.sandbox.gmail.watch_of(world.email) is None


def test_a_disconnect_queues_the_stop_and_a_stop_refused_for_want_of_a_grant_counts_as_done(world):
    start(world)
    poller = pusher(world)
    settle(world, poller)
    # The vault revokes the grant at Google before it publishes gmail.disconnected.
    world.sandbox.oauth.revoke_grants(email=world.email)
    world.vault.disconnected.add(world.user_id)
    world.event(ev.GmailDisconnected(reason="user_disconnected"))
    row = watch_row(world)
    assert row["paused"] and row["expires"] is None and stops(world) == [(None, 0)]
    assert run_stop(world, poller) == "grant_gone"
    assert stops(world) == []
    # Pushes for the address do nothing while the mailbox is paused.
    assert services.schedule_check(world.engine, world.email, 10**12) is False

    world.vault.connect(world.user_id, world.email)
    world.event(ev.GmailConnected(email=world.email))
    row = watch_row(world)
    assert not row["paused"] and row["watch_due_in"] <= 0 and row["due_in"] <= 0
    assert poller.watch_user(world.user_id) == "watched"


def test_account_deletion_stops_the_watch_before_reporting_purged_and_keeps_only_the_user_id(world):
    start(world)
    poller = pusher(world)
    settle(world, poller)
    world.event(ev.AccountDeletionRequested(deletion_id="del_push"))
    assert world.outbox("account.purged") == []  # reported once the watch is stopped
    assert world.mailbox() is None and stops(world) == [("del_push", 0)]
    for table in ("watches", "sent_messages", "seen_messages"):
        assert world.admin_rows(f"SELECT count(*) FROM watcher.{table} WHERE user_id = %s", world.user_id) == [(0,)]

    assert run_stop(world, poller) == "stopped"
    assert world.sandbox.gmail.watch_of(world.email) is None
    assert [e["payload"] for e in world.outbox("account.purged")] == [
        {"deletion_id": "del_push", "service": "reply-watcher"}]
    assert stops(world) == [] and world.mailbox() is None
    # A watch the loop was making meanwhile finds the user buried: no mailbox, no stop row comes back
    # (the revocation of the grant ends that watch).
    assert poller.watch_user(world.user_id) == "gone"
    assert world.mailbox() is None and stops(world) == []
    # The same request again (a redelivery) finds no watch and reports at once.
    world.event(ev.AccountDeletionRequested(deletion_id="del_push"))
    assert len(world.outbox("account.purged")) == 2 and stops(world) == []


def test_a_deletions_stop_that_keeps_failing_gives_up_after_bounded_attempts_and_still_reports(world):
    start(world)
    poller = pusher(world)
    settle(world, poller)
    world.event(ev.AccountDeletionRequested(deletion_id="del_stuck"))
    world.sandbox.control.arm("gmail.stop", 503, count=STOP_ATTEMPTS + 5)
    try:
        outcomes = [run_stop(world, poller) for _ in range(STOP_ATTEMPTS)]
    finally:
        world.sandbox.control.clear_faults("gmail.stop")
    assert outcomes == ["retry"] * (STOP_ATTEMPTS - 1) + ["gave_up"]
    assert stops(world) == []
    assert [e["payload"]["deletion_id"] for e in world.outbox("account.purged")] == ["del_stuck"]


def test_with_push_off_nothing_is_watched_and_polling_and_deletion_are_as_before(world):
    start(world)
    poller = world.poller(interval_s=30.0)  # no topic
    since = time.time()
    poller.push_due_once()
    world.poll(poller)
    world.poll(poller)
    assert "gmail.watch" not in methods_since(world, since)
    assert "gmail.getProfile" not in methods_since(world, since)
    assert 25 < watch_row(world)["due_in"] <= 30
    world.event(ev.AccountDeletionRequested(deletion_id="del_off"))
    assert [e["payload"]["deletion_id"] for e in world.outbox("account.purged")] == ["del_off"]
    assert stops(world) == []
