"""Export and deletion of a large account: export time, exporting processes' peak memory growth, and
the time from ``DELETE /v1/account`` to a completed deletion.

    .venv/bin/python bench/account_export.py [--contacts 2000] [--steps 10000] [--body-bytes 1200]

Starts the whole system the way the tests do (sandbox + five services on free ports, a fresh database
from ``deploy/bootstrap_db.py`` and its own messaging prefix; both removed afterwards). The user connects
Gmail through the consent flow; then the account is seeded **directly through the mailer's own database
role** (``cp_mailer``, under row-level security as the user): ``--contacts`` contacts, one finished
sequence per contact, ``--steps`` email steps spread over them, each with a body as stored and as sent.
The public API would take minutes to create 10,000 steps and would send real (sandbox) mail; the rows
are the mailer's, so the export and the purge read exactly what the API would have written. Sequences
are finished (no Gmail drafts left), so the deletion time is the saga's, not 10,000 Gmail calls.

Memory: before the export each exporting process's peak RSS (``VmHWM``) is reset through
``/proc/<pid>/clear_refs``; the growth is its peak during the export minus its RSS before. The exporting
processes are the gateway (gunicorn master and workers), accounts, mailer, token vault and reply
watcher. Issue #7's targets: export < 3 s and < 100 MB growth; DELETE → completed < 10 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from bootstrap_db import role_url  # noqa: E402
from stack import StackConfig  # noqa: E402
from stack_world import mint_token, running_stack  # noqa: E402


def _connect_gmail(config: StackConfig, http: requests.Session, email: str) -> None:
    requests.post(f"{config.google_url}/_sandbox/consent", json={"email": email}, timeout=10).raise_for_status()
    started = http.post(f"{config.gateway_url}/v1/gmail/connect", timeout=10)
    started.raise_for_status()
    consent = requests.get(started.json()["authorization_url"], allow_redirects=False, timeout=10)
    callback = consent.headers["Location"]
    assert "code" in parse_qs(urlsplit(callback).query), "consent did not return a code"
    done = http.get(callback, cookies={c.name: c.value for c in started.cookies}, allow_redirects=False, timeout=10)
    if "gmail=connected" not in done.headers.get("Location", ""):
        raise SystemExit(f"Gmail connection failed: {done.status_code} {done.headers.get('Location')}")


def _seed(config: StackConfig, user_id: str, contacts: int, steps: int, body_bytes: int) -> None:
    url = role_url(config.admin_url, config.database, "cp_mailer", dev=True).replace("postgresql+psycopg", "postgresql")
    body = ("Hello {first}, " + "lorem ipsum dolor sit amet " * (body_bytes // 27 + 1))[:body_bytes]
    per_sequence = max(1, steps // contacts)
    extra = steps - per_sequence * contacts
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT set_config('app.user_id', %s, true)", (user_id,))
        contact_rows, sequence_rows, step_rows = [], [], []
        for n in range(contacts):
            contact_id, sequence_id, thread = uuid.uuid4(), uuid.uuid4(), f"thr{n:08x}"
            email = f"contact{n}@bench.example.com"
            contact_rows.append((contact_id, user_id, email, email, f"Contact {n}", f"First{n}", "Bench Ltd"))
            sequence_rows.append((sequence_id, user_id, contact_id, f"Coffee, First{n}?", email, thread))
            count = per_sequence + (1 if n < extra else 0)
            for position in range(count):
                text = body.format(first=f"First{n}")
                step_rows.append((uuid.uuid4(), user_id, sequence_id, position, text, text,
                                  f"msg{n:06x}{position:02x}", thread, f"<{uuid.uuid4()}@mail.gmail.com>"))
        # COPY is refused under row-level security; a pipelined executemany is close enough.
        cur.executemany("INSERT INTO mailer.contacts (id, user_id, email, email_key, name, first_name, company) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s)", contact_rows)
        cur.executemany("INSERT INTO mailer.sequences (id, user_id, contact_id, subject, to_email, thread_id) "
                        "VALUES (%s, %s, %s, %s, %s, %s)", sequence_rows)
        cur.execute("UPDATE mailer.sequences SET status = 'stopped', stop_reason = 'replied', "
                    "stopped_at = now(), started_at = now() - interval '3 days'")
        cur.executemany("INSERT INTO mailer.steps (id, user_id, sequence_id, position, body, sent_body, "
                        "gmail_message_id, thread_id, rfc_message_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        step_rows)
        cur.execute("UPDATE mailer.steps SET status = 'sent', sent_at = now() - interval '1 day'")
    print(f"seeded {len(contact_rows)} contacts, {len(sequence_rows)} sequences, {len(step_rows)} steps "
          f"({body_bytes} B bodies, stored and sent) through the cp_mailer role", flush=True)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (gunicorn workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--body-bytes", type=int, default=1200)
    parser.add_argument("--log-level", default="WARNING", help="the services' LOG_LEVEL")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    user_id = f"user_bench_{tag}"
    with running_stack(args.log_level) as stack:
        config = stack.config
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {mint_token(config, user_id)}"
        if http.get(f"{config.gateway_url}/v1/me", timeout=10).status_code != 200:
            raise SystemExit("GET /v1/me failed")
        _connect_gmail(config, http, f"bench.{tag}@gmail.com")
        _seed(config, user_id, args.contacts, args.steps, args.body_bytes)

        pids = {name: _tree(proc.pid) for name, proc in stack.procs.items()}
        before = {}
        for group in pids.values():
            for pid in group:
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                before[pid] = _status_kb(pid, "VmRSS")
        http.headers["Authorization"] = f"Bearer {mint_token(config, user_id)}"
        started = time.perf_counter()
        reply = http.get(f"{config.gateway_url}/v1/export", stream=True, timeout=120)
        if reply.status_code != 200:
            raise SystemExit(f"export answered {reply.status_code}: {reply.text[:300]}")
        size = 0
        first_byte = None
        tail = b""
        for chunk in reply.iter_content(chunk_size=65536):
            if first_byte is None:
                first_byte = time.perf_counter() - started
            size += len(chunk)
            tail = (tail + chunk)[-64:]
        export_s = time.perf_counter() - started
        complete = b'"complete": true' in tail
        growth = {name: max(_status_kb(pid, "VmHWM") - before[pid] for pid in group) / 1024
                  for name, group in pids.items()}
        peaks = {name: sum(_status_kb(pid, "VmHWM") for pid in group) / 1024 for name, group in pids.items()}

        http.headers["Authorization"] = f"Bearer {mint_token(config, user_id)}"
        started = time.perf_counter()
        accepted = http.delete(f"{config.gateway_url}/v1/account", json={"confirm": "delete my account"}, timeout=30)
        if accepted.status_code != 202:
            raise SystemExit(f"DELETE answered {accepted.status_code}: {accepted.text[:300]}")
        accepted_s = time.perf_counter() - started
        state = accepted.json()["state"]
        status: dict = {}
        while state != "completed" and time.perf_counter() - started < 300:
            time.sleep(0.05)
            status = http.get(f"{config.gateway_url}/v1/account/deletion", timeout=10).json()
            state = status.get("state", "")
        delete_s = time.perf_counter() - started

    print()
    print(f"export: {size / 1e6:.1f} MB in {export_s:.2f} s (first byte after {first_byte or 0:.2f} s), "
          f"document complete: {complete}   (target < 3 s)")
    print("peak memory growth during the export, per process (MB; the largest in each process group):")
    for name in pids:
        print(f"  {name:<14} +{growth[name]:7.1f}   (peak RSS of the group {peaks[name]:.0f} MB)")
    worst = max(growth.values())
    print(f"largest growth: +{worst:.1f} MB   (target < 100 MB)")
    print(f"DELETE /v1/account: 202 after {accepted_s * 1000:.0f} ms; completed after {delete_s:.2f} s "
          f"(state {state!r})   (target < 10 s)")
    if status:
        print("  steps: " + json.dumps([(s["service"], s["state"], s["attempts"]) for s in status["steps"]]))
    return 0 if state == "completed" and complete else 1


if __name__ == "__main__":
    sys.exit(main())
