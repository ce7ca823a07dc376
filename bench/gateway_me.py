"""Gateway benchmark: authenticated ``GET /v1/me`` against a route that does no I/O, same gunicorn.

    .venv/bin/python bench/gateway_me.py [--connections 32] [--duration 10] [--warmup 3] [--processes 2]

Starts the whole system the way the tests do (sandbox + five services on free ports, a fresh database
from ``deploy/bootstrap_db.py`` and its own messaging prefix; both removed afterwards), mints Clerk
session tokens from the stand-in, then holds ``--connections`` keep-alive HTTP/1.1 connections open
(threads spread over ``--processes`` client processes, so the client's GIL is not the limit) and
measures requests/s, p50 and p99 for:

* ``GET /v1/me``: JWT verification, gRPC hop(s) over mTLS, a PostgreSQL query under RLS;
* ``GET /v1/sequences?limit=5``: the same, plus the mailer's typed ``ListSequences`` (five sequences of
  three steps each, read under RLS) and their conversion to the public documents;
* ``GET /.well-known/security.txt``: public, no I/O at all (the gateway's floor).

The client runs on the same machine and competes with the services for the CPUs: the figures are a
lower bound for the server. Then /v1/me again at half the saturated rate (an open-loop schedule; its p99)
and on one connection (its p50). Targets: /v1/me at >= 0.3x the bare route, <= 2 ms CPU per request in
all, p99 < 50 ms at half the saturated rate, p50 <= 3 ms on one connection.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
import random
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from stack import StackConfig  # noqa: E402
from stack_world import cpu_seconds, mint_token, running_stack  # noqa: E402

ROUTES = {
    "GET /v1/me (auth, gRPC, RLS)": ("/v1/me", True),
    "GET /v1/sequences?limit=5 (mailer)": ("/v1/sequences?limit=5", True),
    "GET /.well-known/security.txt (no I/O)": ("/.well-known/security.txt", False),
}


def _drive(host: str, port: int, path: str, tokens: list[str], start_at: float, stop_at: float,
           out: mp.Queue, interval: float = 0.0) -> None:
    """One client process: a thread per connection, each sending requests back to back, or on a fixed
    schedule (one every ``interval`` seconds, latency counted from the scheduled time, so that a slow
    answer delays and charges the requests behind it)."""
    results: list[tuple[list[float], int]] = []
    lock = threading.Lock()

    def connection(token: str | None) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        latencies: list[float] = []
        errors = 0
        while time.time() < start_at:
            time.sleep(0.001)
        offset = random.random() * interval  # connections spread over the interval
        scheduled = time.perf_counter() + offset
        while time.time() < stop_at:
            if interval:
                time.sleep(max(0.0, scheduled - time.perf_counter()))
                began, scheduled = scheduled, scheduled + interval
            else:
                began = time.perf_counter()
            try:
                conn.request("GET", path, headers=headers)
                reply = conn.getresponse()
                reply.read()
                ok = reply.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
            elapsed = time.perf_counter() - began
            if ok:
                latencies.append(elapsed)
            else:
                errors += 1
        conn.close()
        with lock:
            results.append((latencies, errors))

    threads = [threading.Thread(target=connection, args=(token,)) for token in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies = [value for lat, _ in results for value in lat]
    out.put((latencies, sum(err for _, err in results)))


def measure(base_url: str, path: str, tokens: list[str | None], processes: int, duration: float,
            warmup: float, cpu: Any = None, rate: float = 0.0) -> dict[str, Any]:
    """Warm up, then measure for ``duration`` seconds with ``len(tokens)`` connections, back to back or at
    ``rate`` requests/s in all; ``cpu()`` gives each server process's CPU seconds so far (read before
    and after the measured phase)."""
    interval = len(tokens) / rate if rate else 0.0
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    ctx = mp.get_context("fork")
    for phase, seconds in (("warmup", warmup), ("measure", duration)):
        out: mp.Queue = ctx.Queue()
        start_at = time.time() + 0.5
        stop_at = start_at + seconds
        shares = [tokens[i::processes] for i in range(processes)]
        procs = [ctx.Process(target=_drive, args=(host, port, path, share, start_at, stop_at, out, interval))
                 for share in shares if share]
        cpu_before = cpu() if cpu else {}
        for proc in procs:
            proc.start()
        collected = [out.get() for _ in procs]
        cpu_after = cpu() if cpu else {}
        for proc in procs:
            proc.join()
        if phase == "measure":
            latencies = sorted(value for lat, _ in collected for value in lat)
            errors = sum(err for _, err in collected)
    count = len(latencies)
    per_request = {name: (cpu_after[name] - cpu_before[name]) * 1000 / max(count, 1) for name in cpu_after}
    return {
        "cpu_ms": per_request,
        "requests": count,
        "errors": errors,
        "rps": count / duration,
        "p50": _percentile(latencies, 50) * 1000,
        "p99": _percentile(latencies, 99) * 1000,
    }


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def _outreach(config: StackConfig, token: str | None) -> None:
    """A contact and five sequences (a first email and two follow-ups each) for the token's user."""
    headers = {"Authorization": f"Bearer {token}"}
    contact = requests.post(f"{config.gateway_url}/v1/contacts", headers=headers, timeout=10,
                            json={"email": f"c.{uuid.uuid4().hex[:10]}@example.com", "first_name": "Ada"})
    if contact.status_code != 201:
        raise SystemExit(f"POST /v1/contacts answered {contact.status_code}: {contact.text[:200]}")
    for i in range(5):
        created = requests.post(f"{config.gateway_url}/v1/sequences", headers=headers, timeout=10, json={
            "contact_id": contact.json()["id"], "subject": f"Coffee {i}, {{{{first_name}}}}?",
            "body": "Hi {{first_name}}, " + "x" * 600,
            "follow_ups": [{"body": "Bumping this.", "delay": "P3D"}, {"body": "Last one.", "delay": "P7D"}]})
        if created.status_code != 201:
            raise SystemExit(f"POST /v1/sequences answered {created.status_code}: {created.text[:200]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per route")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load per route first")
    parser.add_argument("--processes", type=int, default=2, help="client processes sharing the connections")
    parser.add_argument("--log-level", default="INFO", help="the services' LOG_LEVEL")
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs (path printed)")
    parser.add_argument("--workers", type=int, default=None, help="GATEWAY_WORKERS (default: the gateway's own)")
    parser.add_argument("--threads", type=int, default=None, help="GATEWAY_THREADS (default: the gateway's own)")
    parser.add_argument("--metrics", choices=("on", "off"), default="on",
                        help="off: no process serves Prometheus metrics (METRICS_PORT=0), to measure their cost")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    gunicorn_env = {name: str(value) for name, value in
                    (("GATEWAY_WORKERS", args.workers), ("GATEWAY_THREADS", args.threads)) if value}
    if args.metrics == "off":
        gunicorn_env["METRICS_PORT"] = "0"
    with running_stack(args.log_level, gunicorn_env, keep_logs=args.keep_logs) as stack:
        config = stack.config
        lifetime = int(2 * (args.warmup + args.duration) + 120)
        # One user per connection, each created on a first call outside the measurement.
        users = [f"user_bench_{tag}_{i}" for i in range(args.connections)]
        tokens: list[str | None] = [mint_token(config, user, lifetime) for user in users]
        for token in tokens:
            first = requests.get(f"{config.gateway_url}/v1/me", headers={"Authorization": f"Bearer {token}"},
                                 timeout=10)
            if first.status_code != 200:
                raise SystemExit(f"GET /v1/me answered {first.status_code}: {first.text[:200]}")
            _outreach(config, token)
        figures = {}
        for label, (path, authenticated) in ROUTES.items():
            print(f"measuring {label}: {args.connections} connections, {args.warmup:.0f}s warm-up + "
                  f"{args.duration:.0f}s ...", flush=True)
            route_tokens = tokens if authenticated else [None] * args.connections
            figures[label] = measure(config.gateway_url, path, route_tokens, args.processes, args.duration,
                                     args.warmup, cpu=lambda: cpu_seconds(stack))

        me_path = ROUTES[list(ROUTES)[0]][0]
        saturated = figures[list(ROUTES)[0]]["rps"]
        print(f"measuring /v1/me at half the saturated rate ({saturated / 2:.0f} req/s) and on one connection ...",
              flush=True)
        half = measure(config.gateway_url, me_path, tokens, args.processes, args.duration, args.warmup,
                       rate=saturated / 2)
        single = measure(config.gateway_url, me_path, tokens[:1], 1, args.duration, args.warmup)

    me, bare = figures[list(ROUTES)[0]], figures[list(ROUTES)[-1]]
    gunicorn = (f"gunicorn gthread, GATEWAY_WORKERS={args.workers or 'default'}, "
                f"GATEWAY_THREADS={args.threads or 'default'}")
    print()
    print(f"{'route':<42} {'requests':>9} {'errors':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for label, fig in figures.items():
        print(f"{label:<42} {fig['requests']:>9} {fig['errors']:>7} {fig['rps']:>9.1f} {fig['p50']:>8.2f} "
              f"{fig['p99']:>8.2f}")
    print()
    names = list(next(iter(figures.values()))["cpu_ms"])
    print(f"CPU ms per request (from /proc): {'route':<36} " + " ".join(f"{n:>13}" for n in names) + "        total")
    for label, fig in figures.items():
        cpu = fig["cpu_ms"]
        print(f"{'':<32} {label:<36} " + " ".join(f"{cpu[n]:>13.2f}" for n in names) + f" {sum(cpu.values()):>12.2f}")
    ratio = me["rps"] / bare["rps"] if bare["rps"] else float("nan")
    print()
    print(f"ratio /v1/me : bare route (req/s) = {ratio:.2f}x   (target >= 0.30x)")
    print(f"CPU per /v1/me, every process = {sum(me['cpu_ms'].values()):.2f} ms   (target <= 2 ms)")
    print(f"p99 of /v1/me at half the saturated rate ({half['rps']:.0f} req/s, {half['errors']} errors) = "
          f"{half['p99']:.1f} ms   (target < 50 ms; saturated: p99 {me['p99']:.1f} ms)")
    print(f"p50 of /v1/me on one connection = {single['p50']:.2f} ms   (target <= 3 ms)")
    print(f"setup: {args.connections} keep-alive connections from {args.processes} client processes; "
          f"{gunicorn}; {os.cpu_count()} CPUs, LOG_LEVEL={args.log_level}")
    print("note: the load generator runs on the same machine and competes with the gateway, the services and "
          "PostgreSQL for the CPUs, so these figures are a lower bound for the server.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
