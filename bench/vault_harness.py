"""Helpers for the token-vault tests: vault processes, mTLS stubs per calling service, and grants made
through the sandbox's consent screen."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import grpc
import psycopg
import requests
from service_process import stop_process

from coffeeping.common.rpc import TlsFiles, call_metadata, channel
from coffeeping.vault.v1 import vault_pb2, vault_pb2_grpc
from coffeeping_sandbox.server import Sandbox

CLIENT_ID = "vault-test.apps.googleusercontent.com"
CLIENT_SECRET = "GOCSPX-vault-test-secret"
REDIRECT_URI = "http://localhost:8080/v1/gmail/callback"
KMS_KEY = "projects/cp-test/locations/global/keyRings/vault/cryptoKeys/tokens"
SCOPES = ("https://www.googleapis.com/auth/gmail.send", "https://www.googleapis.com/auth/gmail.compose",
          "https://www.googleapis.com/auth/gmail.metadata", "https://www.googleapis.com/auth/userinfo.email")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class VaultDb:
    name: str
    admin_url: str
    app_url: str

    def rows(self, sql: str, *params: object) -> list[tuple]:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def execute(self, sql: str, *params: object) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql, params)


@dataclass
class VaultProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class VaultHarness:
    db: VaultDb
    google: Sandbox
    certs: Path
    prefix: str
    amqp_url: str  # the tests' own login (the broker's operator, which may sign as accounts)
    vault_amqp_url: str  # the vault processes' login
    logs: Path
    local_key: str = field(default_factory=lambda: base64.b64encode(secrets.token_bytes(32)).decode())
    processes: list[VaultProcess] = field(default_factory=list)
    _channels: dict[tuple[str, int], grpc.Channel] = field(default_factory=dict)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": self.db.app_url,
            "RABBITMQ_URL": self.vault_amqp_url,
            "MESSAGING_PREFIX": self.prefix,
            "TOMBSTONE_KEY": "test-tombstone-key-" + "x" * 32,
            "TLS_CA_CERT": str(self.certs / "ca.pem"),
            "TLS_CERT": str(self.certs / "token-vault.pem"),
            "TLS_KEY": str(self.certs / "token-vault-key.pem"),
            "GOOGLE_CLIENT_ID": CLIENT_ID,
            "GOOGLE_CLIENT_SECRET": CLIENT_SECRET,
            "GOOGLE_TOKEN_URL": f"{self.google.google_url}/token",
            "GOOGLE_REVOKE_URL": f"{self.google.google_url}/revoke",
            "GOOGLE_USERINFO_URL": f"{self.google.google_url}/oauth2/v3/userinfo",
            "KMS_ENDPOINT": self.google.kms_addr,
            "KMS_KEY_NAME": KMS_KEY,
            "TOKEN_VAULT_LOCAL_KEY": self.local_key,
            "TOKEN_VAULT_KMS_TIMEOUT_S": "2",
            "TOKEN_VAULT_GOOGLE_TIMEOUT_S": "5",
            "SHUTDOWN_GRACE_S": "2",
            # Every process claims deletions' revocations: a short cap keeps retries a second apart, so a
            # test sees many failed attempts (more than the queue's delivery limit) in seconds.
            "TOKEN_VAULT_REVOKE_RETRY_CAP_S": "1",
        }
        env.update(overrides)
        return {k: v for k, v in env.items() if v is not None}

    def start(self, **overrides: str) -> VaultProcess:
        port = free_port()
        log = self.logs / f"token-vault-{len(self.processes)}.log"
        env = self.env(GRPC_PORT=str(port), **overrides)
        proc = subprocess.Popen([sys.executable, "-m", "coffeeping_vault"], env=env,
                                stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vault exited with {proc.returncode}: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("vault did not start")
            time.sleep(0.1)
        running = VaultProcess(proc, port, log)
        self.processes.append(running)
        return running

    def stub(self, caller: str, process: VaultProcess | None = None) -> vault_pb2_grpc.TokenVaultStub:
        target = process or self.processes[0]
        key = (caller, target.port)
        if key not in self._channels:
            tls = TlsFiles(self.certs / "ca.pem", self.certs / f"{caller}.pem", self.certs / f"{caller}-key.pem")
            self._channels[key] = channel(f"127.0.0.1:{target.port}", tls)
        return vault_pb2_grpc.TokenVaultStub(self._channels[key])

    # -- a user and a grant ---------------------------------------------------------------------------
    def authorize(self, email: str, scopes: tuple[str, ...] = SCOPES, prompt: bool = True, **consent: object
                  ) -> tuple[str, str]:
        """Run the consent screen in the sandbox; return (code, verifier)."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        self.google.oauth.set_consent(email=email, **consent)  # type: ignore[arg-type]
        params = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI, "response_type": "code",
                  "scope": " ".join(scopes), "access_type": "offline", "include_granted_scopes": "true",
                  "code_challenge": challenge, "code_challenge_method": "S256", "state": "x"}
        if prompt:
            params["prompt"] = "consent"
        reply = requests.get(f"{self.google.google_url}/o/oauth2/v2/auth?{urlencode(params)}",
                             allow_redirects=False, timeout=10)
        assert reply.status_code == 302, reply.text
        query = parse_qs(urlsplit(reply.headers["Location"]).query)
        assert "code" in query, query
        return query["code"][0], verifier

    def connect(self, user: str, email: str, process: VaultProcess | None = None, **consent: object
                ) -> vault_pb2.GrantInfo:
        code, verifier = self.authorize(email, **consent)
        return self.stub("auth-gateway", process).CompleteConnection(
            vault_pb2.CompleteConnectionRequest(code=code, code_verifier=verifier, redirect_uri=REDIRECT_URI),
            metadata=call_metadata(user), timeout=30)

    def access_token(self, user: str, caller: str = "mailer", process: VaultProcess | None = None,
                     scopes: tuple[str, ...] = ()) -> vault_pb2.AccessToken:
        return self.stub(caller, process).GetAccessToken(vault_pb2.GetAccessTokenRequest(scopes=list(scopes)),
                                                         metadata=call_metadata(user), timeout=30)

    def grant_info(self, user: str) -> vault_pb2.GrantInfo:
        return self.stub("auth-gateway").GetGrantInfo(vault_pb2.GetGrantInfoRequest(), metadata=call_metadata(user),
                                                      timeout=10)

    def expire(self, user: str) -> None:
        """Make the stored access tokens look old (their expiry is metadata, kept in clear)."""
        self.db.execute("UPDATE vault.grants SET access_expires_at = now() - interval '1 minute' WHERE user_id = %s",
                        user)
        self.db.execute("UPDATE vault.scoped_tokens SET access_expires_at = now() - interval '1 minute' "
                        "WHERE user_id = %s", user)
        self.settle()

    @staticmethod
    def settle() -> None:
        """Let the vault processes hear of a change made behind their backs.

        A trigger notifies every process of any grant change and each drops its in-memory tokens for
        the user when the notification arrives, milliseconds after the commit; this wait is a wide
        margin for that delivery (it is not a measurement)."""
        time.sleep(0.3)

    def refresh_tokens(self, email: str) -> list[str]:
        return [t["token"] for g in self.google.oauth.grants_snapshot() if g["email"] == email
                for t in g["refresh_tokens"]]


def new_user(tag: str) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"user_{tag}_{suffix}", f"{tag}-{suffix}@example.com"


