"""Benchmark: 10,000 due follow-ups across 1,000 users, two mailer processes, Gmail with 50 ms latency.

    .venv/bin/python bench/mailer_sends.py [--users 1000] [--per-user 10] [--latency-ms 50]
                                           [--processes 2] [--workers 32]

Sets up a fresh database (every schema migrated), the sandbox in this process with the first emails
already sent and each follow-up mirrored as a draft in its thread, a token vault answering over mTLS
with sandbox-issued tokens, and the mailers as child processes. Every follow-up is due at the start.
Prints sends per second, p50/p95/max lateness (sent time minus due time), duplicates (messages sent
more than once in a thread) and lost steps (not sent by the end).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from bootstrap_db import DEFAULT_ADMIN_URL, bootstrap  # noqa: E402
from kombu import Connection  # noqa: E402

# The test suite's vault (sandbox-issued tokens over mTLS) and mailer process helpers.
from mailer_harness import Vault  # noqa: E402
from outreach_world import copy_outreach, drop_bench_state, raw_message, start_mailers  # noqa: E402

from coffeeping.common.certs import ensure  # noqa: E402
from coffeeping.common.messaging import declare_topology  # noqa: E402
from coffeeping_sandbox.server import start_sandbox  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--per-user", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="cp-bench-mailer-"))
    certs = ensure(var / "certs")
    database = f"cp_bench_{uuid.uuid4().hex[:8]}"
    prefix = f"cpbench{uuid.uuid4().hex[:8]}"
    bootstrap(args.admin_url, database, dev=True)
    admin_db = args.admin_url.rsplit("/", 1)[0] + f"/{database}"
    import logging


    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per sandbox request costs CPU here
    sandbox = start_sandbox()
    sandbox.gmail.set_rate_limit(250.0)  # Gmail's per-user rate, as in production
    vault = Vault(sandbox)
    from concurrent import futures

    import grpc

    from coffeeping.vault.v1 import vault_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    vault_pb2_grpc.add_TokenVaultServicer_to_server(vault, server)
    creds = grpc.ssl_server_credentials([((certs / "token-vault-key.pem").read_bytes(),
                                          (certs / "token-vault.pem").read_bytes())],
                                        root_certificates=(certs / "ca.pem").read_bytes(), require_client_auth=True)
    vault_port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    with Connection(args.amqp_url) as conn:  # somewhere for the mailer's sequence events to go
        declare_topology(conn, prefix, "reply-watcher", ["sequence.#"])

    print(f"setting up {args.users * args.per_user} due follow-ups for {args.users} users ...", flush=True)
    started = time.perf_counter()
    due = dt.datetime.now(dt.UTC)
    contacts, sequences, steps, jobs = [], [], [], []
    expected: dict[str, tuple[str, str]] = {}  # step id -> (user email, thread id)
    for u in range(args.users):
        user_id, sender = f"user_bench_{u:05d}", f"bench{u:05d}@gmail.com"
        vault.connect(user_id, sender)
        with sandbox.gmail._lock:
            box = sandbox.gmail._mailbox(sender)
            for k in range(args.per_user):
                to = f"contact{u:05d}.{k}@example.com"
                first_rfc, follow_rfc = f"<cp.{uuid.uuid4().hex}@gmail.com>", f"<cp.{uuid.uuid4().hex}@gmail.com>"
                sent = box.add_message(raw_message(sender, to, "Hello", "First", first_rfc), ["SENT"], None)
                draft = box.create_draft(raw_message(sender, to, "Re: Hello", "Follow-up", follow_rfc, first_rfc),
                                         sent.thread_id)
                contact_id, seq_id, first_id, follow_id = (str(uuid.uuid4()) for _ in range(4))
                contacts.append((contact_id, user_id, to, to))
                sequences.append((seq_id, user_id, contact_id, "Hello", "active", to, sender, sent.thread_id,
                                  due - dt.timedelta(minutes=5)))
                steps.append((first_id, user_id, seq_id, 0, "First", "First", None, "sent", first_rfc, None, None,
                               sent.id, sent.thread_id, due - dt.timedelta(minutes=5), None))
                # Interleave users in due order so no mailbox gets its sends all at once.
                follow_due = due + dt.timedelta(microseconds=k * args.users + u)
                steps.append((follow_id, user_id, seq_id, 1, "Follow-up", None, "PT5M", "scheduled", follow_rfc,
                               draft.id, draft.message_id, None, None, None, follow_due))
                jobs.append((follow_id, seq_id, user_id, follow_due))
                expected[follow_id] = (sender, sent.thread_id)
    copy_outreach(admin_db, contacts, sequences, steps, jobs)
    print(f"setup took {time.perf_counter() - started:.1f}s", flush=True)

    # Nothing is due while the mailers start (a day ahead); everything falls due at once when they all
    # run, so lateness counts neither the setup nor the processes' start.
    ahead = dt.timedelta(days=1)
    with psycopg.connect(admin_db, autocommit=True) as conn:
        conn.execute("UPDATE mailer.steps SET due_at = due_at + %s WHERE position = 1", (ahead,))
        conn.execute("UPDATE mailer.jobs SET due_at = due_at + %s", (ahead,))
    sandbox.control.set_latency(args.latency_ms / 1000.0)
    total = len(jobs)
    procs = start_mailers(args.processes, admin_url=args.admin_url, database=database, certs=certs,
                          amqp_url=args.amqp_url, prefix=prefix, vault_port=vault_port,
                          gmail_url=sandbox.google_url, workers=args.workers, var=var)
    time.sleep(1.0)  # past the gRPC port opening, the schedulers are up
    with psycopg.connect(admin_db, autocommit=True) as conn:
        shift = dt.datetime.now(dt.UTC) - (due + ahead)
        conn.execute("UPDATE mailer.steps SET due_at = due_at + %s WHERE position = 1", (shift,))
        conn.execute("UPDATE mailer.jobs SET due_at = due_at + %s", (shift,))
    run_started = time.perf_counter()
    try:
        with psycopg.connect(admin_db, autocommit=True) as conn:
            deadline = time.monotonic() + args.timeout
            last_report = 0.0
            while time.monotonic() < deadline:
                sent = conn.execute("SELECT count(*) FROM mailer.steps WHERE position = 1 AND status = 'sent'"
                                    ).fetchone()[0]
                if sent >= total:
                    break
                if time.monotonic() - last_report > 10:
                    print(f"  {sent}/{total} sent after {time.perf_counter() - run_started:.0f}s", flush=True)
                    last_report = time.monotonic()
                time.sleep(0.5)
            rows = conn.execute("SELECT id::text, status, sent_at, due_at FROM mailer.steps WHERE position = 1"
                                ).fetchall()
    finally:
        for proc in procs:
            proc.stop()
        sandbox.control.set_latency(0.0)

    sent_rows = [r for r in rows if r[1] == "sent"]
    lost = total - len(sent_rows)
    lateness = sorted((r[2] - r[3]).total_seconds() for r in sent_rows)
    first_sent = min(r[2] for r in sent_rows)
    last_sent = max(r[2] for r in sent_rows)
    span = max((last_sent - first_sent).total_seconds(), 1e-6)
    duplicates = 0
    with sandbox.gmail._lock:
        for _step_id, (sender, thread_id) in expected.items():
            box = sandbox.gmail._mailbox(sender)
            sent_count = sum(1 for mid in box.threads[thread_id] if "SENT" in box.messages[mid].label_ids)
            duplicates += max(0, sent_count - 2)
    rate_limited = sum(sandbox.gmail.quota(f"bench{u:05d}@gmail.com")["rate_limited"] for u in range(args.users))
    print()
    print(f"follow-ups due:        {total} across {args.users} users, {args.processes} mailer processes x "
          f"{args.workers} workers, Gmail latency {args.latency_ms:.0f} ms")
    print(f"sent:                  {len(sent_rows)} in {span:.1f}s  ->  {len(sent_rows) / span:.1f} sends/s")
    if lateness:
        p95 = lateness[min(len(lateness) - 1, int(0.95 * len(lateness)))]
        print(f"lateness (sent - due): p50 {statistics.median(lateness):.2f}s  p95 {p95:.2f}s  "
              f"max {lateness[-1]:.2f}s")
    print(f"drained:               the last step {(last_sent - min(r[3] for r in rows)).total_seconds():.1f}s after "
          "they all fell due (lateness is mostly queueing behind that backlog)")
    print(f"duplicates:            {duplicates}")
    print(f"lost:                  {lost}")
    print(f"gmail 429s absorbed:   {rate_limited}")
    server.stop(0)
    sandbox.stop()
    drop_bench_state(args.admin_url, database, args.amqp_url, prefix)


if __name__ == "__main__":
    main()
