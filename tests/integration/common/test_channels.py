"""The channels between services: spread over every replica of a target, still answering when one of
them goes away, and back soon after a restarted service listens again."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coffeeping.common.rpc import TlsFiles, channel, serve

SERVING = health_pb2.HealthCheckResponse.SERVING


def _tls(certs, service: str) -> TlsFiles:
    return TlsFiles(certs / "ca.pem", certs / f"{service}.pem", certs / f"{service}-key.pem")


def _check(chan: grpc.Channel) -> int:
    return int(health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5).status)


def test_a_list_of_replicas_is_verified_and_one_going_away_leaves_the_other_answering(certs):
    first = serve("accounts", [], {}, 0, _tls(certs, "accounts"), host="127.0.0.1")
    second = serve("accounts", [], {}, 0, _tls(certs, "accounts"), host="127.0.0.1")
    client = channel(f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}", _tls(certs, "auth-gateway"))
    try:
        assert all(_check(client) == SERVING for _ in range(10))
        first.stop()
        # The calls under way when it went may fail; the next ones go to the replica that is left.
        deadline = time.monotonic() + 10
        while True:
            try:
                assert _check(client) == SERVING
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the remaining replica did not take the calls"
                time.sleep(0.2)
        assert all(_check(client) == SERVING for _ in range(10))
    finally:
        client.close()
        first.stop()
        second.stop()


def test_a_restarted_service_is_reached_again_within_seconds(certs):
    server = serve("accounts", [], {}, 0, _tls(certs, "accounts"), host="127.0.0.1")
    port = server.port
    client = channel(f"127.0.0.1:{port}", _tls(certs, "auth-gateway"))
    try:
        assert _check(client) == SERVING
        server.stop()
        # Down for a while: the client's attempts to reconnect back off, up to a second apart. With gRPC's
        # default (1 s, x1.6 per attempt, up to 120 s) the attempt after 30 s down comes 10-17 s later.
        down_until = time.monotonic() + 30
        while time.monotonic() < down_until:
            with pytest.raises(grpc.RpcError):
                _check(client)
            time.sleep(0.5)
        server = serve("accounts", [], {}, port, _tls(certs, "accounts"), host="127.0.0.1")
        back = time.monotonic()
        while True:
            try:
                assert _check(client) == SERVING
                break
            except grpc.RpcError:
                assert time.monotonic() - back < 5, "the restarted service stayed unreachable"
                time.sleep(0.2)
    finally:
        client.close()
        server.stop()
