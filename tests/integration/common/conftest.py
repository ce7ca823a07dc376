"""Fixtures for the messaging tests: a throwaway database with real roles, and unique AMQP names.

Needs the local PostgreSQL (superuser ``postgres``, trust auth) and RabbitMQ (guest/guest); override
with ``CP_TEST_PG_ADMIN_URL`` / ``CP_TEST_AMQP_URL``.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from kombu import Connection

from coffeeping.common.db import make_engine
from coffeeping.common.frozen_ddl import OUTBOX_INBOX_V1, RLS_OWNER_V1, render

PG_ADMIN_URL = os.environ.get("CP_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("CP_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
SUFFIX = secrets.token_hex(4)
SCHEMAS = ("svc", "svc2")  # two consuming services, each with its own inbox


@dataclass(frozen=True)
class MsgDb:
    name: str
    app_url: str  # the non-owner login role (RLS applies)
    admin_url: str  # superuser, for checks that must see every row

    def scalar(self, sql: str, *params: object) -> object:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute(sql, params).fetchone()
            return row[0] if row else None

    def execute(self, sql: str, *params: object) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql, params)


def _admin_url_for(db: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture(scope="session")
def msg_db() -> Iterator[MsgDb]:
    db = f"cp_msgtest_{SUFFIX}"
    owner = f"cp_msgtest_owner_{SUFFIX}"
    app = f"cp_msgtest_app_{SUFFIX}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {owner} NOLOGIN NOSUPERUSER NOBYPASSRLS")
        conn.execute(f"CREATE ROLE {app} LOGIN NOSUPERUSER NOBYPASSRLS")
        conn.execute(f"CREATE DATABASE {db}")
    try:
        with psycopg.connect(_admin_url_for(db)) as conn:  # one transaction
            for schema in SCHEMAS:
                conn.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {owner}")
            conn.execute(f"SET ROLE {owner}")
            for schema in SCHEMAS:
                for stmt in render(OUTBOX_INBOX_V1, schema=schema):
                    conn.execute(stmt)
                conn.execute(
                    f"CREATE TABLE {schema}.notes (id bigserial PRIMARY KEY, user_id text NOT NULL, "
                    "event_id uuid NOT NULL, kind text NOT NULL)"
                )
                for stmt in render(RLS_OWNER_V1, schema=schema, table="notes"):
                    conn.execute(stmt)
                conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {app}")
                conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {app}")
                conn.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {app}")
            conn.execute("RESET ROLE")
        yield MsgDb(db, f"postgresql+psycopg://{app}@127.0.0.1:5432/{db}", _admin_url_for(db))
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            conn.execute(f"DROP ROLE IF EXISTS {app}")
            conn.execute(f"DROP ROLE IF EXISTS {owner}")


@pytest.fixture(scope="session")
def engine(msg_db: MsgDb):
    eng = make_engine(msg_db.app_url, pool_size=5, application_name="cp-msgtest")
    yield eng
    eng.dispose()


@pytest.fixture(autouse=True)
def _clean_tables(request: pytest.FixtureRequest) -> Iterator[None]:
    if "msg_db" not in request.fixturenames:
        yield
        return
    db: MsgDb = request.getfixturevalue("msg_db")
    yield
    for schema in SCHEMAS:
        db.execute(f"TRUNCATE {schema}.outbox, {schema}.inbox, {schema}.notes")


_counter = itertools.count()
# Services the tests use; their queues are deleted after each test.
TEST_SERVICES = ("mailer", "vault", "watcher")


@pytest.fixture
def prefix() -> Iterator[str]:
    """A unique exchange/queue prefix for one test; everything under it is deleted afterwards."""
    value = f"cpmsgtest-{SUFFIX}-{next(_counter)}"
    yield value
    with Connection(AMQP_URL, connect_timeout=5) as conn:
        channel = conn.channel()
        for service in TEST_SERVICES:
            channel.queue_delete(f"{value}.{service}")
            channel.queue_delete(f"{value}.{service}.dead")
        channel.exchange_delete(f"{value}.events")
        channel.exchange_delete(f"{value}.dlx")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    return AMQP_URL
