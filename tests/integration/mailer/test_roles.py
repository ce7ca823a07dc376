"""The mailer split in two processes (``MAILER_ROLE``), as Kubernetes runs it: an ``api`` process that
answers the Mailer API and runs no scheduler, and a ``scheduler`` process that sends what is due and
answers gRPC health (the same mTLS probes) but no Mailer RPC.

Both run against a database of their own, so that no other test's mailer (whose scheduler would send
the email) shares it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coffeeping.common.rpc import TlsFiles, call_metadata, channel
from coffeeping.mailer.v1 import mailer_pb2 as pb
from coffeeping.mailer.v1 import mailer_pb2_grpc
from tests.conftest import Database, fresh_database
from tests.integration.mailer.conftest import Api, contact_email, wait_for


@pytest.fixture(scope="module")
def own_database(pg_admin_url: str) -> Iterator[Database]:
    with fresh_database(pg_admin_url) as db:
        yield db


@pytest.fixture(scope="module")
def api_process(mailer_factory: Any, own_database: Database) -> Iterator[Any]:
    proc = mailer_factory(MAILER_ROLE="api", DATABASE_URL=own_database.app_url("mailer"), HEALTH_CHECK_S="0.5")
    yield proc
    proc.stop()


def started_line(log_path: Path) -> dict[str, Any]:
    """The process's "mailer started" log line (its role, workers and gRPC services)."""
    def find() -> dict[str, Any] | None:
        for line in log_path.read_text().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("msg") == "mailer started":
                    return dict(record)
        return None

    found = wait_for(find, timeout=10)
    assert found, log_path.read_text()[-2000:]
    return dict(found)


def health(port: int, certs: Path, service: str = "") -> str:
    tls = TlsFiles(certs / "ca.pem", certs / "auth-gateway.pem", certs / "auth-gateway-key.pem")
    with channel(f"127.0.0.1:{port}", tls) as chan:
        reply = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def first_step(api: Api, user_id: str, seq_id: str) -> dict[str, Any]:
    status, body = api(user_id, "sequences.get", sequence_id=seq_id)
    assert status == 200, body
    return dict(body["steps"][0])


def test_the_api_process_answers_the_api_and_the_scheduler_process_sends_what_it_scheduled(
        api_process, mailer_factory, own_database, certs, sandbox, user):
    user_id, email = user
    api = Api(f"127.0.0.1:{api_process.port}", certs)
    api_started = started_line(api_process.log_path)
    assert api_started["role"] == "api"
    assert set(api_started["workers"].split(",")) == {"outbox-relay", "consumer", "dead-letter-janitor", "access-log"}
    assert api_started["grpc_services"] == "coffeeping.mailer.v1.Mailer"

    # The API process takes the sequence and schedules its first email...
    status, contact = api(user_id, "contacts.create", {"email": contact_email(), "first_name": "Ada"})
    assert status == 201, contact
    status, seq = api(user_id, "sequences.create", {"contact_id": contact["id"], "subject": "Coffee?",
                                                    "body": "Hi {{first_name}}", "follow_ups": []})
    assert status == 201, seq
    assert api(user_id, "sequences.send", sequence_id=seq["id"])[0] == 202
    # ...but sends nothing: it has no scheduler (its interval is 0.2 s here, so 3 s is fifteen passes).
    time.sleep(3)
    assert first_step(api, user_id, seq["id"])["status"] == "scheduled"
    assert not [m for t in sandbox.gmail.mailbox(email)["threads"] for m in t["messages"] if "SENT" in m["labelIds"]]
    # Ready (its database and its broker connection), checked every HEALTH_CHECK_S.
    assert wait_for(lambda: health(api_process.port, certs) == "SERVING", timeout=15)
    assert health(api_process.port, certs, "coffeeping.mailer.v1.Mailer") == "SERVING"

    scheduler = mailer_factory(MAILER_ROLE="scheduler", DATABASE_URL=own_database.app_url("mailer"),
                               HEALTH_CHECK_S="0.5")
    try:
        scheduler_started = started_line(scheduler.log_path)
        assert scheduler_started["role"] == "scheduler"
        assert set(scheduler_started["workers"].split(",")) == {"outbox-relay", "scheduler", "access-log"}
        assert scheduler_started["grpc_services"] == "health"

        # The scheduler process sends it (the only process with a scheduler), and the API process reports it.
        sent = wait_for(lambda: (s := first_step(api, user_id, seq["id"]))["status"] == "sent" and s, timeout=30)
        assert sent, first_step(api, user_id, seq["id"])
        (thread,) = [t for t in sandbox.gmail.mailbox(email)["threads"] if t["id"] == sent["thread_id"]]
        assert [m["body"].strip() for m in thread["messages"] if "SENT" in m["labelIds"]] == ["Hi Ada"]

        # Its gRPC server answers health over mTLS (what the probes ask) and nothing of the Mailer API.
        assert wait_for(lambda: health(scheduler.port, certs) == "SERVING", timeout=15)
        assert health(scheduler.port, certs, "liveness") == "SERVING"
        tls = TlsFiles(certs / "ca.pem", certs / "auth-gateway.pem", certs / "auth-gateway-key.pem")
        with channel(f"127.0.0.1:{scheduler.port}", tls) as chan:
            stub = mailer_pb2_grpc.MailerStub(chan)
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetSequence(pb.GetSequenceRequest(sequence_id=seq["id"]), metadata=call_metadata(user_id),
                                 timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        scheduler.stop()
    # The API process still answers after the scheduler is gone.
    assert first_step(api, user_id, seq["id"])["status"] == "sent"
