"""Two replicas of every stateless service against one PostgreSQL and one RabbitMQ: nothing sent twice and
no event lost, under load through both gateways and across a rolling restart.

    .venv/bin/python bench/replicas.py [--users 200] [--contacts 3] [--follow-ups 2] [--delay-s 30]
                                       [--reply-share 0.25] [--ramp-s 90] [--clients 8] [--seed 13]
                                       [--restart-at 60] [--restart-gap 30] [--balancing auto|client|proxy]

Starts the sandbox once and, against one fresh database and one messaging prefix (both removed
afterwards), two replicas each of accounts, the token vault, the mailer's API (``MAILER_ROLE=api``) and
its scheduler (``MAILER_ROLE=scheduler``), the reply watcher and the gateway (``replica_set.py``). Gmail
answers after ``--latency-ms`` (50, as in ``mailer_sends.py``).

The load, through the public API only, alternating between the two gateways request by request:
``--users`` users arrive evenly over ``--ramp-s`` seconds (``--clients`` at a time); each creates its
account (``GET /v1/me``), connects Gmail through the sandbox's consent (started at one gateway, the
callback at the other; the account named by ``login_hint``), adds ``--contacts`` contacts, and starts one sequence to each: the first email at
once and ``--follow-ups`` follow-ups ``--delay-s`` seconds apart (``PT30S``); then lists its sequences.
A ``--reply-share`` of the sequences gets a reply from the contact (the sandbox's ``deliver``, as
``tests/e2e`` does) as soon as its first email is in Gmail, at least 5 s before the next follow-up falls
due. ``--restart-at`` seconds into the load, one mailer scheduler is stopped with SIGTERM and started
again; ``--restart-gap`` seconds later, one reply watcher.

Once the load is done it waits until everything is quiet (no live sequence, no job, no draft to delete,
no unpublished outbox row, no message in any queue, no watch left) and prints, each beside its target:

* messages sent and sends/s (first to last send);
* duplicates: a step sent more than once (the stand-in's mailbox, per thread and Message-ID, against
  the steps the database holds as sent; target 0), and Gmail send calls beyond one per sent step;
* lost sends: a step of a sequence without a reply that was never sent, or sent in the database but
  absent from Gmail; a sequence that did not end as it should (completed, or stopped ``replied``);
  target 0; and follow-ups sent after the contact's reply (target 0);
* lost events: outbox rows never published, messages left in any queue or dead-letter queue of the
  prefix (management API), events that reached the exchange (a tap queue bound to ``#``) but are absent
  from a consumer's inbox, sequences started, messages sent and sequences ended with no event, and
  watches left for finished sequences; target 0 each;
* how the work spread: each scheduler's sends and each consumer's events (from their log lines, per
  incarnation), each gateway's requests (client side and its metrics), each backend's gRPC calls;
* p50/p95 request latency per gateway and per route, and the API's errors (target 0);
* CPU seconds of every process over the load (``proc_cpu.py``, and ``wait4`` for a restarted one), and
  the peak number of PostgreSQL connections per service.

``--pools small`` (the default) lowers the watchers' and the vault's pools (``REPLY_WATCHER_CONCURRENCY=4``,
``TOKEN_VAULT_DB_POOL_SIZE=3``) so that twelve processes stay within a shared server's ``max_connections``.
Exits 1 when a target is missed. ``--balancing``: ``client`` gives each client every replica's address
(``ipv4:`` list, ``common.rpc.channel`` balancing per call); ``proxy`` puts ``tcp_balancer.py`` between
them (per connection, as a Kubernetes ClusterIP Service); ``auto`` (default) uses ``client`` when an mTLS
call through such a list works and says why not otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from kombu import Connection, Exchange, Queue  # noqa: E402
from proc_cpu import postgres_seconds, process_table  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from replica_set import GATEWAY, ReplicaSet, client_balancing_works  # noqa: E402
from stack import StackConfig, remove_deployment  # noqa: E402
from stack_world import mint_token, wait_healthy  # noqa: E402

from coffeeping.common.messaging.registry import EVENTS  # noqa: E402
from coffeeping.common.messaging.topology import declare_events_exchange  # noqa: E402
from coffeeping_sandbox.gmail import UNITS as GMAIL_METHODS  # noqa: E402

# Each consumer's schema (its inbox).
INBOX = {"accounts": "accounts", "token-vault": "vault", "mailer": "mailer", "reply-watcher": "watcher"}
SCHEMAS = tuple(INBOX.values())
REPLY_MARGIN_S = 5.0  # a reply lands at least this long before the next follow-up falls due
TAP = "bench-tap"
BENCH = "bench-replicas"  # this script's own database connections (left out of the services' count)


# -- the API, through both gateways ------------------------------------------------------------------


class Recorder:
    """Every request the load made: gateway, route, seconds, status (0: no answer)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[tuple[int, str, float, int]] = []

    def add(self, gateway: int, route: str, seconds: float, status: int) -> None:
        with self.lock:
            self.rows.append((gateway, route, seconds, status))


class ApiError(RuntimeError):
    pass


class Api:
    """One user's side of the public API: a keep-alive session to each gateway, used in turn."""

    def __init__(self, urls: list[str], token: str, recorder: Recorder, first: int) -> None:
        self.urls = urls
        self.sessions = [requests.Session() for _ in urls]
        for session in self.sessions:
            session.headers["Authorization"] = f"Bearer {token}"
        self.turns = itertools.count(first)
        self.recorder = recorder

    def next_gateway(self) -> int:
        return next(self.turns) % len(self.urls)

    def call(self, method: str, path: str, route: str, expect: tuple[int, ...], gateway: int | None = None,
             **kwargs: Any) -> requests.Response:
        index = self.next_gateway() if gateway is None else gateway
        began = time.perf_counter()
        try:
            reply = self.sessions[index].request(method, self.urls[index] + path, timeout=60, **kwargs)
        except requests.RequestException as exc:
            self.recorder.add(index, route, time.perf_counter() - began, 0)
            raise ApiError(f"{route}: {type(exc).__name__}") from None
        self.recorder.add(index, route, time.perf_counter() - began, reply.status_code)
        if reply.status_code not in expect:
            raise ApiError(f"{route} answered {reply.status_code}: {reply.text[:200]}")
        return reply

    def close(self) -> None:
        for session in self.sessions:
            session.close()


@dataclass
class Outreach:
    """What the load created, for the checks: sequence id -> (user id, Gmail address, contact address)."""

    sequences: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)  # user id -> Gmail address
    failed_users: list[str] = field(default_factory=list)
    reply_wanted: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Load:
    def __init__(self, args: argparse.Namespace, rs: ReplicaSet, tag: str) -> None:
        self.args, self.rs, self.tag = args, rs, tag
        self.config = rs.config
        self.urls = rs.gateway_urls
        self.recorder = Recorder()
        self.outreach = Outreach()
        self.rng = random.Random(args.seed)
        self.users_done = 0

    def run_user(self, index: int, start_at: float) -> None:
        time.sleep(max(0.0, start_at - time.monotonic()))
        user_id = f"user_rep_{self.tag}_{index:04d}"
        email = f"rep.{self.tag}.{index:04d}@gmail.com"
        api = Api(self.urls, mint_token(self.config, user_id, lifetime_s=3600), self.recorder, index)
        try:
            api.call("GET", "/v1/me", "GET /v1/me", (200,))
            self.connect_gmail(api, email)
            with self.outreach.lock:
                self.outreach.users[user_id] = email
            for k in range(self.args.contacts):
                contact_email = f"c{k}.{index:04d}.{self.tag}@contact.example"
                contact = api.call("POST", "/v1/contacts", "POST /v1/contacts", (201,),
                                   json={"email": contact_email, "first_name": f"Dana{k}"}).json()
                created = api.call("POST", "/v1/sequences", "POST /v1/sequences", (201,), json={
                    "contact_id": contact["id"], "subject": "Coffee next week, {{first_name}}?",
                    "body": "Hi {{first_name}}, would you have 20 minutes for a coffee? " + "x" * 400,
                    "follow_ups": [{"body": f"Bumping this ({n + 1}).", "delay": f"PT{self.args.delay_s}S"}
                                   for n in range(self.args.follow_ups)]}).json()
                with self.outreach.lock:
                    self.outreach.sequences[created["id"]] = (user_id, email, contact_email)
                    if self.rng.random() < self.args.reply_share:
                        self.outreach.reply_wanted.add(created["id"])
                api.call("POST", f"/v1/sequences/{created['id']}/send", "POST /v1/sequences/{id}/send", (202,))
            api.call("GET", "/v1/sequences?limit=10", "GET /v1/sequences", (200,))
        except ApiError as exc:
            with self.outreach.lock:
                self.outreach.failed_users.append(f"{user_id}: {exc}")
        finally:
            api.close()
            with self.outreach.lock:
                self.users_done += 1

    def connect_gmail(self, api: Api, email: str) -> None:
        """Connect at one gateway, Google's consent in the sandbox, the callback at the other: the state
        is signed with the secret both hold, as behind a load balancer. The account is named with
        ``login_hint`` (the person picking their account on Google's page), not with the sandbox's queue of
        consent plans, which concurrent users would take in another order than they filled it."""
        started = api.call("POST", "/v1/gmail/connect", "POST /v1/gmail/connect", (200,))
        authorization_url = started.json()["authorization_url"] + "&" + urlencode({"login_hint": email})
        consent = requests.get(authorization_url, allow_redirects=False, timeout=30)
        if consent.status_code not in (302, 303):
            raise ApiError(f"consent answered {consent.status_code}")
        callback = urlsplit(consent.headers["Location"])
        cookie = started.headers["Set-Cookie"].split(";", 1)[0]  # Secure: sent by hand over plain HTTP
        done = api.call("GET", f"{callback.path}?{callback.query}", "GET /v1/gmail/callback", (302, 303),
                        headers={"Cookie": cookie}, allow_redirects=False)
        if "gmail=connected" not in done.headers.get("Location", ""):
            raise ApiError(f"Gmail not connected: {done.headers.get('Location')}")


# -- replies, restarts, progress ---------------------------------------------------------------------


@dataclass
class Reply:
    sequence_id: str
    thread_id: str
    message_id: str
    delivered_ms: int  # the reply's internalDate in the stand-in


class Replier:
    """Delivers each chosen sequence's reply once its first email is in Gmail (from the database's view of
    the thread), unless its next follow-up falls due within ``REPLY_MARGIN_S`` (then it is left out, so
    that no reply races a send: ``reply_race.py`` measures that window)."""

    def __init__(self, load: Load, admin_db: str) -> None:
        self.load, self.admin_db = load, admin_db
        self.delivered: dict[str, Reply] = {}
        self.skipped: set[str] = set()
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="replier", daemon=True)

    def pending(self) -> list[str]:
        with self.load.outreach.lock:
            wanted = set(self.load.outreach.reply_wanted)
        return sorted(wanted - set(self.delivered) - self.skipped)

    def run(self) -> None:
        with psycopg.connect(self.admin_db, autocommit=True, application_name=BENCH) as conn:
            while not self.stop.is_set():
                pending = self.pending()
                if pending:
                    rows = conn.execute(
                        "SELECT s.id::text, s.thread_id, min(n.due_at) FROM mailer.sequences s "
                        "JOIN mailer.steps f ON f.sequence_id = s.id AND f.position = 0 AND f.status = 'sent' "
                        "LEFT JOIN mailer.steps n ON n.sequence_id = s.id AND n.position = 1 "
                        "WHERE s.id = ANY(%s::uuid[]) AND s.thread_id IS NOT NULL GROUP BY s.id, s.thread_id",
                        (pending,)).fetchall()
                    now = dt.datetime.now(dt.UTC)
                    for sequence_id, thread_id, next_due in rows:
                        if next_due is not None and (next_due - now).total_seconds() < REPLY_MARGIN_S:
                            self.skipped.add(sequence_id)
                            continue
                        _, email, contact = self.load.outreach.sequences[sequence_id]
                        try:
                            reply = requests.post(f"{self.load.config.google_url}/_sandbox/gmail/deliver",
                                                  timeout=30, json={"to": email, "from": f"Dana <{contact}>",
                                                                    "thread_id": thread_id, "body": "Sure, Tuesday works."})
                            reply.raise_for_status()
                        except requests.RequestException as exc:
                            # Left out of the replies (the checks expect it to complete), and said so.
                            self.skipped.add(sequence_id)
                            self.errors.append(f"{sequence_id}: {type(exc).__name__} {exc}"[:200])
                            continue
                        body = reply.json()
                        self.delivered[sequence_id] = Reply(sequence_id, thread_id, body["id"],
                                                            int(body["internalDate"]))
                self.stop.wait(0.5)


def scrape(port: int) -> dict[str, float]:
    """A process's Prometheus counters, summed over their labels (``name_total``: value)."""
    totals: dict[str, float] = defaultdict(float)
    with contextlib.suppress(requests.RequestException):
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    totals[sample.name] += sample.value
    return totals


class Monitor:
    """Every ``every`` seconds a progress line; every second the PostgreSQL connections per service (their
    peak) and whether the broker's management API answers (an outage: the broker restarted)."""

    def __init__(self, load: Load, replier: Replier, admin_db: str, started: float, every: float = 10.0) -> None:
        self.load, self.replier, self.admin_db, self.started, self.every = load, replier, admin_db, started, every
        self.peak: dict[str, int] = Counter()
        self.peak_total = 0
        self.peak_server = 0  # every database's connections (the server is shared)
        self.broker_outages: list[float] = []  # seconds into the load when the broker stopped answering
        self._broker_down = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="monitor", daemon=True)

    def sample(self, conn: psycopg.Connection[Any]) -> None:
        rows = conn.execute("SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = %s "
                            "AND application_name <> %s GROUP BY 1", (self.load.config.database, BENCH)).fetchall()
        for name, count in rows:
            self.peak[name or "?"] = max(self.peak[name or "?"], count)
        self.peak_total = max(self.peak_total, sum(count for _, count in rows))
        self.peak_server = max(self.peak_server, conn.execute("SELECT count(*) FROM pg_stat_activity").fetchone()[0])
        base, auth = management(self.load.config)
        try:
            down = not requests.get(f"{base}/overview", auth=auth, timeout=2).ok
        except requests.RequestException:
            down = True
        if down and not self._broker_down:
            self.broker_outages.append(time.monotonic() - self.started)
            print(f"  the broker stopped answering {self.broker_outages[-1]:.0f}s into the load", flush=True)
        self._broker_down = down

    def run(self) -> None:
        with psycopg.connect(self.admin_db, autocommit=True, application_name=BENCH) as conn:
            last = 0.0
            while not self.stop.is_set():
                self.sample(conn)
                if time.monotonic() - last >= self.every:
                    last = time.monotonic()
                    sent = conn.execute("SELECT count(*) FROM mailer.steps WHERE status = 'sent'").fetchone()[0]
                    print(f"  {time.monotonic() - self.started:5.0f}s  users {self.load.users_done}/"
                          f"{self.load.args.users}  requests {len(self.load.recorder.rows)}  sent {sent}  "
                          f"replies {len(self.replier.delivered)}  db connections {self.peak_total} (peak)", flush=True)
                self.stop.wait(1.0)


def restarts(rs: ReplicaSet, started: float, at: float, gap: float, scraped: dict[str, list[dict[str, float]]],
             log: list[str], stop: threading.Event) -> None:
    """The rolling restart: one scheduler, then one watcher, each SIGTERM -> exit -> start -> port open."""
    kinds = [k for k in ("mailer-scheduler", "reply-watcher") if rs.of(k)]
    for n, kind in enumerate(kinds):
        if stop.wait(max(0.0, started + at + n * gap - time.monotonic())):
            return
        replica = rs.of(kind)[-1]
        scraped[replica.name].append(scrape(replica.metrics_port))
        at = time.monotonic() - started
        done = replica.restart()
        log.append(f"{replica.name}: SIGTERM at {at:.0f}s into the load, exited in {done['exit_s']:.1f}s "
                   f"(code {done['exit_code']:.0f}), serving again {done['down_s']:.1f}s after the signal")
        print(f"  restarted {log[-1]}", flush=True)


# -- the end: quiet, then what Gmail, the database and the broker hold -------------------------------


def management(config: StackConfig) -> tuple[str, tuple[str, str]]:
    parts = urlsplit(config.rabbitmq_management_url)
    return (f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}/api",
            (parts.username or "guest", parts.password or "guest"))


def queue_depths(config: StackConfig) -> dict[str, int]:
    """Messages (ready + unacknowledged) in each queue of the deployment's vhost but the tap."""
    base, auth = management(config)
    reply = requests.get(f"{base}/queues/{quote(config.rabbitmq_vhost, safe='')}", auth=auth, timeout=10)
    reply.raise_for_status()
    return {q["name"]: int(q.get("messages", 0)) + int(q.get("messages_unacknowledged", 0))
            for q in reply.json() if not q["name"].endswith(TAP)}


QUIET_SQL = """
SELECT (SELECT count(*) FROM mailer.sequences WHERE status IN ('scheduled', 'active', 'paused'))
     + (SELECT count(*) FROM mailer.steps WHERE status IN ('sending'))
     + (SELECT count(*) FROM mailer.jobs)
     + (SELECT count(*) FROM mailer.draft_deletions)
     + (SELECT count(*) FROM watcher.watches)
     + (SELECT count(*) FROM accounts.outbox WHERE published_at IS NULL)
     + (SELECT count(*) FROM vault.outbox WHERE published_at IS NULL)
     + (SELECT count(*) FROM mailer.outbox WHERE published_at IS NULL)
     + (SELECT count(*) FROM watcher.outbox WHERE published_at IS NULL)
"""


def wait_quiet(config: StackConfig, admin_db: str, timeout: float) -> tuple[bool, float]:
    """Wait until nothing is left to do anywhere, twice in a row 2 s apart; (quiet, seconds waited)."""
    began = time.monotonic()
    calm = 0
    with psycopg.connect(admin_db, autocommit=True, application_name=BENCH) as conn:
        while time.monotonic() - began < timeout:
            busy = conn.execute(QUIET_SQL).fetchone()[0] + sum(queue_depths(config).values())
            calm = calm + 1 if busy == 0 else 0
            if calm >= 2:
                return True, time.monotonic() - began
            time.sleep(2.0)
    return False, time.monotonic() - began


def declare_tap(config: StackConfig) -> None:
    """A queue bound to every routing key of the events exchange, with the operator's login: what reached
    the broker, to compare with each consumer's inbox. A quorum queue, as the services' are: it keeps its
    messages across a restart of the broker (the shared development broker is restarted by other test runs)."""
    with Connection(config.broker_url("operator")) as conn:
        channel = conn.channel()
        exchange = declare_events_exchange(channel, config.messaging_prefix)
        Queue(f"{config.messaging_prefix}.{TAP}", Exchange(exchange, type="topic"), routing_key="#", durable=True,
              auto_delete=False, queue_arguments={"x-queue-type": "quorum"}, channel=channel).declare()


def drain_tap(config: StackConfig) -> list[dict[str, Any]]:
    envelopes = []
    with Connection(config.broker_url("operator")) as conn:
        channel = conn.channel()
        while (message := channel.basic_get(f"{config.messaging_prefix}.{TAP}", no_ack=True)) is not None:
            envelopes.append(json.loads(message.body))
    return envelopes


@dataclass
class Figures:
    lines: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    sent: int = 0
    deliveries: int = 0  # events times their consumers

    def target(self, label: str, value: float, goal: float = 0, detail: str = "") -> None:
        ok = value == goal
        self.lines.append(f"  {label:<58} {value:>8g}   (target {goal:g}){'' if ok else '   <-- MISSED'}"
                          f"{'  ' + detail if detail else ''}")
        if not ok:
            self.missed.append(label)

    def info(self, text: str) -> None:
        self.lines.append(text)


def check(load: Load, replier: Replier, admin_db: str, envelopes: list[dict[str, Any]],
          depths: dict[str, int], quiet: bool) -> Figures:
    """Duplicates, lost sends and lost events, exactly, from Gmail's, the database's and the broker's view."""
    fig = Figures()
    outreach, google = load.outreach, load.config.google_url
    with psycopg.connect(admin_db, autocommit=True, application_name=BENCH) as conn:
        sequences = {r[0]: r[1:] for r in conn.execute(
            "SELECT id::text, status, stop_reason, thread_id FROM mailer.sequences").fetchall()}
        steps = conn.execute("SELECT sequence_id::text, position, status, rfc_message_id, gmail_message_id, sent_at "
                             "FROM mailer.steps").fetchall()
        unpublished = {s: conn.execute(f"SELECT count(*) FROM {s}.outbox WHERE published_at IS NULL").fetchone()[0]
                       for s in SCHEMAS}
        inboxes = {s: {str(r[0]) for r in conn.execute(f"SELECT event_id FROM {s}.inbox").fetchall()} for s in SCHEMAS}
        watches_left = conn.execute("SELECT count(*) FROM watcher.watches").fetchone()[0]
        detected = conn.execute("SELECT count(*) FROM watcher.seen_messages WHERE outcome = 'reply'").fetchone()[0]
    by_sequence: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in steps:
        by_sequence[row[0]].append(row)
    sent_rows = [r for r in steps if r[2] == "sent"]

    # Gmail's view: every SENT message of each sequence's thread, by Message-ID.
    mailboxes = {email: requests.get(f"{google}/_sandbox/gmail/mailbox", params={"user": email}, timeout=30).json()
                 for email in set(outreach.users.values())}
    quotas = [requests.get(f"{google}/_sandbox/gmail/quota", params={"user": email}, timeout=30).json()
              for email in mailboxes]
    rate_limited = sum(q["rate_limited"] for q in quotas)
    units: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for quota in quotas:
        units.update(quota["by_method"])
        calls.update(quota["calls"])
    send_calls: Counter[str] = Counter()
    for method in ("gmail.messages.send", "gmail.drafts.send"):
        for entry in requests.get(f"{google}/_sandbox/requests", params={"prefix": method}, timeout=30
                                  ).json()["requests"]:
            send_calls[str(entry.get("user") or "")] += 1
    duplicates = missing_in_gmail = leaks = unexpected = 0
    lost_steps = wrong_end = 0
    for sequence_id, (_user, email, _contact) in outreach.sequences.items():
        status, stop_reason, thread_id = sequences.get(sequence_id, (None, None, None))
        rows = by_sequence.get(sequence_id, [])
        threads = {t["id"]: t for t in mailboxes[email]["threads"]}
        messages = threads.get(thread_id, {"messages": []})["messages"] if thread_id else []
        sent_ids = Counter(m["message_id"] for m in messages if "SENT" in m["labelIds"])
        ours = {r[3] for r in rows if r[2] == "sent"}
        duplicates += sum(n - 1 for n in sent_ids.values() if n > 1)
        unexpected += sum(n for mid, n in sent_ids.items() if mid not in ours)
        missing_in_gmail += sum(1 for mid in ours if mid not in sent_ids)
        reply = replier.delivered.get(sequence_id)
        if reply is None:
            # No reply: every step sent, the sequence completed.
            lost_steps += sum(1 for r in rows if r[2] != "sent")
            wrong_end += status != "completed"
        else:
            lost_steps += sum(1 for r in rows if r[1] == 0 and r[2] != "sent")
            wrong_end += not (status == "stopped" and stop_reason == "replied")
            leaks += sum(1 for m in messages if "SENT" in m["labelIds"] and int(m["internalDate"]) > reply.delivered_ms)
    expected = sum(1 + (0 if s in replier.delivered else load.args.follow_ups) for s in outreach.sequences)

    fig.sent = len(sent_rows)
    times = sorted(r[5] for r in sent_rows)
    span = (times[-1] - times[0]).total_seconds() if len(times) > 1 else 0.0
    fig.info(f"messages sent:        {len(sent_rows)} of {expected} expected ({len(outreach.sequences)} sequences, "
             f"{len(replier.delivered)} replied), {len(sent_rows) / span if span else 0:.1f} sends/s "
             f"over {span:.0f}s (first to last send)")
    fig.info(f"Gmail send calls:     {sum(send_calls.values())} for {len(sent_rows)} steps sent "
             f"(beyond one per step: {sum(send_calls.values()) - len(sent_rows)}); Gmail answered 429 "
             f"(its per-user rate; deferred and retried) {rate_limited} times, all methods")
    fig.info(f"Gmail quota units:    {sum(units.values())} ({sum(units.values()) / max(len(sent_rows), 1):.0f} per send); "
             + ", ".join(f"{m} {calls[m]} calls {n} units" for m, n in units.most_common()))
    fig.info(f"replies:              {len(replier.delivered)} delivered, {len(replier.skipped)} left out "
             f"(next follow-up due within {REPLY_MARGIN_S:.0f}s, or the stand-in refused: {len(replier.errors)}"
             f"{'; first: ' + replier.errors[0] if replier.errors else ''}), {detected} detected by the watchers")
    fig.info("")
    fig.info("duplicates")
    fig.target("steps sent twice (same Message-ID twice in the thread)", duplicates)
    fig.target("SENT messages in our threads that are no sent step", unexpected)
    fig.info("lost sends")
    fig.target("steps never sent (sequence without a reply)", lost_steps)
    fig.target("steps sent per the database, absent from Gmail", missing_in_gmail)
    fig.target("sequences not completed / not stopped 'replied' as due", wrong_end)
    fig.target("takeovers detected (nobody wrote in Gmail: each is one of our sends)",
               sum(1 for e in envelopes if e["type"] == "takeover.detected"))
    fig.target("follow-ups sent after the contact's reply", leaks)
    fig.target("the end was quiet (1 = yes)", int(quiet), 1)

    # Events: what the broker took (the tap) against what each consumer recorded, and against the facts.
    fig.info("lost events")
    fig.target("outbox rows never published (" + ", ".join(f"{s} {n}" for s, n in unpublished.items()) + ")",
               sum(unpublished.values()))
    fig.target("messages left in queues and dead-letter queues", sum(depths.values()),
               detail=", ".join(f"{q} {n}" for q, n in depths.items() if n))
    not_consumed: Counter[str] = Counter()
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for envelope in envelopes:
        by_type[envelope["type"]].append(envelope)
        for consumer in EVENTS[envelope["type"]].consumers:
            if envelope["id"] not in inboxes[INBOX[consumer]]:
                not_consumed[f"{envelope['type']} -> {consumer}"] += 1
    fig.target("events on the exchange absent from a consumer's inbox", sum(not_consumed.values()),
               detail=", ".join(f"{k} {n}" for k, n in not_consumed.items()))
    started = {e["payload"].get("sequence_id") for e in by_type["sequence.started"]}
    messages_sent = {e["payload"].get("message_id") for e in by_type["sequence.message_sent"]}
    stopped = {e["payload"].get("sequence_id") for e in by_type["sequence.stopped"]}
    first_sent = {r[0] for r in sent_rows if r[1] == 0}
    fig.target("sequences started with no sequence.started event", len(first_sent - started))
    fig.target("steps sent with no sequence.message_sent event", len({r[4] for r in sent_rows} - messages_sent))
    finished = {s for s, v in sequences.items() if v[0] in ("completed", "stopped")}
    fig.target("sequences ended with no sequence.stopped event", len(finished - stopped))
    fig.target("users connected with no gmail.connected event",
               len(set(outreach.users) - {e["user_id"] for e in by_type["gmail.connected"]}))
    fig.target("watches left for finished sequences (watcher state)", watches_left)
    counts = Counter(e["type"] for e in envelopes)
    fig.deliveries = sum(len(EVENTS[e["type"]].consumers) for e in envelopes)
    ids = Counter(e["id"] for e in envelopes)
    fig.info("events on the exchange: " + ", ".join(f"{t} {n}" for t, n in sorted(counts.items()))
             + f"; published twice (same id): {sum(n - 1 for n in ids.values() if n > 1)}")
    return fig


# -- the report --------------------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))]


def log_counts(paths: list[Path]) -> Counter[str]:
    """Log lines per message text (``msg``), with each handled event counted by type."""
    counts: Counter[str] = Counter()
    for path in paths:
        with open(path, errors="replace") as fh:
            for line in fh:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    msg = entry.get("msg", "")
                    counts[msg] += 1
                    if msg == "event handled":
                        counts[f"event handled: {entry.get('event_type')}"] += 1
    return counts


def spread(rs: ReplicaSet, load: Load, scraped: dict[str, list[dict[str, float]]]) -> list[str]:
    """Each scheduler's sends and each consumer's events (log lines, per incarnation), each backend's gRPC
    calls and each gateway's requests (metrics, summed over incarnations)."""
    lines = ["how the work spread"]
    schedules = "mailer-scheduler" if rs.split_mailer else "mailer-api"
    for replica in rs.replicas:
        per_life = [log_counts([path]) for path in replica.logs]
        total: Counter[str] = Counter()
        for sample in scraped[replica.name]:
            total.update(sample)
        if replica.kind == schedules:
            sends = [c["first email sent"] + c["follow-up sent"] for c in per_life]
            recovered = sum(c["first email found already sent"] + c["follow-up found already sent"] for c in per_life)
            lines.append(f"  {replica.name:<20} sends {sum(sends):>5}"
                         + (f"  (incarnations: {' + '.join(map(str, sends))})" if len(sends) > 1 else "")
                         + f"  found already sent after an interruption: {recovered}")
        if replica.kind in ("mailer-api", "reply-watcher", "accounts", "token-vault"):
            handled = sum(c["event handled"] for c in per_life)
            dup = sum(c["duplicate event skipped"] for c in per_life)
            extra = ""
            if replica.kind == "reply-watcher":
                extra = (f", detections {sum(c['detection published'] for c in per_life)}, push checks "
                         f"{sum(c['mailbox check requested'] for c in per_life)}")
            grpc_calls = total.get("coffeeping_grpc_server_requests_total", 0.0)
            lines.append(f"  {replica.name:<20} events handled {handled:>5} (duplicates skipped {dup}){extra}, "
                         f"gRPC calls {grpc_calls:.0f}"
                         + (f"  (incarnations: {len(per_life)})" if len(per_life) > 1 else ""))
    for index, replica in enumerate(rs.of(GATEWAY)):
        client_side = sum(1 for g, *_ in load.recorder.rows if g == index)
        served = sum(s.get("coffeeping_http_requests_total", 0.0) for s in scraped[replica.name])
        lines.append(f"  {replica.name:<20} requests from the load {client_side:>5}, answered per its metrics "
                     f"{served:.0f} (with Pub/Sub pushes and the console's none)")
    return lines


def latency_lines(load: Load) -> list[str]:
    rows = load.recorder.rows
    lines = ["request latency through the gateways (ms)"]
    for index in range(len(load.urls)):
        mine = [s for g, _, s, st in rows if g == index and 200 <= st < 400]
        lines.append(f"  gateway {index + 1}: {len(mine):>5} requests  p50 {percentile(mine, 50) * 1000:7.1f}  "
                     f"p95 {percentile(mine, 95) * 1000:7.1f}")
    every = [s for _, _, s, st in rows if 200 <= st < 400]
    lines.append(f"  both:      {len(every):>5} requests  p50 {percentile(every, 50) * 1000:7.1f}  "
                 f"p95 {percentile(every, 95) * 1000:7.1f}")
    for route in dict.fromkeys(r for _, r, _, _ in rows):
        mine = [s for _, r, s, st in rows if r == route and 200 <= st < 400]
        lines.append(f"    {route:<32} {len(mine):>5}  p50 {percentile(mine, 50) * 1000:7.1f}  "
                     f"p95 {percentile(mine, 95) * 1000:7.1f}")
    return lines


def rabbitmq_seconds(table: dict[int, tuple[int, int, float]]) -> float:
    """CPU seconds of the broker's processes (the ``rabbitmq`` user's): shared with any other vhost's work."""
    import pwd

    try:
        uid = pwd.getpwnam("rabbitmq").pw_uid
    except KeyError:
        return 0.0
    return sum(cpu for _, owner, cpu in table.values() if owner == uid)


def cpu_now(rs: ReplicaSet) -> dict[str, float]:
    used = rs.cpu_seconds()
    table = process_table()
    used["postgresql"] = postgres_seconds(table, rs.config.database)
    used["rabbitmq (whole broker)"] = rabbitmq_seconds(table)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used["load driver (this process)"] = usage.ru_utime + usage.ru_stime
    return used


NOT_OURS = ("sandbox", "tcp-balancer", "load driver (this process)", "rabbitmq (whole broker)")


def kind_of(name: str) -> str:
    return name.rsplit("-", 1)[0] if name[-1].isdigit() else name


def cpu_lines(used: dict[str, float], idle: dict[str, float], window_s: float, sends: int,
              answered: float, events: int) -> list[str]:
    """CPU seconds per process over the load; then, per kind, what it used beyond its idle rate (measured
    before the load) per operation: the figures the capacity plan takes."""
    lines = [f"CPU seconds over the load ({window_s:.0f}s; per process, a restarted one's incarnations added; "
             "idle cores measured before the load)"]
    groups: dict[str, float] = defaultdict(float)
    active: dict[str, float] = defaultdict(float)
    for name, seconds in used.items():
        lines.append(f"  {name:<30} {seconds:8.1f}   idle {idle.get(name, 0.0):.3f} cores")
        groups[kind_of(name)] += seconds
        active[kind_of(name)] += seconds - idle.get(name, 0.0) * window_s
    ours = sum(v for k, v in groups.items() if k not in NOT_OURS)
    ours_active = sum(v for k, v in active.items() if k not in NOT_OURS)
    lines.append("  by kind: " + ", ".join(f"{k} {v:.1f}" for k, v in groups.items()))
    lines.append("  beyond idle: " + ", ".join(f"{k} {v:.1f}" for k, v in active.items()))

    def per(kind: str, count: float) -> str:
        return f"{active.get(kind, 0.0) * 1000 / max(count, 1):.1f}"

    lines.append(f"  beyond idle, ms per operation: gateways {per('auth-gateway', answered)} per HTTP request "
                 f"answered ({answered:.0f}, pushes included); schedulers {per('mailer-scheduler', sends)}, "
                 f"watchers {per('reply-watcher', sends)}, mailer API {per('mailer-api', sends)}, token vault "
                 f"{per('token-vault', sends)}, accounts {per('accounts', sends)}, PostgreSQL {per('postgresql', sends)} "
                 f"per send ({sends}); RabbitMQ {per('rabbitmq (whole broker)', events)} per event delivered ({events})")
    lines.append(f"  ours (services + PostgreSQL): {ours:.1f} s, {ours_active:.1f} s beyond idle = "
                 f"{ours_active * 1000 / max(sends, 1):.1f} ms per send, every other operation of the load included")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--contacts", type=int, default=3, help="contacts (and sequences) per user")
    parser.add_argument("--follow-ups", type=int, default=2)
    parser.add_argument("--delay-s", type=int, default=30, help="seconds between a sequence's emails")
    parser.add_argument("--reply-share", type=float, default=0.25)
    parser.add_argument("--ramp-s", type=float, default=90.0, help="users arrive evenly over this many seconds")
    parser.add_argument("--clients", type=int, default=8, help="users driven at once")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="Gmail's latency on every call")
    parser.add_argument("--restart-at", type=float, default=60.0, help="seconds into the load of the first restart")
    parser.add_argument("--restart-gap", type=float, default=30.0, help="seconds between the two restarts")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--balancing", choices=("auto", "client", "proxy"), default="auto")
    parser.add_argument("--quiet-timeout", type=float, default=240.0)
    parser.add_argument("--idle-s", type=float, default=10.0, help="an idle window measured before the load")
    parser.add_argument("--pools", choices=("small", "default"), default="small",
                        help="small: REPLY_WATCHER_CONCURRENCY=4 and TOKEN_VAULT_DB_POOL_SIZE=3, so that 12 processes "
                             "stay within a shared server's max_connections (the mailer's pools have no setting)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--log-level", default="INFO", help="the services' LOG_LEVEL (INFO: the counts need it)")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    var = Path(tempfile.mkdtemp(prefix="cp-bench-replicas-"))
    config = StackConfig.ephemeral(var, f"cp_bench_{tag}", f"cpbench{tag}")
    config.extra_env["LOG_LEVEL"] = args.log_level
    if args.pools == "small":
        config.extra_env.update({"REPLY_WATCHER_CONCURRENCY": "4", "TOKEN_VAULT_DB_POOL_SIZE": "3"})
    notes = []
    balancing = args.balancing
    if balancing == "auto":
        from coffeeping.common.certs import ensure

        problem = client_balancing_works(ensure(var / "certs"))
        balancing = "client" if problem is None else "proxy"
        if problem:
            notes.append(f"balancing: an ipv4: list through common.rpc.channel fails over mTLS ({problem}); "
                         "using tcp_balancer.py (per connection, as a ClusterIP Service)")
    rs = ReplicaSet(config, args.replicas, balancing=balancing)
    if not rs.split_mailer:
        notes.append("MAILER_ROLE is not in this tree: two whole mailers (role all) instead of api + scheduler")
    admin_db = config.admin_url.rsplit("/", 1)[0] + f"/{config.database}"
    with psycopg.connect(config.admin_url, autocommit=True, application_name=BENCH) as conn:
        max_connections = int(conn.execute("SHOW max_connections").fetchone()[0])
        in_use = conn.execute("SELECT count(*) FROM pg_stat_activity").fetchone()[0]
    print(f"PostgreSQL: max_connections {max_connections}, {in_use} in use by others before the start", flush=True)
    print(f"database {config.database}, prefix {config.messaging_prefix}, logs in {config.log_dir}", flush=True)
    for note in notes:
        print(f"NOTE {note}", flush=True)
    wall = time.monotonic()
    load = Load(args, rs, tag)
    replier = Replier(load, admin_db)
    scraped: dict[str, list[dict[str, float]]] = defaultdict(list)
    restart_log: list[str] = []
    stop_restarts = threading.Event()
    try:
        rs.start(before_services=lambda: declare_tap(config))
        for url in rs.gateway_urls:
            wait_healthy(url)
        for method in GMAIL_METHODS:
            requests.post(f"{config.google_url}/_sandbox/latency", json={"ms": args.latency_ms, "method": f"gmail.{method}"},
                          timeout=10).raise_for_status()
        print(f"{len(rs.replicas)} processes up in {time.monotonic() - wall:.0f}s ({balancing} balancing): "
              + ", ".join(r.name for r in rs.replicas), flush=True)
        idle_before = cpu_now(rs)
        time.sleep(args.idle_s)
        idle_after = cpu_now(rs)
        started = time.monotonic()
        cpu_before = cpu_now(rs)
        monitor = Monitor(load, replier, admin_db, started)
        monitor.thread.start()
        replier.thread.start()
        restarter = threading.Thread(target=restarts, args=(rs, started, args.restart_at, args.restart_gap, scraped,
                                                             restart_log, stop_restarts), daemon=True)
        restarter.start()
        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            for index in range(args.users):
                pool.submit(load.run_user, index, started + index * args.ramp_s / max(args.users, 1))
        print(f"load driven in {time.monotonic() - started:.0f}s; waiting for the replies' first emails ...", flush=True)
        deadline = time.monotonic() + args.quiet_timeout
        while replier.pending() and replier.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        restarter.join()
        quiet, waited = wait_quiet(config, admin_db, max(10.0, deadline - time.monotonic()))
        window_s = time.monotonic() - started
        print(f"{'quiet' if quiet else 'NOT quiet'} after {window_s:.0f}s", flush=True)
        replier.stop.set()
        monitor.stop.set()
        cpu_after = cpu_now(rs)
        for replica in rs.replicas:
            scraped[replica.name].append(scrape(replica.metrics_port))
        depths = queue_depths(config)
        envelopes = drain_tap(config)
        figures = check(load, replier, admin_db, envelopes, depths, quiet)
    finally:
        stop_restarts.set()
        replier.stop.set()
        rs.stop()
        remove_deployment(config)

    rows = load.recorder.rows
    errors = sum(1 for *_, status in rows if status == 0 or status >= 500)
    db_errors = {r.name: sum(path.read_text(errors="replace").count('"OperationalError"') for path in r.logs)
                 for r in rs.replicas}
    print()
    print(f"== two replicas of every stateless service: {args.users} users x {args.contacts} sequences "
          f"(1 + {args.follow_ups} emails, {args.delay_s}s apart), reply share {args.reply_share}, Gmail latency "
          f"{args.latency_ms:.0f} ms, {os.cpu_count()} CPUs, {balancing} balancing ==")
    for note in notes:
        print(f"NOTE {note}")
    print(f"processes: {', '.join(r.name for r in rs.replicas)}")
    print("rolling restart: " + ("; ".join(restart_log) if restart_log else "none happened"))
    print(f"users: {len(load.outreach.users)} connected, {len(load.outreach.failed_users)} failed"
          + (f" (first: {load.outreach.failed_users[0]})" if load.outreach.failed_users else ""))
    for line in figures.lines:
        print(line)
    print("the API")
    figures.lines = []
    figures.target("requests without an answer or answered 5xx", errors)
    figures.target("users whose journey failed", len(load.outreach.failed_users))
    for line in figures.lines:
        print(line)
    for line in latency_lines(load):
        print(line)
    for line in spread(rs, load, scraped):
        print(line)
    balanced = rs.balancer_connections()
    if balanced:
        names = {r.address: r.name for r in rs.replicas}
        print("  connections the TCP balancer handed each replica: "
              + ", ".join(f"{names.get(k, k)} {v}" for k, v in sorted(balanced.items(), key=lambda kv: names.get(kv[0], ""))))
    print(f"PostgreSQL connections at peak: {monitor.peak_total} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(monitor.peak.items()))}; all replicas; --pools {args.pools}); "
          f"the whole server at peak {monitor.peak_server} of max_connections {max_connections}")
    print("broker outages during the load (its management API unreachable; other test runs restart the shared "
          "broker): " + (", ".join(f"at {t:.0f}s" for t in monitor.broker_outages) or "none"))
    print("database errors logged (OperationalError: a refused or lost connection): "
          + (", ".join(f"{name} {n}" for name, n in db_errors.items() if n) or "none"))
    idle = {name: (idle_after[name] - idle_before.get(name, 0.0)) / args.idle_s for name in idle_after}
    used = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    answered = sum(s.get("coffeeping_http_requests_total", 0.0) for r in rs.of(GATEWAY) for s in scraped[r.name])
    for line in cpu_lines(used, idle, window_s, figures.sent, answered, figures.deliveries):
        print(line)
    print(f"wall time: {time.monotonic() - wall:.0f}s")
    if not args.keep_logs:
        shutil.rmtree(var, ignore_errors=True)
    else:
        print(f"logs kept in {config.log_dir}")
    if figures.missed:
        print(f"MISSED: {', '.join(figures.missed)}")
        return 1
    print("every target met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
