"""Fixtures that start what the tests need: a real PostgreSQL, a real RabbitMQ, the dev certificates,
and (for end-to-end tests) the whole system as child processes against the sandbox.

The local servers are used when they answer; otherwise testcontainers starts them where a Docker
engine exists. Each test session gets its own database and messaging prefix, so several sessions
(and a developer's own running stack) never see each other's data.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import requests
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from bootstrap_broker import bootstrap_broker, delete_broker  # noqa: E402
from bootstrap_db import DEFAULT_ADMIN_URL, SCHEMAS, bootstrap, role_url  # noqa: E402
from stack import Stack, StackConfig  # noqa: E402

from tests.otlp_receiver import OtlpReceiver  # noqa: E402


def _answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    if _answers("127.0.0.1", 5432):
        yield DEFAULT_ADMIN_URL
        return
    try:
        from testcontainers.postgres import PostgresContainer  # deprecated name still works in 4.x

        container = PostgresContainer("postgres:15", username="postgres", password="postgres", dbname="postgres")
        container.start()
    except Exception as exc:  # DockerException when no engine answers
        pytest.fail(f"no PostgreSQL on 127.0.0.1:5432 and no Docker engine for testcontainers ({exc})")
    try:
        yield container.get_connection_url(driver=None)
    finally:
        container.stop()


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    if _answers("127.0.0.1", 5672):
        yield "amqp://guest:guest@127.0.0.1:5672//"
        return
    try:
        from testcontainers.rabbitmq import RabbitMqContainer

        container = RabbitMqContainer("rabbitmq:3.13")
        container.start()
    except Exception as exc:
        pytest.fail(f"no RabbitMQ on 127.0.0.1:5672 and no Docker engine for testcontainers ({exc})")
    try:
        params = container.get_connection_params()
        yield f"amqp://guest:guest@{params.host}:{params.port}//"
    finally:
        container.stop()


@dataclass(frozen=True)
class Database:
    name: str
    admin_url: str  # superuser, connected to the test database (for inspection only)
    server_admin_url: str

    def app_url(self, schema: str) -> str:
        return role_url(self.server_admin_url, self.name, f"cp_{schema}", dev=True)

    def owner_url(self, schema: str) -> str:
        return role_url(self.server_admin_url, self.name, f"cp_{schema}_owner", dev=True)


def _drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def fresh_database(pg_admin_url: str) -> Iterator[Database]:
    """A new database with every service's schema, roles and migrations, dropped afterwards."""
    name = f"cp_test_{uuid.uuid4().hex[:10]}"
    bootstrap(pg_admin_url, name, dev=True)
    base = pg_admin_url.rsplit("/", 1)[0]
    try:
        yield Database(name, f"{base}/{name}", pg_admin_url)
    finally:
        _drop_database(pg_admin_url, name)


@pytest.fixture(scope="session")
def database(pg_admin_url: str) -> Iterator[Database]:
    """A fresh database with every service's schema, roles and migrations."""
    with fresh_database(pg_admin_url) as db:
        yield db


@pytest.fixture(scope="session")
def isolated_database(pg_admin_url: str) -> Iterator[Database]:
    """A second database, for tests that run relays or consumers in process: the shared
    ``database`` is also served by the ``stack``'s services, whose relays would take their outbox rows."""
    with fresh_database(pg_admin_url) as db:
        yield db


def _delete_messaging(amqp_url: str, prefix: str) -> None:
    """Leave nothing behind on the shared broker."""
    from coffeeping.common.messaging import delete_topology

    with contextlib.suppress(Exception):
        delete_topology(amqp_url, prefix)


@pytest.fixture(scope="session")
def messaging_prefix(amqp_url: str) -> Iterator[str]:
    prefix = f"cptest{uuid.uuid4().hex[:8]}"
    yield prefix
    _delete_messaging(amqp_url, prefix)


@pytest.fixture(scope="session")
def var_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("var")


@pytest.fixture(scope="session")
def certs(var_dir: Path) -> Path:
    from coffeeping.common.certs import ensure

    return ensure(var_dir / "certs")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "last: run after every other test (it inspects what they left)")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


@dataclass
class RunningStack:
    stack: Stack
    config: StackConfig
    database: Database
    minted: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.config.gateway_url

    @property
    def google(self) -> str:
        return self.config.google_url

    def token(self, user_id: str, **claims: object) -> str:
        reply = requests.post(f"{self.config.clerk_url}/_sandbox/tokens", json={"user_id": user_id, **claims},
                              timeout=10)
        reply.raise_for_status()
        token = str(reply.json()["token"])
        self.minted.append(token)
        return token

    def session(self, user_id: str) -> requests.Session:
        """An HTTP session that signs each request with a fresh token for ``user_id``."""
        stack = self

        class _Signed(requests.Session):
            def request(self, method, url, *args, **kwargs):  # type: ignore[no-untyped-def, override]
                headers = kwargs.pop("headers", None) or {}
                headers.setdefault("Authorization", f"Bearer {stack.token(user_id)}")
                if url.startswith("/"):
                    url = stack.url + url
                return super().request(method, url, *args, headers=headers, timeout=kwargs.pop("timeout", 30),
                                       **kwargs)

        return _Signed()

    def reset_sandbox(self) -> None:
        requests.post(f"{self.google}/_sandbox/reset", timeout=10).raise_for_status()


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    """Where the shared stack's services export their traces (OTLP over HTTP), kept in memory."""
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def stack(pg_admin_url: str, amqp_url: str, var_dir: Path, certs: Path, otlp: OtlpReceiver) -> Iterator[RunningStack]:
    """The five services and the sandbox, as a user runs them, on free ports, with tracing on (exported
    to ``otlp``).

    The stack has a database and a messaging prefix of its own: tests that run services or relays in
    process (with ``database`` and ``messaging_prefix``) never race the stack's workers for rows or
    messages.
    """
    name = f"cp_stack_{uuid.uuid4().hex[:10]}"
    bootstrap(pg_admin_url, name, dev=True)
    base = pg_admin_url.rsplit("/", 1)[0]
    database = Database(name, f"{base}/{name}", pg_admin_url)
    prefix = f"cpstack{uuid.uuid4().hex[:8]}"
    config = StackConfig.ephemeral(var_dir, name, prefix)
    config.admin_url = pg_admin_url
    config.rabbitmq_url = amqp_url
    # Short bounds, so that the fault tests see the deletion's draft cleanup give up, the revocation
    # retried and the dead-letter queues swept within seconds.
    config.extra_env.update({"MAILER_SCHEDULER_INTERVAL_S": "0.5", "REPLY_WATCHER_POLL_INTERVAL_S": "1",
                             "REPLY_WATCHER_TAKEOVER_GRACE_S": "3", "LOG_LEVEL": "INFO",
                             "MAILER_DRAFT_CLEANUP_S": "5", "TOKEN_VAULT_REVOKE_RETRY_CAP_S": "2",
                             "DEAD_LETTER_SWEEP_S": "1", "HEALTH_CHECK_S": "0.5",
                             "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"})
    running = Stack(config)
    try:
        bootstrap_broker(config.rabbitmq_management_url, config.rabbitmq_vhost, prefix, config.broker_passwords())
        running.start()
        yield RunningStack(running, config, database)
    finally:
        running.stop()
        with contextlib.suppress(Exception):
            delete_broker(config.rabbitmq_management_url, config.rabbitmq_vhost, prefix)
        _drop_database(pg_admin_url, name)


def signed_by(login: str):  # type: ignore[no-untyped-def]
    """A consumer's sender check for tests that run their relay and consumer in process as one login
    (``guest`` on the shared vhost): every event signed by that login is accepted."""
    return lambda _event_type, sender, _claimed: sender == login


def all_schemas() -> list[str]:
    return list(SCHEMAS)
