"""The token vault as real processes: its own database (bootstrapped and migrated like production),
an in-process sandbox for Google OAuth and Cloud KMS, the dev certificates, and a private messaging
prefix. Tests call it over mTLS as whichever service they need to be."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from bootstrap_broker import DEFAULT_MANAGEMENT_URL, LOGINS, bootstrap_broker, delete_broker, service_url
from bootstrap_db import bootstrap, role_url

from bench.vault_harness import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, VaultDb, VaultHarness
from coffeeping_sandbox.server import Sandbox, start_sandbox


@pytest.fixture(scope="session")
def vault_db(pg_admin_url: str) -> Iterator[VaultDb]:
    name = f"cp_vaulttest_{uuid.uuid4().hex[:10]}"
    # Development role passwords (bootstrap_db: only tests and the local stack may use them).
    bootstrap(pg_admin_url, name, dev=True)
    base = pg_admin_url.rsplit("/", 1)[0]
    try:
        yield VaultDb(name, f"{base}/{name}", role_url(pg_admin_url, name, "cp_vault", dev=True))
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def google() -> Iterator[Sandbox]:
    sb = start_sandbox(clients=[(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])])
    try:
        yield sb
    finally:
        sb.stop()


@pytest.fixture(scope="session")
def vault_prefix(amqp_url: str) -> Iterator[str]:
    """A vhost of its own with the deployment's broker logins (the vhost is named like the prefix)."""
    prefix = f"cpvaulttest{uuid.uuid4().hex[:8]}"
    bootstrap_broker(DEFAULT_MANAGEMENT_URL, prefix, prefix, {login: f"{login}-{prefix}" for login in LOGINS})
    yield prefix
    with contextlib.suppress(Exception):
        delete_broker(DEFAULT_MANAGEMENT_URL, prefix, prefix)


def broker_url(amqp_url: str, prefix: str, login: str) -> str:
    return service_url(amqp_url, prefix, prefix, login, f"{login}-{prefix}")


@pytest.fixture(scope="session")
def harness(vault_db: VaultDb, google: Sandbox, certs: Path, vault_prefix: str, amqp_url: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultHarness]:
    h = VaultHarness(vault_db, google, certs, vault_prefix, broker_url(amqp_url, vault_prefix, "operator"),
                     broker_url(amqp_url, vault_prefix, "token-vault"), tmp_path_factory.mktemp("vault-logs"))
    h.start()
    h.start()
    try:
        yield h
    finally:
        for channel_ in h._channels.values():
            channel_.close()
        for process in h.processes:
            process.stop()


@pytest.fixture
def vault(harness: VaultHarness) -> Iterator[VaultHarness]:
    """The two running vault processes, with no faults armed before or after the test."""
    harness.google.control.clear_faults()
    yield harness
    harness.google.control.clear_faults()
