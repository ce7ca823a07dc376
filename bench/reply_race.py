"""Benchmark: the reply race. 1,000 conversations, Gmail with 50 ms latency, each contact's reply landing
at a random offset in [-5 s, +1 s] around its follow-up's due time.

    .venv/bin/python bench/reply_race.py [--conversations 1000] [--spread-s 60] [--latency-ms 50]
                                         [--processes 2] [--workers 16] [--seed 1]

Right before a follow-up's ``drafts.send`` the mailer reads the thread's metadata (``From`` only) and
stops the sequence (``replied``) instead of sending when someone other than the user wrote in it. A
reply that lands between that read and the moment Gmail takes the send is missed: the follow-up goes
out after the reply was already in the mailbox (a "leak"). This measures how often, and how wide the
window is.

Set up as ``bench/mailer_sends.py``: a fresh database (every schema migrated), the sandbox in this
process, a token vault answering over mTLS with sandbox-issued tokens, and the mailers as child
processes. One conversation per user: the first email is already sent (a real thread in the sandbox's
Gmail) and the follow-up is mirrored as a draft in that thread. The follow-ups fall due evenly over
``--spread-s`` seconds, starting ``--lead-s`` seconds after the mailers are up, so the mailer is never
saturated and sends land close to their due times. A thread in this process delivers each contact's
reply into its thread (the sandbox's ``deliver``, in process) at due + U(-5 s, +1 s).

Every time comes from the sandbox's own clock, under its lock, to the microsecond: when the reply
message was added to the mailbox, when ``drafts.send`` added our SENT message, when each
``drafts.send`` request reached Gmail (the request log), and when each ``threads.get`` took its view of
the thread. Printed with their targets:

* replies that landed before the send (caught: stopped ``replied``; missed: leaks) and after it;
* leaks, and leaks whose reply was in the mailbox >= 250 ms before the send (target 0);
* the measured window: the largest reply -> send gap among leaks (ms), and, for every follow-up sent,
  the mailer's check -> send window (its last ``threads.get`` of the thread -> Gmail taking the send);
* sequences stopped ``replied`` (database), duplicates and lost conversations: each must end with
  exactly one follow-up sent, or stopped ``replied`` with none (target 0 and 0);
* lateness (the mailer's first read of the thread minus the due time), to show it was not saturated.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

# The vault double (sandbox-issued tokens over mTLS) and mailer processes the mailer's tests use (mailer_harness).
from mailer_harness import MailerProcess, Vault  # noqa: E402
from outreach_world import MailerWorld, Outreach, add_world_arguments, mailer_world, shift_follow_ups  # noqa: E402

ANCHOR_AHEAD = dt.timedelta(days=1)  # nothing is due while the mailers start


@dataclass
class Conversation:
    user_id: str
    sender: str
    contact: str
    thread_id: str
    first_id: str  # our first email's Gmail id (SENT, already in the thread)
    sequence_id: str
    step_id: str  # the follow-up step
    offset_s: float  # due time, seconds after the base
    reply_offset_s: float  # reply, seconds after the due time
    due: float = 0.0  # epoch seconds, from the database
    reply_planned: float = 0.0
    reply_id: str | None = None
    reply_error: str | None = None


@dataclass
class Reads:
    """Every ``threads.get`` the sandbox served: (time its view was taken, message ids in it) per thread."""

    by_thread: dict[str, list[tuple[float, frozenset[str]]]] = field(default_factory=lambda: defaultdict(list))

    def install(self, gmail: Any) -> bool:
        # The sandbox calls ``_record_read`` with the very messages it answered, right after leaving its
        # lock: the moment the mailer's view of the thread was taken (for the privacy audit; we chain it).
        original = getattr(gmail, "_record_read", None)
        if original is None:
            return False

        def record(info: Any, method: str, target: str, fmt: str, headers: Any, messages: Any, *rest: Any) -> Any:
            if method == "threads.get":
                self.by_thread[target].append((time.time(), frozenset(m.id for m in messages)))
            return original(info, method, target, fmt, headers, messages, *rest)

        gmail._record_read = record
        return True


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms_summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"p50 {statistics.median(values) * 1000:.1f} ms  p95 {_pct(values, 0.95) * 1000:.1f} ms  "
            f"max {max(values) * 1000:.1f} ms")


def _seed(sandbox: Any, vault: Vault, admin_db: str, args: argparse.Namespace, rng: random.Random,
          anchor: dt.datetime) -> list[Conversation]:
    n = args.conversations
    started_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    convs: list[Conversation] = []
    outreach = Outreach()
    # Due times evenly spread over the spread, users in random order; reply offsets drawn per conversation.
    slots = list(range(n))
    rng.shuffle(slots)
    for u in range(n):
        user_id, sender = f"user_race_{u:05d}", f"race{u:05d}@gmail.com"
        to = f"contact{u:05d}@example.com"
        vault.connect(user_id, sender)
        offset_s = args.spread_s * slots[u] / n
        due = anchor + dt.timedelta(microseconds=round(offset_s * 1e6))
        sent, seq_id, follow_id = outreach.add(sandbox, user_id, sender, to, "Coffee?", started_at, due)
        convs.append(Conversation(user_id, sender, to, sent.thread_id, sent.id, seq_id, follow_id, offset_s,
                                  rng.uniform(-args.reply_before_s, args.reply_after_s)))
    outreach.copy(admin_db)
    return convs


def _deliver_replies(sandbox: Any, convs: list[Conversation], stop: threading.Event) -> None:
    """Deliver each contact's reply into its thread at its planned time (the sandbox stamps when it landed)."""
    for conv in sorted(convs, key=lambda c: c.reply_planned):
        while not stop.is_set():
            wait = conv.reply_planned - time.time()
            if wait <= 0:
                break
            stop.wait(min(wait, 0.5))
        if stop.is_set():
            return
        try:
            msg = sandbox.gmail.deliver(conv.sender, f"Contact <{conv.contact}>", thread_id=conv.thread_id,
                                        body="Sure, coffee sounds good!")
            conv.reply_id = msg["id"]
        except Exception as exc:  # noqa: BLE001 - counted and printed, the run goes on
            conv.reply_error = f"{type(exc).__name__}: {exc}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--spread-s", type=float, default=60.0, help="follow-ups fall due evenly over this")
    parser.add_argument("--lead-s", type=float, default=6.0,
                        help="the first follow-up is due this long after the mailers are up (> --reply-before-s)")
    parser.add_argument("--reply-before-s", type=float, default=5.0)
    parser.add_argument("--reply-after-s", type=float, default=1.0)
    parser.add_argument("--threshold-ms", type=float, default=250.0,
                        help="leaks whose reply landed at least this long before the send must be 0")
    add_world_arguments(parser, workers=16)
    parser.add_argument("--seed", type=int, default=1, help="reply offsets and due order")
    parser.add_argument("--settle-s", type=float, default=30.0,
                        help="after the last reply, wait at most this long for every follow-up to settle")
    args = parser.parse_args()
    if args.lead_s <= args.reply_before_s:
        parser.error("--lead-s must exceed --reply-before-s (the earliest reply must come after the start)")

    rng = random.Random(args.seed)
    with mailer_world(args.admin_url, args.amqp_url, "race") as world:
        _race(args, world, rng)


def _race(args: argparse.Namespace, world: MailerWorld, rng: random.Random) -> None:
    sandbox, admin_db = world.sandbox, world.admin_db
    reads = Reads()
    have_reads = reads.install(sandbox.gmail)
    procs: list[MailerProcess] = []
    stop = threading.Event()
    replier: threading.Thread | None = None
    try:
        print(f"setting up {args.conversations} conversations ...", flush=True)
        t0 = time.perf_counter()
        anchor = dt.datetime.now(dt.UTC) + ANCHOR_AHEAD
        convs = _seed(sandbox, world.vault, admin_db, args, rng, anchor)
        print(f"setup took {time.perf_counter() - t0:.1f}s", flush=True)

        sandbox.control.set_latency(args.latency_ms / 1000.0)
        procs += world.start_mailers(args.processes, args.workers)
        time.sleep(1.0)  # past the gRPC port opening, the schedulers are up

        # The follow-ups fall due from base + lead; the due times are read back from the database.
        base = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=args.lead_s)
        with psycopg.connect(admin_db, autocommit=True) as conn:
            with conn.transaction():
                shift_follow_ups(conn, base - anchor)
            dues = dict(conn.execute("SELECT id::text, due_at FROM mailer.steps WHERE position = 1").fetchall())
        for conv in convs:
            conv.due = dues[conv.step_id].timestamp()
            conv.reply_planned = conv.due + conv.reply_offset_s
        replier = threading.Thread(target=_deliver_replies, args=(sandbox, convs, stop), name="replies", daemon=True)
        replier.start()
        last_due = max(c.due for c in convs)
        print(f"follow-ups due from {args.lead_s:.0f}s to {args.lead_s + args.spread_s:.0f}s from now; "
              f"replies at due {-args.reply_before_s:+.1f}s .. {args.reply_after_s:+.1f}s", flush=True)

        with psycopg.connect(admin_db, autocommit=True) as conn:
            last_report = time.monotonic()
            deadline = last_due + args.reply_after_s + args.settle_s
            while True:
                time.sleep(0.5)
                pending = conn.execute("SELECT count(*) FROM mailer.steps WHERE position = 1 "
                                       "AND status IN ('scheduled', 'sending')").fetchone()[0]
                if not replier.is_alive() and pending == 0:
                    break
                if time.time() > deadline:
                    print(f"  gave up waiting: {pending} follow-up(s) still pending", flush=True)
                    break
                if time.monotonic() - last_report > 10:
                    print(f"  {args.conversations - pending}/{args.conversations} follow-ups settled", flush=True)
                    last_report = time.monotonic()
        stop.set()
        replier.join(10)
        for proc in procs:
            proc.stop()
        sandbox.control.set_latency(0.0)

        with psycopg.connect(admin_db, autocommit=True) as conn:
            seqs = {r[0]: (r[1], r[2]) for r in conn.execute(
                "SELECT id::text, status, stop_reason FROM mailer.sequences").fetchall()}
            step_status = dict(conn.execute(
                "SELECT id::text, status FROM mailer.steps WHERE position = 1").fetchall())
        send_requests: dict[str, list[float]] = defaultdict(list)  # user email -> drafts.send arrivals
        for entry in sandbox.control.log("gmail.drafts.send"):
            if entry.get("user"):
                send_requests[entry["user"]].append(entry["t"])
        _report(args, sandbox, convs, seqs, step_status, send_requests, reads if have_reads else None)
    finally:
        stop.set()
        if replier is not None:
            replier.join(10)
        for proc in procs:
            proc.stop()


def _report(args: argparse.Namespace, sandbox: Any, convs: list[Conversation], seqs: dict[str, tuple[str, str]],
            step_status: dict[str, str], send_requests: dict[str, list[float]], reads: Reads | None) -> None:
    threshold = args.threshold_ms / 1000.0
    before_stopped = before_leaked = after = no_reply = duplicates = 0
    gaps: list[float] = []  # reply -> send, per leak (seconds)
    big_leaks = seen_leaks = in_flight_leaks = 0
    check_to_send: list[float] = []  # mailer's last thread read -> Gmail took the send
    send_lateness: list[float] = []
    pickup: list[float] = []  # first thread read - due
    lost: Counter[str] = Counter()
    jitter: list[float] = []
    with sandbox.gmail._lock:
        for conv in convs:
            box = sandbox.gmail._mailbox(conv.sender)
            msgs = [box.messages[m] for m in box.threads.get(conv.thread_id, [])]
            follow_ups = sorted((m for m in msgs if "SENT" in m.label_ids and m.id != conv.first_id),
                                key=lambda m: m.created)
            reply = box.messages.get(conv.reply_id) if conv.reply_id else None
            seq_status, stop_reason = seqs.get(conv.sequence_id, ("?", None))
            duplicates += max(0, len(follow_ups) - 1)
            sent_once = len(follow_ups) == 1 and step_status.get(conv.step_id) == "sent"
            caught = not follow_ups and seq_status == "stopped" and stop_reason == "replied"
            if not (sent_once or caught):
                lost[f"{len(follow_ups)} sent in gmail, step {step_status.get(conv.step_id)}, "
                     f"sequence {seq_status}/{stop_reason}"] += 1
            thread_reads = reads.by_thread.get(conv.thread_id, []) if reads else []
            if thread_reads:
                pickup.append(thread_reads[0][0] - conv.due)
            if reply is None:
                no_reply += 1
                continue
            jitter.append(reply.created - conv.reply_planned)
            if not follow_ups:
                if seq_status == "stopped" and stop_reason == "replied":
                    before_stopped += 1
                continue
            sent = follow_ups[0]
            send_lateness.append(sent.created - conv.due)
            last_read = max(((t, ids) for t, ids in thread_reads if t <= sent.created and sent.id not in ids),
                            key=lambda r: r[0], default=None)
            if last_read is not None:
                check_to_send.append(sent.created - last_read[0])
            if reply.created > sent.created:
                after += 1
                continue
            before_leaked += 1
            gap = sent.created - reply.created
            gaps.append(gap)
            if gap >= threshold:
                big_leaks += 1
            if last_read is not None and reply.id in last_read[1]:
                seen_leaks += 1
            arrivals = [t for t in send_requests.get(conv.sender, []) if t <= sent.created]
            if arrivals and reply.created >= arrivals[-1]:
                in_flight_leaks += 1

    n = len(convs)
    print()
    print(f"conversations:                  {n} (one per user), follow-ups due over {args.spread_s:.0f}s, Gmail "
          f"latency {args.latency_ms:.0f} ms, {args.processes} mailer processes x {args.workers} workers")
    print(f"replies:                        at due {-args.reply_before_s:+.1f}s .. {args.reply_after_s:+.1f}s "
          f"(seed {args.seed}); landed vs planned {_ms_summary(jitter)}"
          + (f"; NOT delivered: {no_reply}" if no_reply else ""))
    print(f"replies landed before the send: {before_stopped + before_leaked}  (caught, stopped `replied`: "
          f"{before_stopped}; missed, follow-up sent anyway: {before_leaked})")
    print(f"replies landed after the send:  {after}  (the follow-up went out first: correct)")
    print(f"leaks (sent after the reply):   {before_leaked}")
    print(f"  reply >= {args.threshold_ms:.0f} ms before the send: {big_leaks}   (target 0)")
    if reads is not None:
        print(f"  reply in the mailer's last thread read: {seen_leaks}   (target 0: it saw the reply and sent)")
    print(f"  reply landed while drafts.send was at Gmail (in its {args.latency_ms:.0f} ms): {in_flight_leaks}")
    if gaps:
        print(f"measured window:                {max(gaps) * 1000:.1f} ms (largest reply -> send gap among leaks; "
              f"median {statistics.median(gaps) * 1000:.1f} ms)   (target < {args.threshold_ms:.0f} ms)")
    else:
        print("measured window:                no leak, nothing measured")
    if reads is not None:
        print(f"check -> send (all {len(check_to_send)} sends): {_ms_summary(check_to_send)}  (the mailer's last "
              "threads.get of the thread -> Gmail took the send)")
    print(f"stopped `replied` (database):   {sum(1 for s, r in seqs.values() if s == 'stopped' and r == 'replied')}")
    print(f"duplicates:                     {duplicates}   (target 0)")
    print(f"lost:                           {sum(lost.values())}   (target 0: each conversation ends with one "
          "follow-up sent or stopped `replied` with none)")
    for state, count in lost.most_common(5):
        print(f"  {count} x {state}")
    if reads is not None:
        print(f"lateness (first thread read - due): {_ms_summary(pickup)}")
    print(f"send lateness (sent - due):     {_ms_summary(send_lateness)}")


if __name__ == "__main__":
    main()
