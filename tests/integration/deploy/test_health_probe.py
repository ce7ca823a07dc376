"""The container health probe against a gRPC server whose certificate is issued only for its Kubernetes
Service's DNS name (as cert-manager issues it): the probe dials 127.0.0.1 and still verifies that name."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coffeeping.common.certs import certificate_authority, issue
from coffeeping.common.rpc import TlsFiles, serve

ROOT = Path(__file__).resolve().parents[3]
SERVICE_DNS = "accounts.coffeeping.svc.cluster.local"


@pytest.fixture(scope="module")
def dns_only(tmp_path_factory) -> Iterator[tuple[Path, int]]:
    certs = tmp_path_factory.mktemp("dns-only-certs")
    ca_cert, ca_key = certificate_authority(certs)
    issue(certs, "accounts", ca_cert, ca_key, dns_names=(SERVICE_DNS,))
    server = serve("accounts", [], {}, 0, TlsFiles(certs / "ca.pem", certs / "accounts.pem", certs / "accounts-key.pem"),
                   host="127.0.0.1")
    yield certs, server.port
    server.stop()


def _probe(certs: Path, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TLS_CA_CERT": str(certs / "ca.pem"), "TLS_CERT": str(certs / "accounts.pem"),
           "TLS_KEY": str(certs / "accounts-key.pem")}
    env.pop("TLS_SERVER_NAME", None)
    return subprocess.run([sys.executable, str(ROOT / "deploy" / "grpc_health_probe.py"), "--addr",
                           f"127.0.0.1:{port}", *extra], env=env, capture_output=True, text=True, timeout=30)


def test_the_probe_verifies_the_name_in_the_services_own_certificate(dns_only):
    result = _probe(*dns_only)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("SERVING")


def test_a_server_name_the_certificate_is_not_for_is_refused(dns_only):
    result = _probe(*dns_only, "--server-name", "mailer.coffeeping.svc.cluster.local")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr
