"""Start the whole system locally: the dev sandbox (unless ``COFFEEPING_SANDBOX=off``) and the five
services as child processes, with their settings. Used by ``deploy/run.sh`` and by the end-to-end tests.

Development secrets (the vault's local key, the OAuth state secret, the webhook secret) are created
once in ``var/dev-secrets.env`` and never printed.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from bootstrap_broker import (  # noqa: E402
    DEFAULT_MANAGEMENT_URL,
    LOGINS,
    bootstrap_broker,
    delete_broker,
    password_variable,
    service_url,
)
from bootstrap_db import CONTAINER_SECRETS, DEFAULT_ADMIN_URL, bootstrap, read_env_file, role_url  # noqa: E402

from coffeeping.common import services  # noqa: E402
from coffeeping.common.config import problems  # noqa: E402
from coffeeping.common.rpc import RECONNECT_WITHIN_S  # noqa: E402

# name: (module, schema or None, default port), from the one registry.
SERVICES = {s.name: (s.package, s.schema, s.port) for s in services.ALL}
GOOGLE_CLIENT_ID = "coffeeping-dev.apps.googleusercontent.com"
# Gmail push through the sandbox's Pub/Sub: the topic Gmail publishes to, and the push subscription's
# OIDC identity (in production: the topic, the audience and the service account you configured).
PUSH_TOPIC = "projects/coffeeping-dev/topics/gmail-push"
PUSH_SERVICE_ACCOUNT = "gmail-push@coffeeping-dev.iam.gserviceaccount.com"
SANDBOX_PORTS = {"clerk": 8701, "google": 8702, "kms": 8703}
# Each process's Prometheus port on this machine (in a container or a pod every one uses 9090).
METRICS_PORTS = {name: 9101 + index for index, name in enumerate(SERVICES)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dev_secrets(path: Path) -> dict[str, str]:
    """Local development secrets, generated on first use and kept in a 0600 file."""
    values = read_env_file(path)
    wanted = {
        "TOKEN_VAULT_LOCAL_KEY": lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
        "OAUTH_STATE_SECRET": lambda: secrets.token_urlsafe(48),
        "CLERK_WEBHOOK_SECRET": lambda: "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
        "GOOGLE_CLIENT_SECRET": lambda: "dev-" + secrets.token_urlsafe(24),
        "TOMBSTONE_KEY": lambda: secrets.token_urlsafe(48),
        **{password_variable(login): (lambda: secrets.token_urlsafe(24)) for login in LOGINS},
    }
    changed = False
    for key, make in wanted.items():
        if key not in values:
            values[key] = make()
            changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(f"{k}={v}\n" for k, v in values.items()))
    return values


@dataclass
class StackConfig:
    var_dir: Path = ROOT / "var"
    database: str = "coffeeping"
    admin_url: str = os.environ.get("ADMIN_DATABASE_URL", DEFAULT_ADMIN_URL)
    # The broker's host and port (its credentials are not used: each service gets its own login on the
    # deployment's vhost, created through the management API by ``bootstrap_broker``).
    rabbitmq_url: str = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
    rabbitmq_management_url: str = os.environ.get("RABBITMQ_MANAGEMENT_URL", DEFAULT_MANAGEMENT_URL)
    rabbitmq_vhost: str = os.environ.get("RABBITMQ_VHOST", "coffeeping")
    messaging_prefix: str = "coffeeping"
    sandbox: bool = os.environ.get("COFFEEPING_SANDBOX", "on") != "off"
    ports: dict[str, int] = field(default_factory=lambda: {k: v[2] for k, v in SERVICES.items()})
    sandbox_ports: dict[str, int] = field(default_factory=lambda: dict(SANDBOX_PORTS))
    metrics_ports: dict[str, int] = field(default_factory=lambda: dict(METRICS_PORTS))
    extra_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    # The gateway serves the web console against the sandbox's Clerk stand-in, and Google's consent comes
    # back to it (run.py turns it on; the tests' shared stack keeps the API-only APP_URL).
    console: bool = False
    # Without the sandbox, the operator's environment: every application setting comes from here as given.
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def __post_init__(self) -> None:
        if not self.sandbox and self.environ.get("GATEWAY_PORT"):
            self.ports = {**self.ports, "auth-gateway": int(self.environ["GATEWAY_PORT"])}

    @classmethod
    def ephemeral(cls, var_dir: Path, database: str, prefix: str) -> StackConfig:
        """Free ports everywhere: for tests that run beside a developer's own stack."""
        return cls(
            var_dir=var_dir,
            database=database,
            messaging_prefix=prefix,
            rabbitmq_vhost=prefix,
            ports={name: free_port() for name in SERVICES},
            sandbox_ports={name: free_port() for name in SANDBOX_PORTS},
            metrics_ports={name: free_port() for name in SERVICES},
            log_dir=var_dir / "logs",
        )

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['auth-gateway']}"

    def metrics_url(self, service: str) -> str:
        """Where ``service``'s process serves its Prometheus metrics."""
        return f"http://127.0.0.1:{self.metrics_ports[service]}/metrics"

    @property
    def google_url(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_ports['google']}"

    @property
    def clerk_url(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_ports['clerk']}"

    @property
    def console_url(self) -> str:
        """The web console, served by the gateway on its own origin."""
        return self.gateway_url

    def console_env(self) -> dict[str, str]:
        """The gateway's console settings against the sandbox (docs/CONSOLE.md)."""
        return {
            "CONSOLE_URL": self.console_url,
            "CLERK_SIGN_IN_URL": f"{self.clerk_url}/sign-in",
            "CLERK_FRONTEND_API": self.clerk_url,
            "APP_URL": f"{self.console_url}/settings",
            "CORS_ALLOWED_ORIGINS": f"http://localhost:3000,{self.console_url}",
            "CLERK_AUTHORIZED_PARTIES": f"http://localhost:3000,{self.console_url}",
        }

    @property
    def redirect_uri(self) -> str:
        return f"{self.gateway_url}/v1/gmail/callback"

    @property
    def push_endpoint(self) -> str:
        return f"{self.gateway_url}/v1/webhooks/gmail"

    def sandbox_env(self) -> dict[str, str]:
        google = self.google_url
        return {
            "CLERK_JWKS_URL": f"{self.clerk_url}/.well-known/jwks.json",
            "CLERK_ISSUER": self.clerk_url,
            "CLERK_AUTHORIZED_PARTIES": "http://localhost:3000",
            "GOOGLE_AUTH_URL": f"{google}/o/oauth2/v2/auth",
            "GOOGLE_TOKEN_URL": f"{google}/token",
            "GOOGLE_REVOKE_URL": f"{google}/revoke",
            "GOOGLE_USERINFO_URL": f"{google}/oauth2/v3/userinfo",
            "GMAIL_API_ENDPOINT": google,
            "GOOGLE_OIDC_CERTS_URL": f"{google}/oauth2/v1/certs",
            "GMAIL_PUSH_TOPIC": PUSH_TOPIC,
            "GMAIL_PUSH_AUDIENCE": self.push_endpoint,
            "GMAIL_PUSH_SERVICE_ACCOUNT": PUSH_SERVICE_ACCOUNT,
            "KMS_ENDPOINT": f"127.0.0.1:{self.sandbox_ports['kms']}",
            "KMS_KEY_NAME": "projects/coffeeping-dev/locations/global/keyRings/coffeeping/cryptoKeys/token-vault",
        }

    def env(self, service: str) -> dict[str, str]:
        """What the run command hands ``service``: where things are on this machine (its ports, the other
        services' addresses, its certificates, its database and broker logins), then, with the sandbox,
        the development values, secrets and stand-in endpoints; without it, the operator's environment as
        it is, nothing invented (``settings_problems`` names what it lacks)."""
        _, schema, _ = SERVICES[service]
        certs = self.var_dir / "certs"
        here = {
            "TLS_CA_CERT": str(certs / "ca.pem"),
            "TLS_CERT": str(certs / f"{service}.pem"),
            "TLS_KEY": str(certs / f"{service}-key.pem"),
            "MESSAGING_PREFIX": self.messaging_prefix,
            "ACCOUNTS_GRPC_ADDR": f"127.0.0.1:{self.ports['accounts']}",
            "TOKEN_VAULT_GRPC_ADDR": f"127.0.0.1:{self.ports['token-vault']}",
            "MAILER_GRPC_ADDR": f"127.0.0.1:{self.ports['mailer']}",
            "REPLY_WATCHER_GRPC_ADDR": f"127.0.0.1:{self.ports['reply-watcher']}",
            "METRICS_PORT": str(self.metrics_ports[service]),
        }
        if schema:
            here["RABBITMQ_URL"] = self.broker_url(service)
            # Development: the roles' passwords default to <role>-dev-password (deploy/bootstrap_db.py).
            here["DATABASE_URL"] = role_url(self.admin_url, self.database, f"cp_{schema}", dev=True)
            here["GRPC_PORT"] = str(self.ports[service])
        else:
            here["GATEWAY_PORT"] = str(self.ports[service])
        if not self.sandbox:
            return {**self.environ, "PYTHONUNBUFFERED": "1", **here, **self.extra_env}
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/root"),
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
            **here,
            "GOOGLE_CLIENT_ID": GOOGLE_CLIENT_ID,
            "GOOGLE_REDIRECT_URI": self.redirect_uri,
            "APP_URL": "http://localhost:3000",
            "CORS_ALLOWED_ORIGINS": "http://localhost:3000",
            "MAILER_SCHEDULER_INTERVAL_S": "1",
            "REPLY_WATCHER_POLL_INTERVAL_S": "5",
            **self.sandbox_env(),
        }
        # Each process gets its own secrets only, as each container and pod does.
        secrets_ = dev_secrets(self.var_dir / "dev-secrets.env")
        env.update({name: secrets_[name] for name in CONTAINER_SECRETS[service]})
        if not schema:
            env["COFFEEPING_ENV"] = "development"
            if self.console:
                env.update(self.console_env())
        env.update(self.extra_env)
        return env

    def settings_problems(self) -> list[str]:
        """What each service would refuse to start with, as ``service: problem`` (empty: all can start)."""
        found = []
        for name, (module, _, _) in SERVICES.items():
            settings = importlib.import_module(f"{module}.config").Settings
            found += [f"{name}: {problem}" for problem in problems(settings, self.env(name))]
        return found

    def broker_passwords(self) -> dict[str, str]:
        secrets_ = dev_secrets(self.var_dir / "dev-secrets.env")
        return {login: secrets_[password_variable(login)] for login in LOGINS}

    def broker_url(self, service: str) -> str:
        """The service's own login on the deployment's vhost."""
        return service_url(self.rabbitmq_url, self.rabbitmq_vhost, self.messaging_prefix, service,
                           self.broker_passwords()[service])


def remove_deployment(config: StackConfig) -> None:
    """Drop an ephemeral stack's database and broker vhost (benchmarks, after ``Stack.stop``)."""
    import psycopg
    from psycopg import sql

    with contextlib.suppress(psycopg.Error), psycopg.connect(config.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(config.database)))
    with contextlib.suppress(Exception):
        delete_broker(config.rabbitmq_management_url, config.rabbitmq_vhost, config.messaging_prefix)


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.sandbox_proc: subprocess.Popen[bytes] | None = None

    def prepare(self) -> None:
        from coffeeping.common.certs import ensure

        ensure(self.config.var_dir / "certs")
        dev_secrets(self.config.var_dir / "dev-secrets.env")
        bootstrap(self.config.admin_url, self.config.database, dev=True)
        bootstrap_broker(self.config.rabbitmq_management_url, self.config.rabbitmq_vhost,
                         self.config.messaging_prefix, self.config.broker_passwords())

    def _output(self, name: str) -> int | object:
        if self.config.log_dir is None:
            return None  # inherit the terminal
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        return open(self.config.log_dir / f"{name}.log", "ab")  # noqa: SIM115

    def start_sandbox(self) -> None:
        secret = dev_secrets(self.config.var_dir / "dev-secrets.env")["GOOGLE_CLIENT_SECRET"]
        ports = self.config.sandbox_ports
        cmd = [
            sys.executable, "-m", "coffeeping_sandbox",
            "--google-port", str(ports["google"]), "--kms-port", str(ports["kms"]),
            "--clerk-port", str(ports["clerk"]),
            "--client", f"{GOOGLE_CLIENT_ID}:{secret}:{self.config.redirect_uri}",
            "--pubsub-push", f"topic={PUSH_TOPIC},endpoint={self.config.push_endpoint},"
                             f"audience={self.config.push_endpoint},service_account={PUSH_SERVICE_ACCOUNT}",
        ]
        out = self._output("sandbox")
        self.sandbox_proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)  # type: ignore[arg-type]
        _wait_port(ports["google"], self.sandbox_proc)
        _wait_port(ports["clerk"], self.sandbox_proc)

    def start_service(self, name: str) -> subprocess.Popen[bytes]:
        module = SERVICES[name][0]
        out = self._output(name)
        proc = subprocess.Popen([sys.executable, "-m", module], env=self.config.env(name), stdout=out,  # type: ignore[arg-type]
                                stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def restart_service(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop ``name`` (with ``sig``), start it again and wait until the other services reach it: its port
        open, then the longest the others' channels take to try a replica again (``RECONNECT_WITHIN_S``)."""
        self.stop_service(name, sig=sig)
        self.start_and_wait(name)

    def start_and_wait(self, name: str) -> None:
        _wait_port(self.config.ports[name], self.start_service(name))
        time.sleep(RECONNECT_WITHIN_S)

    def start(self) -> None:
        if self.config.sandbox:
            self.start_sandbox()
        for name in SERVICES:
            self.start_service(name)
        for name in SERVICES:
            _wait_port(self.config.ports[name], self.procs[name])

    def stop_service(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        _end(self.procs.get(name), sig, timeout)

    def stop(self) -> None:
        # The gateway first (no new requests), then the services, then their stand-ins.
        for name in reversed(list(SERVICES)):
            self.stop_service(name)
        _end(self.sandbox_proc, signal.SIGTERM, 10.0)


def _end(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    """Send ``sig`` to ``proc`` if it still runs and wait for it; kill it if it outlives ``timeout``."""
    if proc and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open within {timeout}s")
