"""Two (or more) replicas of every stateless service against one database and one broker: what
``replicas.py`` runs. ``deploy/stack.py`` starts one process per service; this composes its ``Stack``
(the database and broker bootstrap, the sandbox) and its ``StackConfig`` (each service's settings), and
starts the replicas itself, each with its own ports and its own log file per incarnation.

Each replica gets its own ``GRPC_PORT`` (or ``GATEWAY_PORT``) and ``METRICS_PORT``. How a client reaches
a service's replicas (``balancing``):

- ``client``: every client's ``*_GRPC_ADDR`` lists all replicas of the target
  (``ipv4:127.0.0.1:P1,127.0.0.1:P2``), and ``common.rpc.channel`` spreads its calls round robin;
- ``proxy``: every client's ``*_GRPC_ADDR`` is one port of ``tcp_balancer.py``, which hands each new
  connection to the next replica, as a Kubernetes ClusterIP Service does (connections are spread, not
  calls);
- ``auto``: ``client`` if a mutually authenticated call through such a list works (``client_balancing_works``),
  else ``proxy``.

The mailer runs as ``MAILER_ROLE=api`` and ``MAILER_ROLE=scheduler`` replicas when its settings know the
role, else as replicas of the whole mailer (``all``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from proc_cpu import process_table, tree_seconds  # noqa: E402
from stack import SERVICES, Stack, StackConfig, _end, _wait_port, free_port  # noqa: E402

BALANCER = Path(__file__).resolve().parent / "tcp_balancer.py"

GATEWAY, MAILER = "auth-gateway", "mailer"
# Client settings naming each gRPC service, and the service (kind) whose replicas answer there.
ADDRESS_SETTINGS = {
    "ACCOUNTS_GRPC_ADDR": "accounts",
    "TOKEN_VAULT_GRPC_ADDR": "token-vault",
    "MAILER_GRPC_ADDR": "mailer-api",
    "REPLY_WATCHER_GRPC_ADDR": "reply-watcher",
}


def distinct_ports(taken: set[int]) -> Callable[[], int]:
    """``free_port`` that never hands out a port twice (it only checks that the port is free now: two
    calls before either port is bound can return the same one)."""

    def pick() -> int:
        while (port := free_port()) in taken:
            pass
        taken.add(port)
        return port

    return pick


def mailer_roles_available() -> bool:
    """Whether this working tree's mailer takes ``MAILER_ROLE`` (api / scheduler)."""
    from coffeeping_mailer import config

    return "role" in getattr(config.Settings, "__dataclass_fields__", {})


def client_balancing_works(certs: Path) -> str | None:
    """Whether ``common.rpc.channel`` reaches two replicas through one ``ipv4:`` list over mTLS: two health
    servers in this process, one call each way. None when it works, else what went wrong."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from coffeeping.common import rpc

    tls = rpc.TlsFiles(certs / "ca.pem", certs / "accounts.pem", certs / "accounts-key.pem")
    client = rpc.TlsFiles(certs / "ca.pem", certs / "auth-gateway.pem", certs / "auth-gateway-key.pem")
    servers = [rpc.serve("accounts", [], {}, 0, tls, host="127.0.0.1", grace=0.0) for _ in range(2)]
    target = "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server in servers)
    try:
        stub = health_pb2_grpc.HealthStub(rpc.channel(target, client))
        for _ in range(2):
            stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return None
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    finally:
        for server in servers:
            server.server.stop(0)


@dataclass
class Replica:
    """One replica of one kind of process, across its incarnations (a restart starts a new one)."""

    kind: str  # accounts, token-vault, mailer-api, mailer-scheduler, mailer (role all), reply-watcher, auth-gateway
    service: str  # the registry's name
    role: str | None  # MAILER_ROLE, for the mailer
    index: int
    port: int
    metrics_port: int
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    incarnation: int = 0
    logs: list[Path] = field(default_factory=list)
    ended_cpu_s: float = 0.0  # CPU of the incarnations that have exited (from wait4)
    restarts: list[dict[str, float]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> subprocess.Popen[bytes]:
        self.incarnation += 1
        path = self.log_dir / f"{self.name}.{self.incarnation}.log"
        self.logs.append(path)
        out = open(path, "ab")  # noqa: SIM115 - the child holds it
        module = SERVICES[self.service][0]
        self.proc = subprocess.Popen([sys.executable, "-m", module], env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT)
        out.close()
        return self.proc

    def wait_ready(self, timeout: float = 90.0) -> None:
        assert self.proc is not None
        _wait_port(self.port, self.proc, timeout)

    def cpu_seconds(self, table: dict[int, tuple[int, int, float]]) -> float:
        """CPU seconds of every incarnation so far (with a gunicorn master's workers)."""
        running = tree_seconds(table, [self.proc.pid]) if self.proc and self.proc.poll() is None else 0.0
        return self.ended_cpu_s + running

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> float:
        """Send ``sig`` and reap the process, killing it after ``timeout``; its CPU seconds (from wait4,
        exact to the end) are added to ``ended_cpu_s``. Returns how long it took to exit."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return 0.0
        began = time.monotonic()
        proc.send_signal(sig)
        deadline = began + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        self.ended_cpu_s += usage.ru_utime + usage.ru_stime
        return time.monotonic() - began

    def restart(self) -> dict[str, float]:
        """SIGTERM (the service drains), then a new incarnation, ready: the rolling restart of one pod."""
        began = time.monotonic()
        exited_s = self.stop()
        exit_code = self.proc.returncode if self.proc else None
        self.start()
        self.wait_ready()
        record = {"at": time.time(), "exit_s": exited_s, "down_s": time.monotonic() - began,
                  "exit_code": float(exit_code if exit_code is not None else -1)}
        self.restarts.append(record)
        return record


class ReplicaSet:
    """The sandbox once, and ``count`` replicas of each stateless service, on free ports, all against the
    database and the messaging prefix of ``config`` (an ephemeral ``StackConfig``)."""

    def __init__(self, config: StackConfig, count: int = 2, split_mailer: bool | None = None,
                 balancing: str = "client") -> None:
        if balancing not in ("client", "proxy"):
            raise ValueError("balancing must be client or proxy")
        self.config = config
        self.count = count
        self.balancing = balancing
        self.split_mailer = mailer_roles_available() if split_mailer is None else split_mailer
        self.balancer: subprocess.Popen[bytes] | None = None
        port = distinct_ports({*config.ports.values(), *config.sandbox_ports.values(), *config.metrics_ports.values()})
        self.balancer_ports = {kind: port() for kind in ADDRESS_SETTINGS.values()}
        self.stack = Stack(config)  # the bootstrap and the sandbox; the services are ours
        assert config.log_dir is not None
        config.log_dir.mkdir(parents=True, exist_ok=True)
        kinds: list[tuple[str, str, str | None]] = [("accounts", "accounts", None), ("token-vault", "token-vault", None)]
        if self.split_mailer:
            kinds += [("mailer-api", MAILER, "api"), ("mailer-scheduler", MAILER, "scheduler")]
        else:
            kinds += [("mailer-api", MAILER, None)]  # whole mailers: every one serves the API and schedules
        kinds += [("reply-watcher", "reply-watcher", None), (GATEWAY, GATEWAY, None)]
        self.replicas: list[Replica] = []
        for kind, service, role in kinds:
            for index in range(1, count + 1):
                # The first replica of each service takes the config's port: the sandbox's OAuth redirect and
                # Pub/Sub push endpoint point at the first gateway, as at a load balancer's address.
                first = index == 1 and kind in ("accounts", "token-vault", "mailer-api", "reply-watcher", GATEWAY)
                self.replicas.append(Replica(kind, service, role, index, config.ports[service] if first else port(),
                                             port(), config.log_dir))
        for replica in self.replicas:
            replica.env = self._env(replica)

    def of(self, kind: str) -> list[Replica]:
        return [r for r in self.replicas if r.kind == kind]

    def replica(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)

    def target(self, kind: str) -> str:
        """A gRPC target spreading calls (client) or connections (proxy) over every replica of ``kind``."""
        if self.balancing == "proxy":
            return f"127.0.0.1:{self.balancer_ports[kind]}"
        return "ipv4:" + ",".join(r.address for r in self.of(kind))

    @property
    def gateway_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{r.port}" for r in self.of(GATEWAY)]

    def _env(self, replica: Replica) -> dict[str, str]:
        env = self.config.env(replica.service)
        env.update({name: self.target(kind) for name, kind in ADDRESS_SETTINGS.items()})
        env["METRICS_PORT"] = str(replica.metrics_port)
        env["GATEWAY_PORT" if replica.service == GATEWAY else "GRPC_PORT"] = str(replica.port)
        if replica.role:
            env["MAILER_ROLE"] = replica.role
        return env

    def start(self, before_services: Callable[[], None] | None = None) -> None:
        """The database and the broker's vhost, the sandbox, then every replica, ready
        (``before_services`` runs once the vhost exists, before any service does)."""
        self.stack.prepare()
        if before_services is not None:
            before_services()
        self.stack.start_sandbox()
        if self.balancing == "proxy":
            routes = [f"{self.balancer_ports[kind]}=" + ",".join(r.address for r in self.of(kind))
                      for kind in ADDRESS_SETTINGS.values()]
            assert self.config.log_dir is not None
            self.balancer = subprocess.Popen(
                [sys.executable, str(BALANCER), *(arg for route in routes for arg in ("--route", route))],
                stdout=open(self.config.log_dir / "tcp-balancer.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
            for port in self.balancer_ports.values():
                _wait_port(port, self.balancer)
        # In the registry's start-up order (the gateway last), each kind's replicas side by side.
        for kind in dict.fromkeys(r.kind for r in self.replicas):
            for replica in self.of(kind):
                replica.start()
            for replica in self.of(kind):
                replica.wait_ready()

    def stop(self) -> None:
        # The gateways first (no new requests), then the services, then the stand-ins.
        for replica in reversed(self.replicas):
            replica.stop()
        _end(self.balancer, signal.SIGTERM, 10.0)
        _end(self.stack.sandbox_proc, signal.SIGTERM, 10.0)

    def balancer_connections(self) -> dict[str, int]:
        """Connections the TCP balancer handed each replica (after ``stop``; empty without it)."""
        assert self.config.log_dir is not None
        path = self.config.log_dir / "tcp-balancer.log"
        found: dict[str, int] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    found.update(json.loads(line).get("connections", {}))
        return found

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far of each replica, of the sandbox and of the balancer (when there is one)."""
        table = process_table()
        used = {r.name: r.cpu_seconds(table) for r in self.replicas}
        if self.stack.sandbox_proc is not None:
            used["sandbox"] = tree_seconds(table, [self.stack.sandbox_proc.pid])
        if self.balancer is not None:
            used["tcp-balancer"] = tree_seconds(table, [self.balancer.pid])
        return used
