"""Reply-watcher push benchmark: N watched users, Gmail (the sandbox, in this process) with injected
latency, the real watcher as its own process (its CPU read from /proc), and the real gateway taking the
sandbox's Pub/Sub pushes (Google's OIDC token checked) and calling the watcher's ``CheckMailbox``.

    .venv/bin/python bench/watcher_push.py                                  # 5,000 users, ~4-5 minutes
    .venv/bin/python bench/watcher_push.py --users 500 --window 20 --replies 15    # quick check, ~1.5 min

Three phases over the same users (one watched thread each, seeded with COPY; tokens from a token-vault
double over mTLS). Each idle window runs at production cadence, its schedule spread evenly as in the
steady state, and is scaled to an hour (x 3600 / ``--window``):

1. **Polling only** (``GMAIL_PUSH_TOPIC`` unset, a poll every ``--poll-interval`` = 60 s): after a
   first cycle that fetches every token, the polls are spread over the interval and one idle window
   measured: polling's CPU seconds and Gmail units per hour.
2. **Push, idle**: the watcher restarted with the topic set (``REPLY_WATCHER_FALLBACK_INTERVAL_S`` =
   ``--fallback`` = 900 s). It watches every mailbox and reads each once (the ramp); then the
   safety-net polls are spread over the fallback interval and one idle window measured. A renewal
   comes every 6 days (a 7-day watch renewed a day early), never within a short window, so its share
   is added from the ramp's measured ``users.watch`` calls: their units per call (100) x 1/144 per user
   per hour, and the ramp's CPU per operation x renewals per hour.
3. **Push, replies**: ``--replies`` replies delivered to random users' watched threads, ``--reply-gap-s``
   apart; each one's latency is from its delivery to its ``reply.detected`` being committed
   (``watcher.seen_messages``, written in the same transaction as the outbox row).

Targets: reply -> detected p99 < 2 s through push; < 5 Gmail quota units per user per idle hour; the
watcher's idle CPU at least 10x under polling's.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from bootstrap_db import DEFAULT_ADMIN_URL, bootstrap, role_url  # noqa: E402
from kombu import Connection  # noqa: E402
from service_process import ServiceProcess  # noqa: E402
from watcher_harness import start_vault_double  # noqa: E402

from coffeeping.common.certs import ensure  # noqa: E402
from coffeeping.common.logging import configure_logging  # noqa: E402
from coffeeping.common.messaging import declare_topology, delete_topology  # noqa: E402
from coffeeping_sandbox.pubsub import PushConfig  # noqa: E402
from coffeeping_sandbox.server import start_sandbox  # noqa: E402

TOPIC = "projects/coffeeping-bench/topics/gmail-push"
PUSH_ACCOUNT = "gmail-push@coffeeping-bench.iam.gserviceaccount.com"
RENEWAL_PERIOD_S = 6 * 86400  # a 7-day watch renewed a day before it expires
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=50.0, help="Gmail latency on every call")
    parser.add_argument("--concurrency", type=int, default=24, help="REPLY_WATCHER_CONCURRENCY")
    parser.add_argument("--poll-interval", type=float, default=60.0, help="polling phase interval, s")
    parser.add_argument("--window", type=float, default=60.0, help="each idle measurement window, s")
    parser.add_argument("--fallback", type=float, default=900.0, help="REPLY_WATCHER_FALLBACK_INTERVAL_S")
    parser.add_argument("--replies", type=int, default=60)
    parser.add_argument("--reply-gap-s", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    args = parser.parse_args()
    configure_logging("bench", "WARNING")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per sandbox request otherwise

    tag = uuid.uuid4().hex[:8]
    database, prefix = f"cp_bench_{tag}", f"cpbench{tag}"
    var = Path(tempfile.mkdtemp(prefix="cp-bench-push-"))
    certs = ensure(var / "certs")
    admin_db = args.admin_url.rsplit("/", 1)[0] + f"/{database}"
    gateway_port, watcher_port = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{gateway_port}/v1/webhooks/gmail"
    print(f"{args.users} users, Gmail latency {args.latency_ms:.0f} ms; database {database}, logs in {var}",
          flush=True)
    sandbox = vault_server = None
    procs: list[ServiceProcess] = []
    try:
        bootstrap(args.admin_url, database, dev=True)
        sandbox = start_sandbox(pubsub_push=[PushConfig(TOPIC, endpoint, audience=endpoint,
                                                        service_account=PUSH_ACCOUNT)])
        sandbox.gmail.set_rate_limit(None)
        double, vault_server = start_vault_double(sandbox, certs)
        with Connection(args.amqp_url) as conn:  # where the watcher's detections go (the mailer's queue)
            declare_topology(conn, prefix, "mailer", ["reply.#", "bounce.#", "takeover.#", "account.#"])
        users = seed(sandbox, double, admin_db, args.users)
        sandbox.control.set_latency(args.latency_ms / 1000.0)

        common = {
            "DATABASE_URL": role_url(args.admin_url, database, "cp_watcher", dev=True),
            "GRPC_PORT": str(watcher_port), "TLS_CA_CERT": str(certs / "ca.pem"),
            "TLS_CERT": str(certs / "reply-watcher.pem"), "TLS_KEY": str(certs / "reply-watcher-key.pem"),
            "RABBITMQ_URL": args.amqp_url, "MESSAGING_PREFIX": prefix,
            "TOMBSTONE_KEY": "bench-tombstone-key-" + "x" * 32,
            "TOKEN_VAULT_GRPC_ADDR": f"127.0.0.1:{vault_server.port}", "GMAIL_API_ENDPOINT": sandbox.google_url,
            "REPLY_WATCHER_POLL_INTERVAL_S": str(args.poll_interval),
            "REPLY_WATCHER_CONCURRENCY": str(args.concurrency), "REPLY_WATCHER_TAKEOVER_GRACE_S": "3600",
            "LOG_LEVEL": "WARNING", "SHUTDOWN_GRACE_S": "2",
        }

        # -- 1. polling only -------------------------------------------------------------------------
        watcher = ServiceProcess("coffeeping_reply_watcher", common, watcher_port, var / "watcher-poll.log").start()
        procs.append(watcher)
        wait_db(admin_db, "SELECT count(*) FROM watcher.mailboxes WHERE last_polled_at IS NULL", 0,
                timeout=args.poll_interval * 3 + 60, what="the first polling cycle")
        spread(admin_db, "due_at", args.poll_interval)
        poll = measure(sandbox, users, watcher, args.window)
        watcher.stop()
        per_hour = 3600.0 / args.window
        poll_cpu_h = poll.cpu_s * per_hour
        poll_units_h = poll.units / len(users) * per_hour
        print(f"polling every {args.poll_interval:.0f} s, idle window {args.window:.0f} s: "
              f"{poll.calls.get('history.list', 0)} history.list, {poll.units} units, {poll.cpu_s:.2f} CPU s",
              flush=True)

        # -- 2. push, idle ----------------------------------------------------------------------------
        gateway = ServiceProcess("coffeeping_gateway", gateway_env(sandbox, certs, gateway_port, watcher_port, endpoint),
                        gateway_port, var / "gateway.log").start()
        procs.append(gateway)
        env = {**common, "GMAIL_PUSH_TOPIC": TOPIC, "REPLY_WATCHER_FALLBACK_INTERVAL_S": str(args.fallback)}
        units0, calls0, methods0 = quota(sandbox, users)
        watcher = ServiceProcess("coffeeping_reply_watcher", env, watcher_port, var / "watcher-push.log").start()
        procs.append(watcher)
        ramp_started = time.time()
        wait_db(admin_db, "SELECT count(*) FROM watcher.mailboxes WHERE watch_expires_at IS NULL "
                          "OR pushed_history_id IS NOT NULL OR claimed_at IS NOT NULL", 0,
                timeout=600, what="every mailbox to be watched and read once")
        ramp_s = time.time() - ramp_started
        ramp_cpu = cpu_seconds(watcher.pid)  # the process's whole life so far: start-up and the ramp
        _, calls1, methods1 = quota(sandbox, users)
        ramp_calls, ramp_methods = calls1 - calls0, methods1 - methods0
        spread(admin_db, "due_at", args.fallback)
        push = measure(sandbox, users, watcher, args.window)
        print(f"push: {ramp_calls.get('watch', 0)} users watched and read once in {ramp_s:.1f} s "
              f"({ramp_cpu:.1f} CPU s); idle window {args.window:.0f} s: {push.calls.get('getProfile', 0)} "
              f"safety-net polls (about {len(users) * args.window / args.fallback:.0f} expected), "
              f"{push.calls.get('history.list', 0)} history.list, {push.units} units, {push.cpu_s:.2f} CPU s",
              flush=True)

        # -- 3. push, replies -------------------------------------------------------------------------
        latencies, via_push = reply_latencies(sandbox, admin_db, users, args)

        # -- figures ----------------------------------------------------------------------------------
        watches = ramp_calls.get("watch", 0)
        unit_renewal = ramp_methods.get("watch", 0) / watches if watches else float("nan")
        cpu_per_ramp_op = ramp_cpu / max(sum(ramp_calls.values()), 1)
        renewals_h = len(users) * 3600.0 / RENEWAL_PERIOD_S
        polls = push.calls.get("getProfile", 0)
        unit_poll = push.units / polls if polls else float("nan")
        push_units_h = unit_poll * 3600.0 / args.fallback + unit_renewal * 3600.0 / RENEWAL_PERIOD_S
        push_cpu_h = push.cpu_s * per_hour + cpu_per_ramp_op * renewals_h
        ratio = poll_cpu_h / push_cpu_h if push_cpu_h else float("inf")
        ordered = sorted(latencies)
        print()
        print(f"reply -> reply.detected committed, through push ({len(ordered)} replies, {via_push} after an "
              f"acknowledged push): p50 {percentile(ordered, 50):.3f} s, p99 {percentile(ordered, 99):.3f} s "
              f"(target p99 < 2 s), max {ordered[-1]:.3f} s")
        print(f"Gmail quota per user per idle hour with push: {push_units_h:.2f} units (target < 5) = a safety-net "
              f"poll every {args.fallback:.0f} s at {unit_poll:.2f} units (measured: {push.units} units, {polls} "
              f"polls) + a renewal every 6 days at {unit_renewal:.0f} units (measured in the ramp) / 144 h; "
              f"polling every {args.poll_interval:.0f} s: {poll_units_h:.1f} measured (the brief's reference: 240)")
        print(f"watcher CPU seconds per idle hour for {len(users)} users: push {push_cpu_h:.1f} "
              f"({push.cpu_s * per_hour:.1f} measured + renewals {cpu_per_ramp_op * renewals_h:.2f}), polling "
              f"{poll_cpu_h:.1f}: {ratio:.1f}x less (target >= 10x)", flush=True)
    finally:
        for child in reversed(procs):
            child.stop()
        if vault_server is not None:
            vault_server.stop()
        if sandbox is not None:
            sandbox.stop()
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        delete_topology(args.amqp_url, prefix)


# -- the world --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_env(sandbox, certs: Path, port: int, watcher_port: int, endpoint: str) -> dict[str, str]:
    return {
        "COFFEEPING_ENV": "development", "GATEWAY_PORT": str(port), "GATEWAY_WORKERS": "1", "GATEWAY_THREADS": "8",
        "CLERK_JWKS_URL": f"{sandbox.clerk_url}/.well-known/jwks.json", "CLERK_ISSUER": sandbox.clerk_url,
        "CLERK_WEBHOOK_SECRET": "whsec_" + "b" * 32, "OAUTH_STATE_SECRET": "s" * 48,
        "GOOGLE_CLIENT_ID": "bench.apps.googleusercontent.com",
        "GOOGLE_REDIRECT_URI": f"http://127.0.0.1:{port}/v1/gmail/callback", "APP_URL": "http://localhost:3000",
        "TLS_CA_CERT": str(certs / "ca.pem"), "TLS_CERT": str(certs / "auth-gateway.pem"),
        "TLS_KEY": str(certs / "auth-gateway-key.pem"), "REPLY_WATCHER_GRPC_ADDR": f"127.0.0.1:{watcher_port}",
        "GMAIL_PUSH_AUDIENCE": endpoint, "GMAIL_PUSH_SERVICE_ACCOUNT": PUSH_ACCOUNT,
        "GOOGLE_OIDC_CERTS_URL": f"{sandbox.google_url}/oauth2/v1/certs", "LOG_LEVEL": "WARNING",
    }


def seed(sandbox, double, admin_db: str, count: int) -> list[tuple[str, str, str]]:
    """``count`` users, each with one running sequence: its first email sent (in the sandbox's Gmail)
    and its thread watched (COPY into the watcher's tables), the cursor at the mailbox's history id."""
    started = time.perf_counter()
    users, boxes, watched, sent = [], [], [], []
    for n in range(count):
        user_id, email = f"user_bench{n}", f"bench{n}@example.com"
        double.connect(user_id, email)
        raw = (f"From: {email}\r\nTo: contact{n}@example.org\r\nSubject: Coffee?\r\n"
               f"Message-ID: <cp.bench{n}@gmail.com>\r\n\r\nHello\r\n").encode()
        with sandbox.gmail._lock:  # what users.messages.send stores, without building the API's answer
            box = sandbox.gmail._mailbox(email)
            message = box.add_message(raw, ["SENT"], None)
            history_id = box.history_id
        users.append((user_id, email, message.thread_id))
        boxes.append((user_id, email, history_id))
        watched.append((user_id, f"seq-{n}", f"contact-{n}", f"contact{n}@example.org", message.thread_id))
        sent.append((user_id, message.id, message.thread_id, f"seq-{n}"))
    with psycopg.connect(admin_db) as conn:
        for table, columns, rows in (
            ("watcher.mailboxes", "user_id, email, history_id", boxes),
            ("watcher.watches", "user_id, sequence_id, contact_id, contact_email, thread_id", watched),
            ("watcher.sent_messages", "user_id, message_id, thread_id, sequence_id", sent),
        ):
            with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
    print(f"seeded {count} users in {time.perf_counter() - started:.1f} s", flush=True)
    return users


def spread(admin_db: str, column: str, seconds: float) -> None:
    """Spread the schedule evenly over ``seconds`` from now, as it is in the steady state (after the
    first cycle every mailbox fell due at about the same moment)."""
    with psycopg.connect(admin_db, autocommit=True) as conn:
        conn.execute(f"UPDATE watcher.mailboxes SET {column} = now() + random() * make_interval(secs => %s)",
                     (seconds,))


def wait_db(admin_db: str, sql: str, want: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(admin_db, autocommit=True) as conn:
            if conn.execute(sql).fetchone()[0] == want:
                return
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


# -- measuring ----------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process (every thread), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Window:
    def __init__(self, cpu_s: float, units: int, calls: Counter, by_method: Counter) -> None:
        self.cpu_s, self.units, self.calls, self.by_method = cpu_s, units, calls, by_method

    def units_of(self, *methods: str) -> int:
        return sum(self.by_method.get(m, 0) for m in methods)


def quota(sandbox, users) -> tuple[int, Counter, Counter]:
    units, calls, by_method = 0, Counter(), Counter()
    for _, email, _ in users:
        used = sandbox.gmail.quota(email)
        units += used["units_used"]
        calls.update(used["calls"])
        by_method.update(used["by_method"])
    return units, calls, by_method


def measure(sandbox, users, watcher: ServiceProcess, seconds: float) -> Window:
    """The watcher's CPU seconds and the users' Gmail units and calls over ``seconds``."""
    units0, calls0, methods0 = quota(sandbox, users)
    cpu0 = cpu_seconds(watcher.pid)
    time.sleep(seconds)
    cpu = cpu_seconds(watcher.pid) - cpu0
    units1, calls1, methods1 = quota(sandbox, users)
    return Window(cpu, units1 - units0, calls1 - calls0, methods1 - methods0)


def reply_latencies(sandbox, admin_db: str, users, args) -> tuple[list[float], int]:
    """Deliver replies into random users' watched threads; seconds from each delivery to its detection
    being committed, and how many of them were detected after an acknowledged push for that mailbox."""
    rng = random.Random(args.seed)
    chosen = rng.sample(users, min(args.replies, len(users)))
    injected: dict[str, float] = {}
    found: dict[str, float] = {}
    emails: dict[str, str] = {}
    done = threading.Event()

    def watch_commits() -> None:
        with psycopg.connect(admin_db, autocommit=True) as conn:
            while not done.is_set():
                waiting = [m for m in injected if m not in found]
                if waiting:
                    rows = conn.execute("SELECT message_id FROM watcher.seen_messages WHERE outcome = 'reply' "
                                        "AND message_id = ANY(%s)", (waiting,)).fetchall()
                    now = time.monotonic()
                    for (message_id,) in rows:
                        found.setdefault(message_id, now)
                time.sleep(0.01)

    monitor = threading.Thread(target=watch_commits, daemon=True)
    monitor.start()
    started_wall = time.time()
    for n, (_, email, thread_id) in enumerate(chosen):
        reply = sandbox.gmail.deliver(email, f"Contact <contact-reply{n}@example.org>", thread_id=thread_id,
                                      body="Sure, Tuesday works")
        injected[reply["id"]] = time.monotonic()
        emails[reply["id"]] = email
        time.sleep(args.reply_gap_s)
    deadline = time.monotonic() + 30
    while len(found) < len(injected) and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    monitor.join(5)
    missing = len(injected) - len(found)
    if missing:
        print(f"{missing} replies not detected within 30 s", flush=True)
    acked = {d["data"]["emailAddress"] for d in sandbox.pubsub.deliveries()
             if d["outcome"] == "ack" and d["published_at"] >= started_wall and isinstance(d.get("data"), dict)}
    via_push = sum(1 for m in found if emails[m] in acked)
    return [found.get(m, float("inf")) - t for m, t in injected.items()], via_push


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


if __name__ == "__main__":
    main()
