"""Fixtures for the reply watcher's integration tests: the real watcher code against the sandbox's
Gmail (in process, real HTTP), a real PostgreSQL schema with its migrations and roles, a token-vault
double over mutual TLS, and real RabbitMQ for the consumer tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from google.protobuf.message import Message
from sqlalchemy import Engine

from bench.watcher_harness import VaultDouble, new_id, start_vault_double, tls_for
from coffeeping.common.db import make_engine, user_tx
from coffeeping.common.gmail import VaultTokenSource
from coffeeping.common.messaging import Event, routing_key
from coffeeping.common.rpc import channel
from coffeeping.vault.v1 import vault_pb2_grpc
from coffeeping_reply_watcher.consumers import make_handler
from coffeeping_reply_watcher.poller import Poller
from coffeeping_sandbox.server import Sandbox, start_sandbox


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    sb = start_sandbox()
    try:
        yield sb
    finally:
        sb.stop()


@pytest.fixture(scope="session")
def vault(sandbox: Sandbox, certs) -> Iterator[tuple[VaultDouble, str]]:
    double, server = start_vault_double(sandbox, certs)
    try:
        yield double, f"127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def engine(database) -> Iterator[Engine]:
    eng = make_engine(database.app_url("watcher"), pool_size=8, application_name="watcher-tests")
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture(scope="session")
def tokens(vault, certs) -> VaultTokenSource:
    _, address = vault
    return VaultTokenSource(vault_pb2_grpc.TokenVaultStub(channel(address, tls_for(certs, "reply-watcher"))))


@dataclass
class World:
    """One test's user: a Google account in the sandbox, a vault grant, and ways to act as the mailer."""

    sandbox: Sandbox
    engine: Engine
    vault: VaultDouble
    tokens: VaultTokenSource
    database: object
    user_id: str
    email: str

    def poller(self, **overrides) -> Poller:
        options = {"interval_s": 0.0, "concurrency": 4, "takeover_grace_s": 0.0, "max_backoff_s": 5.0}
        options.update(overrides)
        return Poller(self.engine, self.tokens, self.sandbox.google_url, **options)

    def event(self, message: Message, event_id: str | None = None) -> None:
        """Apply one event exactly as the consumer does (its handler, in a user+system transaction)."""
        event = Event(event_id or new_id("evt"), routing_key(message), self.user_id, message)
        with user_tx(self.engine, self.user_id, system=True) as conn:
            handler = make_handler(b"watcher-test-tombstone-key-0123456789", self.tokens)
            handler(conn, event)

    def poll(self, poller: Poller | None = None) -> list[dict]:
        """Make this user due and poll it once; return the events it published."""
        self.admin("UPDATE watcher.mailboxes SET due_at = now() WHERE user_id = %s", self.user_id)
        result = (poller or self.poller()).poll_user(self.user_id)
        return list(result.events)

    def outbox(self, event_type: str | None = None) -> list[dict]:
        rows = self.admin_rows("SELECT body FROM watcher.outbox WHERE user_id = %s ORDER BY created_at",
                               self.user_id)
        return [r[0] for r in rows if event_type is None or r[0]["type"] == event_type]

    def mailbox(self) -> dict | None:
        rows = self.admin_rows("SELECT history_id, paused, failures, due_at > now() AS deferred "
                               "FROM watcher.mailboxes WHERE user_id = %s", self.user_id)
        if not rows:
            return None
        history_id, paused, failures, deferred = rows[0]
        return {"history_id": None if history_id is None else int(history_id), "paused": paused,
                "failures": failures, "deferred": deferred}

    def admin(self, sql: str, *params: object) -> None:
        with psycopg.connect(self.database.admin_url, autocommit=True) as conn:
            conn.execute(sql, params)

    def admin_rows(self, sql: str, *params: object) -> list[tuple]:
        with psycopg.connect(self.database.admin_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def gmail_requests(self, since: float) -> list[dict]:
        return [e for e in self.sandbox.control.log("gmail.") if e["t"] >= since and e.get("user") == self.email]


@pytest.fixture
def world(sandbox, engine, vault, tokens, database) -> World:
    double, _ = vault
    user_id = new_id("user")
    email = f"{user_id}@example.com"
    double.connect(user_id, email)
    return World(sandbox, engine, double, tokens, database, user_id, email)


@pytest.fixture
def stop_event() -> Iterator[threading.Event]:
    stop = threading.Event()
    yield stop
    stop.set()
