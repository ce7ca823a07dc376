"""What the mailer benchmarks share (``mailer_sends.py``, ``reply_race.py``): their world (a fresh
database with every schema migrated, the sandbox in this process, a token vault answering over mTLS with
sandbox-issued tokens, somewhere for the mailer's events to go), conversations seeded with COPY (the
first email sent, the follow-up mirrored as a draft in its thread), and mailer processes against it."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import email.policy
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import grpc
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from bootstrap_db import DEFAULT_ADMIN_URL, bootstrap, role_url  # noqa: E402
from kombu import Connection  # noqa: E402
from mailer_harness import MailerProcess, Vault, free_port  # noqa: E402

from coffeeping.common.certs import ensure  # noqa: E402
from coffeeping.common.messaging import declare_topology, delete_topology  # noqa: E402
from coffeeping.vault.v1 import vault_pb2_grpc  # noqa: E402
from coffeeping_sandbox.server import start_sandbox  # noqa: E402

_COPIES = (
    ("mailer.contacts", "id, user_id, email, email_key"),
    ("mailer.sequences", "id, user_id, contact_id, subject, status, to_email, user_email, thread_id, started_at"),
    ("mailer.steps", "id, user_id, sequence_id, position, body, sent_body, delay, status, rfc_message_id, "
                     "draft_id, draft_message_id, gmail_message_id, thread_id, sent_at, due_at"),
    ("mailer.jobs", "step_id, sequence_id, user_id, due_at"),
)


def add_world_arguments(parser: argparse.ArgumentParser, *, workers: int) -> None:
    """The options every mailer benchmark takes: Gmail's latency, the mailers, the servers."""
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=workers)
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")


def raw_message(sender: str, to: str, subject: str, body: str, message_id: str, reply_to: str | None = None) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = sender, to, subject, message_id
    if reply_to:
        msg["In-Reply-To"] = msg["References"] = reply_to
    msg.set_content(body)
    return msg.as_bytes()


@dataclass
class Outreach:
    """Conversations to seed: rows in the column order of ``_COPIES``, written with COPY by ``copy``."""

    contacts: list[Sequence[object]] = field(default_factory=list)
    sequences: list[Sequence[object]] = field(default_factory=list)
    steps: list[Sequence[object]] = field(default_factory=list)
    jobs: list[Sequence[object]] = field(default_factory=list)

    def add(self, sandbox: Any, user_id: str, sender: str, to: str, subject: str, started_at: dt.datetime,
            due: dt.datetime) -> tuple[Any, str, str]:
        """A running sequence from ``sender`` to ``to``: its first email sent at ``started_at`` (in the
        sandbox's Gmail), its follow-up due at ``due`` and mirrored as a draft in the thread. Returns the
        sent message, the sequence id and the follow-up's step id."""
        first_rfc, follow_rfc = f"<cp.{uuid.uuid4().hex}@gmail.com>", f"<cp.{uuid.uuid4().hex}@gmail.com>"
        with sandbox.gmail._lock:
            box = sandbox.gmail._mailbox(sender)
            sent = box.add_message(raw_message(sender, to, subject, "First", first_rfc), ["SENT"], None)
            draft = box.create_draft(raw_message(sender, to, f"Re: {subject}", "Follow-up", follow_rfc, first_rfc),
                                     sent.thread_id)
        contact_id, seq_id, first_id, follow_id = (str(uuid.uuid4()) for _ in range(4))
        self.contacts.append((contact_id, user_id, to, to))
        self.sequences.append((seq_id, user_id, contact_id, subject, "active", to, sender, sent.thread_id,
                               started_at))
        self.steps.append((first_id, user_id, seq_id, 0, "First", "First", None, "sent", first_rfc, None, None,
                           sent.id, sent.thread_id, started_at, None))
        self.steps.append((follow_id, user_id, seq_id, 1, "Follow-up", None, "PT5M", "scheduled", follow_rfc,
                           draft.id, draft.message_id, None, None, None, due))
        self.jobs.append((follow_id, seq_id, user_id, due))
        return sent, seq_id, follow_id

    def copy(self, admin_db: str) -> None:
        """Write the rows with COPY as the superuser."""
        with psycopg.connect(admin_db) as conn:
            for (table, columns), rows in zip(_COPIES, (self.contacts, self.sequences, self.steps, self.jobs),
                                              strict=True):
                with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)


def shift_follow_ups(conn: psycopg.Connection[Any], shift: dt.timedelta) -> None:
    """Move the due time of every follow-up (position 1) and of its job by ``shift``."""
    conn.execute("UPDATE mailer.steps SET due_at = due_at + %s WHERE position = 1", (shift,))
    conn.execute("UPDATE mailer.jobs SET due_at = due_at + %s", (shift,))


@dataclass
class MailerWorld:
    admin_url: str
    amqp_url: str
    var: Path
    certs: Path
    database: str
    prefix: str
    sandbox: Any
    vault: Vault
    vault_port: int

    @property
    def admin_db(self) -> str:
        """The superuser's URL of the benchmark's database."""
        return self.admin_url.rsplit("/", 1)[0] + f"/{self.database}"

    def start_mailers(self, count: int, workers: int, gmail_url: str | None = None,
                      extra_env: dict[str, str] | None = None) -> list[MailerProcess]:
        """``count`` mailer processes, Gmail at ``gmail_url`` (default: the sandbox in this process), with
        ``extra_env`` added to their settings."""
        procs = []
        certs = self.certs
        for i in range(count):
            env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
                   "PYTHONUNBUFFERED": "1",
                   "DATABASE_URL": role_url(self.admin_url, self.database, "cp_mailer", dev=True),
                   "GRPC_PORT": str(free_port()), "TLS_CA_CERT": str(certs / "ca.pem"),
                   "TLS_CERT": str(certs / "mailer.pem"), "TLS_KEY": str(certs / "mailer-key.pem"),
                   "RABBITMQ_URL": self.amqp_url, "MESSAGING_PREFIX": self.prefix,
                   "TOMBSTONE_KEY": "bench-tombstone-key-" + "x" * 32,
                   "TOKEN_VAULT_GRPC_ADDR": f"127.0.0.1:{self.vault_port}",
                   "GMAIL_API_ENDPOINT": gmail_url or self.sandbox.google_url,
                   "MAILER_SCHEDULER_INTERVAL_S": "0.2", "MAILER_SCHEDULER_WORKERS": str(workers),
                   "MAILER_DAILY_CAP": "100000", "LOG_LEVEL": "WARNING", "SHUTDOWN_GRACE_S": "2",
                   **(extra_env or {})}
            procs.append(MailerProcess(env, self.var / f"mailer-{i}.log").start())
        return procs


@contextlib.contextmanager
def mailer_world(admin_url: str, amqp_url: str, name: str) -> Iterator[MailerWorld]:
    """The benchmark's world, logs under a new ``/tmp/cp-bench-<name>-*``; its database, queues and
    exchanges are dropped on the way out."""
    var = Path(tempfile.mkdtemp(prefix=f"cp-bench-{name}-"))
    certs = ensure(var / "certs")
    database = f"cp_bench_{uuid.uuid4().hex[:8]}"
    prefix = f"cpbench{uuid.uuid4().hex[:8]}"
    print(f"database {database}, logs in {var}", flush=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per sandbox request costs CPU here
    sandbox = server = None
    try:
        bootstrap(admin_url, database, dev=True)
        sandbox = start_sandbox()
        sandbox.gmail.set_rate_limit(250.0)  # Gmail's per-user rate, as in production
        vault = Vault(sandbox)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        vault_pb2_grpc.add_TokenVaultServicer_to_server(vault, server)
        creds = grpc.ssl_server_credentials([((certs / "token-vault-key.pem").read_bytes(),
                                              (certs / "token-vault.pem").read_bytes())],
                                            root_certificates=(certs / "ca.pem").read_bytes(),
                                            require_client_auth=True)
        vault_port = server.add_secure_port("127.0.0.1:0", creds)
        server.start()
        with Connection(amqp_url) as conn:  # somewhere for the mailer's sequence events to go
            declare_topology(conn, prefix, "reply-watcher", ["sequence.#"])
        yield MailerWorld(admin_url, amqp_url, var, certs, database, prefix, sandbox, vault, vault_port)
    finally:
        if server is not None:
            server.stop(0)
        if sandbox is not None:
            sandbox.stop()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        delete_topology(amqp_url, prefix)
