"""Health that tells the truth: a backend's readiness follows its own database and broker connection and
comes back with them; liveness follows its worker threads; the gateway's readiness does not depend on
the services behind it. Each outage is made for one service's own login only, so nothing else notices."""

from __future__ import annotations

import threading
import time
from urllib.parse import quote

import psycopg
import requests
from bootstrap_broker import Management
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coffeeping.common.messaging.registry import broker_login
from coffeeping.common.rpc import LIVENESS, TlsFiles, channel, serve
from coffeeping.common.runtime import watch_health

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(stack, service: str, name: str = "") -> int:
    certs = stack.config.var_dir / "certs"
    tls = TlsFiles(certs / "ca.pem", certs / "auth-gateway.pem", certs / "auth-gateway-key.pem")
    with channel(f"127.0.0.1:{stack.config.ports[service]}", tls) as chan:
        return int(health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(service=name),
                                                          timeout=5).status)


def _until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_readiness_follows_the_services_own_database(stack):
    admin = stack.config.admin_url
    assert _health(stack, "accounts") == SERVING
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("ALTER ROLE cp_accounts NOLOGIN")
        try:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'cp_accounts' "
                         "AND datname = %s", (stack.config.database,))
            assert _until(lambda: _health(stack, "accounts") == NOT_SERVING), "readiness did not fall"
            assert _health(stack, "accounts", "coffeeping.accounts.v1.Accounts") == NOT_SERVING
            assert _health(stack, "accounts", LIVENESS) == SERVING  # alive: restarting it would not help
            assert _health(stack, "mailer") == SERVING  # the others' databases are theirs
        finally:
            conn.execute("ALTER ROLE cp_accounts LOGIN")
    assert _until(lambda: _health(stack, "accounts") == SERVING), "readiness did not come back"


def test_readiness_follows_the_services_own_broker_connection(stack):
    api = Management(stack.config.rabbitmq_management_url)
    login = broker_login(stack.config.messaging_prefix, "mailer")
    password = stack.config.broker_passwords()["mailer"]
    api.call("PUT", f"/users/{quote(login, safe='')}", {"password": "not-the-password", "tags": ""})
    try:
        for connection in api.session.get(f"{api.base}/connections", timeout=10).json():
            if connection.get("user") == login:
                api.call("DELETE", f"/connections/{quote(connection['name'], safe='')}", missing_ok=True)
        assert _until(lambda: _health(stack, "mailer") == NOT_SERVING), "readiness did not fall"
        assert _health(stack, "mailer", LIVENESS) == SERVING
        assert _health(stack, "accounts") == SERVING
    finally:
        api.call("PUT", f"/users/{quote(login, safe='')}", {"password": password, "tags": ""})
    assert _until(lambda: _health(stack, "mailer") == SERVING, timeout=60), "readiness did not come back"


def test_the_gateway_stays_ready_while_a_backend_is_down(stack):
    stack.stack.stop_service("mailer")
    try:
        ready = requests.get(f"{stack.url}/healthz", timeout=10)
        assert ready.status_code == 200 and ready.json() == {"status": "ok"}
        listing = requests.get(f"{stack.url}/v1/sequences", timeout=10,
                               headers={"Authorization": f"Bearer {stack.token('user_health_gw')}"})
        assert listing.status_code == 503 and listing.headers["Content-Type"] == "application/problem+json"
    finally:
        stack.stack.start_and_wait("mailer")


def test_liveness_falls_when_a_worker_thread_dies(certs):
    tls = TlsFiles(certs / "ca.pem", certs / "accounts.pem", certs / "accounts-key.pem")
    server = serve("accounts", [], {}, 0, tls, host="127.0.0.1")
    stop, quit_worker = threading.Event(), threading.Event()
    worker = threading.Thread(target=quit_worker.wait, name="scheduler", daemon=True)
    worker.start()
    watcher = threading.Thread(target=watch_health, args=(server, [worker], lambda: None, stop, 0.1), daemon=True)
    watcher.start()
    client = TlsFiles(certs / "ca.pem", certs / "auth-gateway.pem", certs / "auth-gateway-key.pem")

    def status(name: str) -> int:
        with channel(f"127.0.0.1:{server.port}", client) as chan:
            return int(health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(service=name),
                                                              timeout=5).status)

    try:
        assert status(LIVENESS) == SERVING and status("") == SERVING
        quit_worker.set()  # the worker thread ends, as a crashed one does
        assert _until(lambda: status(LIVENESS) == NOT_SERVING, timeout=10)
        assert status("") == NOT_SERVING
    finally:
        stop.set()
        server.stop()

