"""Reply-watcher benchmark: N connected users with T watched threads each, against the sandbox's Gmail
with injected latency, polled by the real poller through a real PostgreSQL schema.

    .venv/bin/python bench/watcher_poll.py [--users 5000] [--threads 3] [--latency-ms 50]
                                           [--concurrency 32] [--interval 20]

Prints: the time of one full poll cycle over every user (first cycle: our own first emails are looked
at; second: idle), Gmail quota units per user per idle cycle (target 2), and the delay from a reply
injected at a random moment to its ``reply.detected`` being committed, while the poll loop runs on its
interval (target: within one interval plus 2 s). Tokens come from a token-vault double over mTLS.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from bootstrap_db import DEFAULT_ADMIN_URL, bootstrap, role_url  # noqa: E402
from watcher_harness import start_vault_double, tls_for  # noqa: E402

from coffeeping.common.certs import ensure  # noqa: E402
from coffeeping.common.db import make_engine, user_tx  # noqa: E402
from coffeeping.common.gmail import VaultTokenSource  # noqa: E402
from coffeeping.common.logging import configure_logging  # noqa: E402
from coffeeping.common.rpc import channel  # noqa: E402
from coffeeping.events.v1 import events_pb2 as ev  # noqa: E402
from coffeeping.vault.v1 import vault_pb2_grpc  # noqa: E402
from coffeeping_reply_watcher import services  # noqa: E402
from coffeeping_reply_watcher.poller import Poller  # noqa: E402
from coffeeping_sandbox.server import start_sandbox  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--interval", type=float, default=20.0, help="poll interval for the reply-delay run")
    parser.add_argument("--replies", type=int, default=5, help="replies injected for the delay figure")
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    args = parser.parse_args()
    configure_logging("bench", "WARNING")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per sandbox request otherwise

    db_name = f"cp_bench_{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="cp-bench-"))
    certs = ensure(work / "certs")
    print(f"setting up: {args.users} users x {args.threads} threads, database {db_name}", flush=True)
    bootstrap(args.admin_url, db_name, dev=True)
    sandbox = start_sandbox()
    sandbox.gmail.set_rate_limit(None)
    double, vault_server = start_vault_double(sandbox, certs)
    engine = make_engine(role_url(args.admin_url, db_name, "cp_watcher", dev=True), pool_size=args.concurrency + 4)
    tokens = VaultTokenSource(vault_pb2_grpc.TokenVaultStub(
        channel(f"127.0.0.1:{vault_server.port}", tls_for(certs, "reply-watcher"))))
    admin = args.admin_url.rsplit("/", 1)[0] + f"/{db_name}"
    try:
        users = _setup(sandbox, double, engine, args)
        sandbox.control.set_latency(args.latency_ms / 1000.0)
        poller = Poller(engine, tokens, sandbox.google_url, interval_s=3600.0, concurrency=args.concurrency,
                        takeover_grace_s=3600.0)

        for label in ("first cycle (own first emails seen, tokens fetched)", "idle cycle"):
            _all_due(admin)
            before = _units(sandbox, users)
            started = time.perf_counter()
            results = poller.poll_due_once()
            elapsed = time.perf_counter() - started
            units = _units(sandbox, users) - before
            outcomes = {o: sum(1 for r in results if r.outcome == o) for o in {r.outcome for r in results}}
            print(f"{label}: {elapsed:.2f} s for {len(results)} users at concurrency {args.concurrency} "
                  f"({len(results) / elapsed:.0f} users/s), quota {units / len(users):.2f} units/user, "
                  f"outcomes {outcomes}", flush=True)

        delays = _reply_delays(sandbox, engine, tokens, users, admin, args)
        print(f"reply -> reply.detected committed, interval {args.interval:.0f} s, {args.users} users polled: "
              f"median {statistics.median(delays):.2f} s, max {max(delays):.2f} s over {len(delays)} replies "
              f"(target <= {args.interval + 2:.0f} s)", flush=True)
    finally:
        engine.dispose()
        vault_server.stop()
        sandbox.stop()
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def _setup(sandbox, double, engine, args) -> list[tuple[str, str, list[str]]]:
    started = time.perf_counter()

    def one(n: int) -> tuple[str, str, list[str]]:
        user_id, email = f"user_bench{n}", f"bench{n}@example.com"
        double.connect(user_id, email)
        history_id = int(sandbox.gmail.mailbox(email)["historyId"])
        threads = []
        with user_tx(engine, user_id, system=True) as conn:
            for t in range(args.threads):
                contact = f"contact{n}-{t}@example.org"
                sent = sandbox.gmail.user_send(email, to=contact, subject=f"Coffee {t}?", body="Hello")
                services.watch_sequence(conn, user_id, ev.SequenceStarted(
                    sequence_id=f"seq-{n}-{t}", contact_id=f"c-{n}-{t}", contact_email=contact,
                    thread_id=sent["threadId"], message_id=sent["id"], history_id=history_id, user_email=email))
                services.record_sent(conn, user_id, ev.SequenceMessageSent(
                    sequence_id=f"seq-{n}-{t}", thread_id=sent["threadId"], message_id=sent["id"]))
                threads.append(sent["threadId"])
        return user_id, email, threads

    with ThreadPoolExecutor(8) as pool:
        users = list(pool.map(one, range(args.users)))
    print(f"setup done in {time.perf_counter() - started:.1f} s", flush=True)
    return users


def _all_due(admin: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("UPDATE watcher.mailboxes SET due_at = now()")


def _units(sandbox, users) -> int:
    return sum(sandbox.gmail.quota(email)["units_used"] for _, email, _ in users)


def _reply_delays(sandbox, engine, tokens, users, admin, args) -> list[float]:
    with psycopg.connect(admin, autocommit=True) as conn:  # spread the users over one interval
        conn.execute("UPDATE watcher.mailboxes SET due_at = now() + random() * make_interval(secs => %s)",
                     (args.interval,))
    poller = Poller(engine, tokens, sandbox.google_url, interval_s=args.interval, concurrency=args.concurrency,
                    takeover_grace_s=3600.0)
    stop = threading.Event()
    loop = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    loop.start()
    delays = []
    rng = random.Random(7)
    try:
        time.sleep(args.interval)  # reach the steady state
        for n in range(args.replies):
            user_id, email, threads = users[rng.randrange(len(users))]
            time.sleep(rng.uniform(0, args.interval / 2))
            injected = time.monotonic()
            reply = sandbox.gmail.deliver(email, f"Contact <reply{n}@example.org>", thread_id=threads[0])
            while True:
                with psycopg.connect(admin, autocommit=True) as conn:
                    found = conn.execute(
                        "SELECT 1 FROM watcher.outbox WHERE user_id = %s AND body->'payload'->>'message_id' = %s",
                        (user_id, reply["id"])).fetchone()
                if found:
                    delays.append(time.monotonic() - injected)
                    break
                if time.monotonic() - injected > args.interval * 3 + 10:
                    print(f"reply {n} not detected within {args.interval * 3 + 10:.0f} s", flush=True)
                    delays.append(float("inf"))
                    break
                time.sleep(0.05)
    finally:
        stop.set()
        loop.join(60)
    return delays


if __name__ == "__main__":
    main()
