"""Service-to-service gRPC: mutual TLS, per-method allow-lists, trusted user ids, health, and drain."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coffeeping.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from coffeeping.common.certs import ensure
from coffeeping.common.db import make_engine
from coffeeping.common.rpc import TlsFiles, allow, call_metadata, channel, serve
from coffeeping.types.v1 import export_pb2
from coffeeping.watcher.v1 import watcher_pb2_grpc
from coffeeping_accounts.servicer import POLICY, AccountsServicer
from coffeeping_accounts.services import KnownUsers


def tls(certs, service: str) -> TlsFiles:
    return TlsFiles(certs / "ca.pem", certs / f"{service}.pem", certs / f"{service}-key.pem")


@pytest.fixture(scope="module")
def accounts_server(certs, database):
    engine = make_engine(database.app_url("accounts"), pool_size=2)
    server = serve("accounts", [(accounts_pb2_grpc.add_AccountsServicer_to_server, AccountsServicer(engine, KnownUsers(None)),
                                 "coffeeping.accounts.v1.Accounts")], POLICY, 0, tls(certs, "accounts"),
                   host="127.0.0.1")
    yield f"127.0.0.1:{server.port}"
    server.stop()
    engine.dispose()


def test_the_gateway_with_a_user_id_is_served(accounts_server, certs):
    stub = accounts_pb2_grpc.AccountsStub(channel(accounts_server, tls(certs, "auth-gateway")))
    user = stub.GetMe(accounts_pb2.GetMeRequest(), metadata=call_metadata("user_grpc_1"), timeout=5)
    assert user.user_id == "user_grpc_1"


def test_plaintext_is_refused(accounts_server):
    stub = accounts_pb2_grpc.AccountsStub(grpc.insecure_channel(accounts_server))
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetMe(accounts_pb2.GetMeRequest(), metadata=call_metadata("user_grpc_1"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_from_another_ca_is_refused(accounts_server, certs, tmp_path):
    rogue = ensure(tmp_path / "rogue", ("auth-gateway",))
    # The rogue client trusts our CA for the server but presents its own CA's certificate.
    files = TlsFiles(certs / "ca.pem", rogue / "auth-gateway.pem", rogue / "auth-gateway-key.pem")
    stub = accounts_pb2_grpc.AccountsStub(channel(accounts_server, files))
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetMe(accounts_pb2.GetMeRequest(), metadata=call_metadata("user_grpc_1"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_an_unknown_service_identity_is_refused(accounts_server, certs):
    ensure(certs, ("intruder",))
    stub = accounts_pb2_grpc.AccountsStub(channel(accounts_server, tls(certs, "intruder")))
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetMe(accounts_pb2.GetMeRequest(), metadata=call_metadata("user_grpc_1"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_known_service_outside_the_method_allow_list_is_refused(accounts_server, certs):
    stub = accounts_pb2_grpc.AccountsStub(channel(accounts_server, tls(certs, "mailer")))
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetMe(accounts_pb2.GetMeRequest(), metadata=call_metadata("user_grpc_1"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_method_needing_a_user_refuses_a_call_without_one(accounts_server, certs):
    stub = accounts_pb2_grpc.AccountsStub(channel(accounts_server, tls(certs, "auth-gateway")))
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetMe(accounts_pb2.GetMeRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetMe(accounts_pb2.GetMeRequest(), metadata=(("x-user-id", "bad id; drop"),), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_answers_any_service_identity_and_reflection_is_registered(accounts_server, certs):
    chan = channel(accounts_server, tls(certs, "mailer"))
    reply = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    named = health_pb2_grpc.HealthStub(chan).Check(
        health_pb2.HealthCheckRequest(service="coffeeping.accounts.v1.Accounts"), timeout=5)
    assert named.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    responses = reflection_pb2_grpc.ServerReflectionStub(chan).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    services = {s.name for r in responses for s in r.list_services_response.service}
    assert "coffeeping.accounts.v1.Accounts" in services


class _SlowWatcher(watcher_pb2_grpc.ReplyWatcherServicer):
    """A server whose Ping takes a while, to observe draining (the interceptor and server are real)."""

    def Ping(self, request, context):
        time.sleep(1.5)
        return export_pb2.PingResponse()


def test_stop_drains_health_goes_not_serving_and_in_flight_calls_finish(certs):
    policy = {"/coffeeping.watcher.v1.ReplyWatcher/Ping": allow("mailer", needs_user=False)}
    server = serve("reply-watcher", [(watcher_pb2_grpc.add_ReplyWatcherServicer_to_server, _SlowWatcher(),
                                      "coffeeping.watcher.v1.ReplyWatcher")], policy, 0,
                   tls(certs, "reply-watcher"), host="127.0.0.1", grace=5)
    address = f"127.0.0.1:{server.port}"
    stub = watcher_pb2_grpc.ReplyWatcherStub(channel(address, tls(certs, "mailer")))
    result: dict[str, object] = {}

    def slow_call() -> None:
        try:
            stub.Ping(export_pb2.PingRequest(), timeout=10)
            result["ok"] = True
        except grpc.RpcError as exc:
            result["error"] = exc.code()

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.3)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    time.sleep(0.2)
    status = server.health._server_status.get("")  # the servicer's own record of what it reports
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    caller.join(10)
    stopper.join(10)
    assert result == {"ok": True}
