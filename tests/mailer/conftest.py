"""Fixtures for the mailer's tests: the sandbox (Google stand-in, in process), a token vault reached
over mutually authenticated gRPC, mailer processes started as in production, and a client that calls
the mailer's API with the gateway's certificate.

The vault here answers ``GetAccessToken`` with tokens the sandbox's OAuth server really issued for the
user's Google account (and ``FAILED_PRECONDITION`` for a user marked as needing to reconnect), which
is the vault's contract in ``protos/coffeeping/vault/v1/vault.proto``. It stands in for the token-vault
service until its ``GetAccessToken`` lands; the mailer cannot tell the difference.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from bootstrap_broker import DEFAULT_MANAGEMENT_URL, LOGINS, bootstrap_broker, delete_broker, service_url
from google.protobuf.timestamp_pb2 import Timestamp
from kombu import Connection, Exchange, Producer

from coffeeping.common.messaging import EVENTS, broker_login
from coffeeping.common.rpc import TlsFiles, call_metadata, channel
from coffeeping.mailer.v1 import mailer_pb2, mailer_pb2_grpc
from coffeeping.vault.v1 import vault_pb2, vault_pb2_grpc
from coffeeping_sandbox.server import Sandbox, start_sandbox

SCOPES = ["gmail.send", "gmail.compose", "gmail.metadata", "userinfo.email"]
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Any, timeout: float = 20.0, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    sb = start_sandbox(clients=[("coffeeping-test.apps.googleusercontent.com", "secret", ["http://localhost/cb"])])
    try:
        yield sb
    finally:
        sb.stop()


class Vault(vault_pb2_grpc.TokenVaultServicer):
    """``GetAccessToken`` over mTLS with tokens issued by the sandbox for each user's Google account."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.emails: dict[str, str] = {}
        self.disconnected: set[str] = set()
        self.calls = 0
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}

    def connect(self, user_id: str, email: str) -> None:
        with self._lock:
            self.emails[user_id] = email
            self.disconnected.discard(user_id)
            self._forget(user_id)

    def disconnect(self, user_id: str) -> None:
        with self._lock:
            self.disconnected.add(user_id)
            self._forget(user_id)

    def _forget(self, user_id: str) -> None:
        for key in [k for k in self._tokens if k.split("|", 1)[0] == user_id]:
            del self._tokens[key]

    def GetAccessToken(self, request: Any, context: grpc.ServicerContext) -> Any:
        names = context.auth_context().get("x509_common_name") or [b""]
        if names[0].decode() not in ("mailer", "reply-watcher"):
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "caller not allowed")
        user = dict(context.invocation_metadata()).get("x-user-id", "")
        # A request may name the scopes the token must carry (and only those), as the vault's contract says.
        wanted = sorted({s.rsplit("/", 1)[-1] for s in getattr(request, "scopes", [])}) or SCOPES
        if not set(wanted) <= set(SCOPES):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "scope_not_granted:" + ",".join(wanted))
        with self._lock:
            self.calls += 1
            if user in self.disconnected or user not in self.emails:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "needs reconnect")
            email = self.emails[user]
            key = f"{user}|{','.join(wanted)}"
            cached = self._tokens.get(key)
            if cached is None or cached[1] < time.time() + 120:
                issued = self.sandbox.oauth.issue_tokens(email=email, scopes=wanted, offline=False)
                cached = (issued["access_token"], time.time() + int(issued["expires_in"]))
                self._tokens[key] = cached
        expires = Timestamp()
        expires.FromDatetime(dt.datetime.fromtimestamp(cached[1], dt.UTC).replace(tzinfo=None))
        return vault_pb2.AccessToken(access_token=cached[0], expires_at=expires, email=email,
                                     scopes=[f"https://www.googleapis.com/auth/{s}" for s in wanted])


@pytest.fixture(scope="session")
def vault(sandbox: Sandbox, certs: Path) -> Iterator[tuple[Vault, str]]:
    servicer = Vault(sandbox)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    vault_pb2_grpc.add_TokenVaultServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials(
        [((certs / "token-vault-key.pem").read_bytes(), (certs / "token-vault.pem").read_bytes())],
        root_certificates=(certs / "ca.pem").read_bytes(), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


class MailerProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.port = int(env["GRPC_PORT"])
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MailerProcess:
        out = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen([sys.executable, "-m", "coffeeping_mailer"], env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mailer exited: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("mailer did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def mailer_factory(database: Any, mailer_bus: MailerBus, certs: Path, sandbox: Sandbox,
                   vault: tuple[Vault, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    started: list[MailerProcess] = []
    logs = tmp_path_factory.mktemp("mailer-logs")

    def make(**extra: str) -> MailerProcess:
        port = free_port()
        env = {
            "PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"), "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": database.app_url("mailer"), "GRPC_PORT": str(port),
            "TLS_CA_CERT": str(certs / "ca.pem"), "TLS_CERT": str(certs / "mailer.pem"),
            "TLS_KEY": str(certs / "mailer-key.pem"), "RABBITMQ_URL": mailer_bus.url("mailer"),
            "MESSAGING_PREFIX": mailer_bus.prefix,
            "TOMBSTONE_KEY": "test-tombstone-key-" + "x" * 32,
            "TOKEN_VAULT_GRPC_ADDR": vault[1], "GMAIL_API_ENDPOINT": sandbox.google_url,
            "MAILER_SCHEDULER_INTERVAL_S": "0.2", "MAILER_SCHEDULER_WORKERS": "4", "LOG_LEVEL": "INFO",
            "SHUTDOWN_GRACE_S": "2",
        }
        env.update(extra)
        proc = MailerProcess(env, logs / f"mailer-{port}.log").start()
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()


class Api:
    """Calls the mailer's tunnelled public API as the gateway does."""

    def __init__(self, address: str, certs: Path) -> None:
        tls = TlsFiles(certs / "ca.pem", certs / "auth-gateway.pem", certs / "auth-gateway-key.pem")
        self.stub = mailer_pb2_grpc.MailerStub(channel(address, tls))

    def __call__(self, user: str, operation: str, body: Any = None, raw: bytes | None = None,
                 **params: str) -> tuple[int, Any]:
        query = params.pop("query", None) or {}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        reply = self.stub.Call(mailer_pb2.ApiRequest(operation=operation, params=params, query=query, body=data),
                               metadata=call_metadata(user), timeout=30)
        return reply.http_status, json.loads(reply.body) if reply.body else None


@pytest.fixture(scope="module")
def mailer(mailer_factory: Any) -> Iterator[MailerProcess]:
    proc = mailer_factory()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(mailer: MailerProcess, certs: Path) -> Api:
    return Api(f"127.0.0.1:{mailer.port}", certs)


@pytest.fixture
def user(vault: tuple[Vault, str]) -> tuple[str, str]:
    """A fresh user with a connected Gmail account of their own."""
    suffix = uuid.uuid4().hex[:10]
    user_id, email = f"user_{suffix}", f"sender.{suffix}@gmail.com"
    vault[0].connect(user_id, email)
    return user_id, email


def contact_email() -> str:
    return f"contact.{uuid.uuid4().hex[:10]}@example.com"


@pytest.fixture
def db(database: Any) -> Iterator[psycopg.Connection]:
    """A superuser connection for inspection only."""
    with psycopg.connect(database.admin_url, autocommit=True) as conn:
        yield conn


@dataclass(frozen=True)
class MailerBus:
    """The mailers' vhost with the deployment's broker logins; tests publish as the broker's operator,
    signing each event as its registered producer (``user_id``), as that producer's relay would."""

    amqp_url: str
    prefix: str

    def url(self, login: str) -> str:
        return service_url(self.amqp_url, self.prefix, self.prefix, login, f"{login}-{self.prefix}")


@pytest.fixture(scope="session")
def mailer_bus(amqp_url: str) -> Iterator[MailerBus]:
    prefix = f"cpmailtest{uuid.uuid4().hex[:8]}"
    bootstrap_broker(DEFAULT_MANAGEMENT_URL, prefix, prefix, {login: f"{login}-{prefix}" for login in LOGINS})
    yield MailerBus(amqp_url, prefix)
    with contextlib.suppress(Exception):
        delete_broker(DEFAULT_MANAGEMENT_URL, prefix, prefix)


def publish_event(bus: MailerBus, event_type: str, user_id: str, payload: dict[str, Any]) -> str:
    event_id = str(uuid.uuid4())
    envelope = {"id": event_id, "type": event_type, "user_id": user_id,
                "occurred_at": dt.datetime.now(dt.UTC).isoformat(), "request_id": "", "payload": payload}
    producer_login = broker_login(bus.prefix, EVENTS[event_type][0][0])
    with Connection(bus.url("operator"), transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.channel(), exchange=Exchange(f"{bus.prefix}.events", type="topic", durable=True),
                            auto_declare=False)
        producer.publish(json.dumps(envelope).encode(), routing_key=event_type, message_id=event_id,
                         content_type="application/json", delivery_mode=2, mandatory=True, user_id=producer_login)
    return event_id
