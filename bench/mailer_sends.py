"""Benchmark: 10,000 due follow-ups across 1,000 users, two mailer processes, Gmail with 50 ms latency.

    .venv/bin/python bench/mailer_sends.py [--users 1000] [--per-user 10] [--latency-ms 50]
                                           [--processes 2] [--workers 32]

Sets up a fresh database (every schema migrated), the sandbox seeded in this process with the first
emails already sent and each follow-up mirrored as a draft in its thread, then served from a process of
its own with keep-alive (``gmail_process``); a token vault double answering over mTLS with
sandbox-issued tokens, and the mailers as child processes. Every follow-up is due at the start.
Prints sends per second, p50/p95/max lateness (sent time minus due time), duplicates (messages sent
more than once in a thread, as the stand-in recorded them), lost steps (not sent by the end) and the
CPU per send of the mailers and PostgreSQL (and, apart, of the stand-in), each beside its target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from typing import Any

import psycopg
from gmail_process import GmailProcess
from outreach_world import MailerWorld, Outreach, add_world_arguments, mailer_world, shift_follow_ups
from proc_cpu import postgres_seconds, process_table, tree_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--per-user", type=int, default=10)
    add_world_arguments(parser, workers=32)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    with mailer_world(args.admin_url, args.amqp_url, "mailer") as world:
        _run(args, world)


def _run(args: argparse.Namespace, world: MailerWorld) -> None:
    sandbox, admin_db = world.sandbox, world.admin_db
    print(f"setting up {args.users * args.per_user} due follow-ups for {args.users} users ...", flush=True)
    started = time.perf_counter()
    due = dt.datetime.now(dt.UTC)
    outreach = Outreach()
    expected: dict[str, tuple[str, str]] = {}  # step id -> (user email, thread id)
    for u in range(args.users):
        user_id, sender = f"user_bench_{u:05d}", f"bench{u:05d}@gmail.com"
        world.vault.connect(user_id, sender)
        for k in range(args.per_user):
            # Interleave users in due order so no mailbox gets its sends all at once.
            follow_due = due + dt.timedelta(microseconds=k * args.users + u)
            sent, _seq_id, follow_id = outreach.add(sandbox, user_id, sender, f"contact{u:05d}.{k}@example.com",
                                                    "Hello", due - dt.timedelta(minutes=5), follow_due)
            expected[follow_id] = (sender, sent.thread_id)
    outreach.copy(admin_db)
    print(f"setup took {time.perf_counter() - started:.1f}s", flush=True)

    # Nothing is due while the mailers start (a day ahead); everything falls due at once when they all
    # run, so lateness counts neither the setup nor the processes' start.
    ahead = dt.timedelta(days=1)
    with psycopg.connect(admin_db, autocommit=True) as conn:
        shift_follow_ups(conn, ahead)
    world.vault.prime(["gmail.compose"])  # the mailer's two token kinds: the whole grant, compose only
    gmail = GmailProcess(sandbox).start()
    try:
        _measure(args, world, gmail, outreach, expected, due, ahead)
    finally:
        gmail.stop()


def _measure(args: argparse.Namespace, world: MailerWorld, gmail: GmailProcess, outreach: Outreach,
             expected: dict[str, tuple[str, str]], due: dt.datetime, ahead: dt.timedelta) -> None:
    admin_db = world.admin_db
    gmail.set_latency(args.latency_ms)
    total = len(outreach.jobs)
    procs = world.start_mailers(args.processes, args.workers, gmail.url)
    time.sleep(1.0)  # past the gRPC port opening, the schedulers are up
    with psycopg.connect(admin_db, autocommit=True) as conn:
        shift_follow_ups(conn, dt.datetime.now(dt.UTC) - (due + ahead))
    run_started = time.perf_counter()
    cpu_before = _cpu_seconds(procs, gmail, world.database)
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
            cpu_after = _cpu_seconds(procs, gmail, world.database)
            cpu_used = {name: cpu_after[name] - cpu_before[name] for name in cpu_before}
            rows = conn.execute("SELECT id::text, status, sent_at, due_at FROM mailer.steps WHERE position = 1"
                                ).fetchall()
    finally:
        for proc in procs:
            proc.stop()

    sent_rows = [r for r in rows if r[1] == "sent"]
    lost = total - len(sent_rows)
    lateness = sorted((r[2] - r[3]).total_seconds() for r in sent_rows)
    first_sent = min(r[2] for r in sent_rows)
    last_sent = max(r[2] for r in sent_rows)
    span = max((last_sent - first_sent).total_seconds(), 1e-6)
    duplicates = 0
    threads_of: dict[str, set[str]] = {}
    for sender, thread_id in expected.values():
        threads_of.setdefault(sender, set()).add(thread_id)
    for sender, wanted in threads_of.items():  # the stand-in's own record of what went out
        for thread in gmail.mailbox(sender)["threads"]:
            if thread["id"] in wanted:
                sent_count = sum(1 for m in thread["messages"] if "SENT" in m["labelIds"])
                duplicates += max(0, sent_count - 2)
    rate_limited = sum(gmail.quota(sender)["rate_limited"] for sender in threads_of)
    print()
    print(f"follow-ups due:        {total} across {args.users} users, {args.processes} mailer processes x "
          f"{args.workers} workers, Gmail latency {args.latency_ms:.0f} ms")
    print(f"sent:                  {len(sent_rows)} in {span:.1f}s  ->  {len(sent_rows) / span:.1f} sends/s   "
          "(target >= 200 sends/s)")
    if lateness:
        p95 = lateness[min(len(lateness) - 1, int(0.95 * len(lateness)))]
        print(f"lateness (sent - due): p50 {statistics.median(lateness):.2f}s  p95 {p95:.2f}s  "
              f"max {lateness[-1]:.2f}s")
    print(f"drained:               the last step {(last_sent - min(r[3] for r in rows)).total_seconds():.1f}s after "
          "they all fell due (lateness is mostly queueing behind that backlog)")
    per_send = {name: seconds * 1000 / max(len(sent_rows), 1) for name, seconds in cpu_used.items()}
    ours = per_send["mailers"] + per_send["postgresql"]
    print(f"CPU per send (/proc):  mailers {per_send['mailers']:.2f} ms + PostgreSQL {per_send['postgresql']:.2f} ms "
          f"= {ours:.2f} ms   (target <= 4 ms; tokens come from the mailers' memory, so the vault adds ~0)")
    print(f"                       Gmail stand-in {per_send['gmail stand-in']:.2f} ms in its own process (not ours)")
    print(f"duplicates:            {duplicates}   (target 0)")
    print(f"lost:                  {lost}   (target 0)")
    print(f"gmail 429s absorbed:   {rate_limited}")


def _cpu_seconds(procs: list[Any], gmail: GmailProcess, database: str) -> dict[str, float]:
    """CPU seconds so far of the mailer processes, of PostgreSQL (for ``database``) and of the stand-in."""
    table = process_table()
    return {"mailers": tree_seconds(table, [p.proc.pid for p in procs]),
            "postgresql": postgres_seconds(table, database),
            "gmail stand-in": tree_seconds(table, [gmail.pid])}


if __name__ == "__main__":
    main()
