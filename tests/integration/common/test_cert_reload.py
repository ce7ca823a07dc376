"""Renewed mTLS certificates are taken up without a restart, by the server and by its clients.

The certificate files are replaced in place, as Kubernetes updates a mounted Secret when cert-manager
renews it; here the whole chain is replaced (a new CA too), so that a side still using the old files
cannot complete a handshake with one using the new ones."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coffeeping.common.certs import certificate_authority, issue
from coffeeping.common.rpc import TlsFiles, channel, serve

SERVING = health_pb2.HealthCheckResponse.SERVING


def _material(directory: Path) -> Path:
    directory.mkdir(parents=True)
    ca_cert, ca_key = certificate_authority(directory)
    for service in ("accounts", "auth-gateway"):
        issue(directory, service, ca_cert, ca_key)
    return directory


def _files(directory: Path, service: str) -> TlsFiles:
    return TlsFiles(directory / "ca.pem", directory / f"{service}.pem", directory / f"{service}-key.pem")


def _check(chan: grpc.Channel, wait_for_ready: bool = False) -> int:
    return int(health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=10,
                                                      wait_for_ready=wait_for_ready).status)


def _fresh_check(address: str, tls: TlsFiles) -> int:
    ca, cert, key = tls.read()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    with grpc.secure_channel(address, credentials) as chan:
        return _check(chan)


def test_server_and_client_take_renewed_certificates_up_without_a_restart(tmp_path):
    mounted, old, new = tmp_path / "mounted", _material(tmp_path / "old"), _material(tmp_path / "new")
    shutil.copytree(old, mounted)
    server = serve("accounts", [], {}, 0, _files(mounted, "accounts"), host="127.0.0.1")
    address = f"127.0.0.1:{server.port}"
    client = channel(address, _files(mounted, "auth-gateway"), reload_check_s=0.2)
    try:
        assert _check(client) == SERVING
        time.sleep(0.05)  # a modification time of its own for the renewed files
        for item in new.iterdir():
            shutil.copyfile(item, mounted / item.name)

        # The server's next handshake uses the renewed files: a client with them is accepted, one
        # with the previous chain is not.
        assert _fresh_check(address, _files(new, "auth-gateway")) == SERVING
        with pytest.raises(grpc.RpcError) as refused:
            _fresh_check(address, _files(old, "auth-gateway"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        # The long-lived client looks at its files again and makes its next connection with the new ones.
        time.sleep(0.3)
        assert _check(client) == SERVING
        server.stop()
        server = serve("accounts", [], {}, server.port, _files(new, "accounts"), host="127.0.0.1")
        # A new connection (once the restarted server listens), which only the renewed files can make.
        assert _check(client, wait_for_ready=True) == SERVING
    finally:
        client.close()
        server.stop()
