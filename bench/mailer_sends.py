"""Benchmark: 10,000 due follow-ups across 1,000 users, two mailer processes, Gmail with 50 ms latency,
with the Gmail access log recording off and on, side by side.

    .venv/bin/python bench/mailer_sends.py [--users 1000] [--per-user 10] [--latency-ms 50]
                                           [--processes 2] [--workers 32] [--access-log both|on|off] [--rounds 1]

Each measurement sets up a fresh database (every schema migrated), the sandbox seeded in this process with
the first emails already sent and each follow-up mirrored as a draft in its thread, then served from a
process of its own with keep-alive (``gmail_process``); a token vault double answering over mTLS with
sandbox-issued tokens, and the mailers as child processes, with ``GMAIL_ACCESS_LOG`` off or on (the
setting exists for this comparison only). Every follow-up is due at the start. With ``--access-log both``
(the default) each round measures off, then on; ``--rounds`` repeats that and reports the median of each.
Prints, per mode, sends per second, p50/p95/max lateness (sent time minus due time), duplicates (messages
sent more than once in a thread, as the stand-in recorded them), lost steps (not sent by the end), the
CPU per send of the mailers and PostgreSQL (and, apart, of the stand-in), and the access-log rows written;
then on/off for the throughput and the CPU (target: on >= 0.95x off).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from gmail_process import GmailProcess
from outreach_world import MailerWorld, Outreach, add_world_arguments, mailer_world, shift_follow_ups
from proc_cpu import postgres_seconds, process_table, tree_seconds


@dataclass
class Run:
    """One measurement's figures."""

    mode: str
    due: int
    sent: int
    rate: float
    lateness: list[float]
    drained_s: float
    cpu_ms: dict[str, float]  # per send
    duplicates: int
    rate_limited: int
    logged: int  # access-log rows written

    @property
    def lost(self) -> int:
        return self.due - self.sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--per-user", type=int, default=10)
    add_world_arguments(parser, workers=32)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--access-log", choices=("both", "on", "off"), default="both",
                        help="measure with the Gmail access log off, on, or both side by side (default)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    modes = ("off", "on") if args.access_log == "both" else (args.access_log,)
    runs: list[Run] = []
    for round_ in range(args.rounds):
        for mode in modes:
            print(f"\n== round {round_ + 1}, access log {mode} ==", flush=True)
            with mailer_world(args.admin_url, args.amqp_url, "mailer") as world:
                runs.append(_run(args, world, mode))
            _print_run(args, runs[-1])
    if len(modes) == 2:
        _print_comparison(runs)


def _run(args: argparse.Namespace, world: MailerWorld, mode: str) -> Run:
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
        return _measure(args, world, gmail, outreach, expected, due, ahead, mode)
    finally:
        gmail.stop()


def _measure(args: argparse.Namespace, world: MailerWorld, gmail: GmailProcess, outreach: Outreach,
             expected: dict[str, tuple[str, str]], due: dt.datetime, ahead: dt.timedelta, mode: str) -> Run:
    admin_db = world.admin_db
    gmail.set_latency(args.latency_ms)
    total = len(outreach.jobs)
    procs = world.start_mailers(args.processes, args.workers, gmail.url, {"GMAIL_ACCESS_LOG": mode})
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
            proc.stop()  # the access log's last records are written on the way out
    with psycopg.connect(admin_db, autocommit=True) as conn:
        logged = conn.execute("SELECT count(*) FROM mailer.gmail_access").fetchone()[0]

    sent_rows = [r for r in rows if r[1] == "sent"]
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
    return Run(mode=mode, due=total, sent=len(sent_rows), rate=len(sent_rows) / span,
               lateness=sorted((r[2] - r[3]).total_seconds() for r in sent_rows),
               drained_s=(last_sent - min(r[3] for r in rows)).total_seconds(),
               cpu_ms={name: seconds * 1000 / max(len(sent_rows), 1) for name, seconds in cpu_used.items()},
               duplicates=duplicates, rate_limited=sum(gmail.quota(sender)["rate_limited"] for sender in threads_of),
               logged=logged)


def _print_run(args: argparse.Namespace, run: Run) -> None:
    print()
    print(f"access log:            {run.mode}")
    print(f"follow-ups due:        {run.due} across {args.users} users, {args.processes} mailer processes x "
          f"{args.workers} workers, Gmail latency {args.latency_ms:.0f} ms")
    print(f"sent:                  {run.sent}  ->  {run.rate:.1f} sends/s   (target >= 200 sends/s)")
    if run.lateness:
        p95 = run.lateness[min(len(run.lateness) - 1, int(0.95 * len(run.lateness)))]
        print(f"lateness (sent - due): p50 {statistics.median(run.lateness):.2f}s  p95 {p95:.2f}s  "
              f"max {run.lateness[-1]:.2f}s")
    print(f"drained:               the last step {run.drained_s:.1f}s after they all fell due (lateness is mostly "
          "queueing behind that backlog)")
    ours = run.cpu_ms["mailers"] + run.cpu_ms["postgresql"]
    print(f"CPU per send (/proc):  mailers {run.cpu_ms['mailers']:.2f} ms + PostgreSQL {run.cpu_ms['postgresql']:.2f} "
          f"ms = {ours:.2f} ms   (target <= 4 ms; tokens come from the mailers' memory, so the vault adds ~0)")
    print(f"                       Gmail stand-in {run.cpu_ms['gmail stand-in']:.2f} ms in its own process (not ours)")
    print(f"access-log rows:       {run.logged} ({run.logged / max(run.sent, 1):.1f} per send)")
    print(f"duplicates:            {run.duplicates}   (target 0)")
    print(f"lost:                  {run.lost}   (target 0)")
    print(f"gmail 429s absorbed:   {run.rate_limited}")


def _median(runs: list[Run], figure: Any) -> float:
    return statistics.median(figure(r) for r in runs)


def _print_comparison(runs: list[Run]) -> None:
    off = [r for r in runs if r.mode == "off"]
    on = [r for r in runs if r.mode == "on"]

    def cpu(r: Run) -> float:
        return r.cpu_ms["mailers"] + r.cpu_ms["postgresql"]

    rate_off, rate_on = _median(off, lambda r: r.rate), _median(on, lambda r: r.rate)
    cpu_off, cpu_on = _median(off, cpu), _median(on, cpu)
    print()
    print(f"== access log off vs on ({len(off)} round{'s' if len(off) > 1 else ''}, medians) ==")
    print(f"{'':22} {'off':>10} {'on':>10} {'on/off':>8}")
    print(f"{'sends/s':22} {rate_off:10.1f} {rate_on:10.1f} {rate_on / rate_off:7.3f}x   (target >= 0.95x)")
    print(f"{'CPU ms per send':22} {cpu_off:10.2f} {cpu_on:10.2f} {cpu_on / cpu_off:7.3f}x")
    print(f"{'  mailers':22} {_median(off, lambda r: r.cpu_ms['mailers']):10.2f} "
          f"{_median(on, lambda r: r.cpu_ms['mailers']):10.2f}")
    print(f"{'  PostgreSQL':22} {_median(off, lambda r: r.cpu_ms['postgresql']):10.2f} "
          f"{_median(on, lambda r: r.cpu_ms['postgresql']):10.2f}")
    print(f"{'p95 lateness (s)':22} {_median(off, lambda r: r.lateness[int(0.95 * (len(r.lateness) - 1))]):10.2f} "
          f"{_median(on, lambda r: r.lateness[int(0.95 * (len(r.lateness) - 1))]):10.2f}")
    print(f"{'access-log rows':22} {_median(off, lambda r: r.logged):10.0f} {_median(on, lambda r: r.logged):10.0f}")


def _cpu_seconds(procs: list[Any], gmail: GmailProcess, database: str) -> dict[str, float]:
    """CPU seconds so far of the mailer processes, of PostgreSQL (for ``database``) and of the stand-in."""
    table = process_table()
    return {"mailers": tree_seconds(table, [p.proc.pid for p in procs]),
            "postgresql": postgres_seconds(table, database),
            "gmail stand-in": tree_seconds(table, [gmail.pid])}


if __name__ == "__main__":
    main()
