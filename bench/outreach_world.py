"""What the mailer benchmarks share: raw messages for the Gmail stand-in, seeding outreach rows with
COPY, and starting mailer processes against the benchmark's database, broker, vault and stand-in."""

from __future__ import annotations

import email.policy
import os
import sys
from collections.abc import Iterable, Sequence
from email.message import EmailMessage
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from bootstrap_db import role_url  # noqa: E402
from mailer_harness import MailerProcess, free_port  # noqa: E402

from coffeeping.common.messaging import delete_topology  # noqa: E402

_COPIES = (
    ("mailer.contacts", "id, user_id, email, email_key"),
    ("mailer.sequences", "id, user_id, contact_id, subject, status, to_email, user_email, thread_id, started_at"),
    ("mailer.steps", "id, user_id, sequence_id, position, body, sent_body, delay, status, rfc_message_id, "
                     "draft_id, draft_message_id, gmail_message_id, thread_id, sent_at, due_at"),
    ("mailer.jobs", "step_id, sequence_id, user_id, due_at"),
)


def raw_message(sender: str, to: str, subject: str, body: str, message_id: str, reply_to: str | None = None) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = sender, to, subject, message_id
    if reply_to:
        msg["In-Reply-To"] = msg["References"] = reply_to
    msg.set_content(body)
    return msg.as_bytes()


def copy_outreach(admin_db: str, contacts: Iterable[Sequence[object]], sequences: Iterable[Sequence[object]],
                  steps: Iterable[Sequence[object]], jobs: Iterable[Sequence[object]]) -> None:
    """Rows in the column order of ``_COPIES``, written with COPY as the superuser."""
    with psycopg.connect(admin_db) as conn:
        for (table, columns), rows in zip(_COPIES, (contacts, sequences, steps, jobs), strict=True):
            with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)


def start_mailers(count: int, *, admin_url: str, database: str, certs: Path, amqp_url: str, prefix: str,
                  vault_port: int, gmail_url: str, workers: int, var: Path) -> list[MailerProcess]:
    procs = []
    for i in range(count):
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"), "PYTHONUNBUFFERED": "1",
               "DATABASE_URL": role_url(admin_url, database, "cp_mailer", dev=True), "GRPC_PORT": str(free_port()),
               "TLS_CA_CERT": str(certs / "ca.pem"), "TLS_CERT": str(certs / "mailer.pem"),
               "TLS_KEY": str(certs / "mailer-key.pem"), "RABBITMQ_URL": amqp_url, "MESSAGING_PREFIX": prefix,
               "TOMBSTONE_KEY": "bench-tombstone-key-" + "x" * 32,
               "TOKEN_VAULT_GRPC_ADDR": f"127.0.0.1:{vault_port}", "GMAIL_API_ENDPOINT": gmail_url,
               "MAILER_SCHEDULER_INTERVAL_S": "0.2", "MAILER_SCHEDULER_WORKERS": str(workers),
               "MAILER_DAILY_CAP": "100000", "LOG_LEVEL": "WARNING", "SHUTDOWN_GRACE_S": "2"}
        procs.append(MailerProcess(env, var / f"mailer-{i}.log").start())
    return procs


def drop_bench_state(admin_url: str, database: str, amqp_url: str, prefix: str) -> None:
    """The benchmark's database, queues and exchanges go when it ends."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    delete_topology(amqp_url, prefix)
