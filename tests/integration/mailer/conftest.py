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
import json
import os
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
from google.protobuf.message import Message
from kombu import Connection, Exchange, Producer

from bench.mailer_harness import MailerProcess, Vault, free_port
from coffeeping.common.messaging import EVENTS, broker_login, make_envelope
from coffeeping.common.rpc import TlsFiles, call_metadata, channel
from coffeeping.mailer.v1 import mailer_pb2 as pb
from coffeeping.mailer.v1 import mailer_pb2_grpc
from coffeeping.vault.v1 import vault_pb2_grpc
from coffeeping_gateway import schemas
from coffeeping_gateway.api import from_message, parse_json, parse_query, to_message
from coffeeping_gateway.problems import Problem, problem_document
from coffeeping_gateway.web import rpc_problem
from coffeeping_sandbox.server import Sandbox, start_sandbox

ROOT = Path(__file__).resolve().parents[3]


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
    """Calls the mailer's typed RPCs with the gateway's certificate, and reads the answers as the public API.

    A public operation ("contacts.create", ...) is turned into its RPC and back with the gateway's own
    documents and mapping (``coffeeping_gateway.schemas``, ``api``, ``web.rpc_problem``), so a test sees
    the status and JSON a client of the gateway would see.
    """

    def __init__(self, address: str, certs: Path) -> None:
        tls = TlsFiles(certs / "ca.pem", certs / "auth-gateway.pem", certs / "auth-gateway-key.pem")
        self.stub = mailer_pb2_grpc.MailerStub(channel(address, tls))

    def __call__(self, user: str, operation: str, body: Any = None, raw: bytes | None = None,
                 query: dict[str, str] | None = None, **params: str) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        try:
            status, document = self._operation(operation, data, query or {}, params, call_metadata(user))
        except grpc.RpcError as exc:
            problem = rpc_problem(exc)
            return problem.status, problem_document(problem.status, problem.detail, **problem.extra)
        except Problem as problem:
            return problem.status, problem_document(problem.status, problem.detail, **problem.extra)
        return status, None if document is None else document.model_dump(mode="json")

    def _operation(self, operation: str, data: bytes, query: dict[str, str], params: dict[str, str],
                   metadata: Any) -> tuple[int, Any]:
        stub, kw = self.stub, {"metadata": metadata, "timeout": 30}
        contact_id, sequence_id = params.get("contact_id", ""), params.get("sequence_id", "")
        if operation == "contacts.create":
            contact = to_message(parse_json(schemas.ContactInput, data), pb.Contact())
            return 201, from_message(schemas.Contact, stub.CreateContact(pb.CreateContactRequest(contact=contact), **kw))
        if operation == "contacts.get":
            return 200, from_message(schemas.Contact, stub.GetContact(pb.GetContactRequest(contact_id=contact_id), **kw))
        if operation == "contacts.update":
            changes = parse_json(schemas.ContactInput, data)
            request = pb.UpdateContactRequest(contact_id=contact_id, contact=to_message(changes, pb.Contact()))
            request.update_mask.paths.extend(sorted(changes.model_fields_set))
            return 200, from_message(schemas.Contact, stub.UpdateContact(request, **kw))
        if operation == "contacts.delete":
            stub.DeleteContact(pb.DeleteContactRequest(contact_id=contact_id), **kw)
            return 204, None
        if operation == "contacts.list":
            page_query = parse_query(schemas.PageQuery, query)
            page = stub.ListContacts(pb.ListContactsRequest(page_size=page_query.limit, page_token=page_query.cursor),
                                     **kw)
            return 200, schemas.ContactPage(items=[from_message(schemas.Contact, c) for c in page.contacts],
                                            next_cursor=page.next_page_token or None)
        if operation == "contacts.import":
            return 200, from_message(schemas.ImportResult, stub.ImportContacts(pb.ImportContactsRequest(csv=data), **kw))
        if operation == "sequences.create":
            request = to_message(parse_json(schemas.SequenceInput, data), pb.CreateSequenceRequest())
            return 201, from_message(schemas.Sequence, stub.CreateSequence(request, **kw))
        if operation == "sequences.list":
            seq_query = parse_query(schemas.SequenceQuery, query)
            page = stub.ListSequences(pb.ListSequencesRequest(
                page_size=seq_query.limit, page_token=seq_query.cursor, contact_id=seq_query.contact_id,
                status=seq_query.status), **kw)
            return 200, schemas.SequencePage(items=[from_message(schemas.Sequence, s) for s in page.sequences],
                                             next_cursor=page.next_page_token or None)
        if operation == "sequences.send":
            request = to_message(parse_json(schemas.SendInput, data), pb.SendSequenceRequest(sequence_id=sequence_id))
            return 202, from_message(schemas.Sequence, stub.SendSequence(request, **kw))
        verbs = {"sequences.get": (stub.GetSequence, pb.GetSequenceRequest),
                 "sequences.pause": (stub.PauseSequence, pb.PauseSequenceRequest),
                 "sequences.resume": (stub.ResumeSequence, pb.ResumeSequenceRequest),
                 "sequences.cancel": (stub.CancelSequence, pb.CancelSequenceRequest)}
        method, message = verbs[operation]
        return 200, from_message(schemas.Sequence, method(message(sequence_id=sequence_id), **kw))


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


def publish_event(bus: MailerBus, user_id: str, message: Message) -> str:
    envelope = make_envelope(user_id, message)
    event_type, event_id = envelope["type"], envelope["id"]
    producer_login = broker_login(bus.prefix, EVENTS[event_type].producers[0])
    with Connection(bus.url("operator"), transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.channel(), exchange=Exchange(f"{bus.prefix}.events", type="topic", durable=True),
                            auto_declare=False)
        producer.publish(json.dumps(envelope).encode(), routing_key=event_type, message_id=event_id,
                         content_type="application/json", delivery_mode=2, mandatory=True, user_id=producer_login)
    return event_id
