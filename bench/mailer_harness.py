"""Stand-ins and processes for the mailer, shared by its tests (tests/integration/mailer) and by the
benchmarks here: a token vault double that answers ``GetAccessToken`` over mTLS with tokens the sandbox
issued, and mailer processes started as in production.

The vault double answers ``GetAccessToken`` with tokens the sandbox's OAuth server really issued for the
user's Google account (and ``FAILED_PRECONDITION`` for a user marked as needing to reconnect), which
is the vault's contract in ``protos/coffeeping/vault/v1/vault.proto``. The mailer cannot tell the difference.
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from service_process import ServiceProcess

from coffeeping.vault.v1 import vault_pb2, vault_pb2_grpc
from coffeeping_sandbox.server import Sandbox

SCOPES = ["gmail.send", "gmail.compose", "gmail.metadata", "userinfo.email"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Vault(vault_pb2_grpc.TokenVaultServicer):
    """``GetAccessToken`` over mTLS with tokens issued by the sandbox for each user's Google account."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.emails: dict[str, str] = {}
        self.disconnected: set[str] = set()
        self.calls = 0
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}

    def connect(self, user_id: str, email: str) -> None:
        with self._lock:
            self.emails[user_id] = email
            self.disconnected.discard(user_id)
            self._forget(user_id)

    def disconnect(self, user_id: str) -> None:
        with self._lock:
            self.disconnected.add(user_id)
            self._forget(user_id)

    def _forget(self, user_id: str) -> None:
        for key in [k for k in self._tokens if k.split("|", 1)[0] == user_id]:
            del self._tokens[key]

    def _token(self, user: str, email: str, wanted: list[str]) -> tuple[str, float]:
        """The user's token for ``wanted`` (short scope names), issued by the sandbox when none is fresh;
        call it holding the lock."""
        key = f"{user}|{','.join(wanted)}"
        cached = self._tokens.get(key)
        if cached is None or cached[1] < time.time() + 120:
            issued = self.sandbox.oauth.issue_tokens(email=email, scopes=wanted, offline=False)
            cached = (issued["access_token"], time.time() + int(issued["expires_in"]))
            self._tokens[key] = cached
        return cached

    def prime(self, *scope_sets: list[str]) -> None:
        """Issue every connected user's tokens now, for the whole grant and each of ``scope_sets`` (short
        names): a Gmail stand-in forked after this (``gmail_process``) knows only tokens issued before."""
        with self._lock:
            for user, email in self.emails.items():
                for wanted in (SCOPES, *(sorted(scopes) for scopes in scope_sets)):  # as GetAccessToken keys them
                    self._token(user, email, wanted)

    def GetAccessToken(self, request: Any, context: grpc.ServicerContext) -> Any:
        names = context.auth_context().get("x509_common_name") or [b""]
        if names[0].decode() not in ("mailer", "reply-watcher"):
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "caller not allowed")
        user = dict(context.invocation_metadata()).get("x-user-id", "")
        # A request may name the scopes the token must carry (and only those), as the vault's contract says.
        wanted = sorted({s.rsplit("/", 1)[-1] for s in getattr(request, "scopes", [])}) or SCOPES
        if not set(wanted) <= set(SCOPES):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "scope_not_granted:" + ",".join(wanted))
        with self._lock:
            self.calls += 1
            if user in self.disconnected or user not in self.emails:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "needs reconnect")
            email = self.emails[user]
            cached = self._token(user, email, wanted)
        expires = Timestamp()
        expires.FromDatetime(dt.datetime.fromtimestamp(cached[1], dt.UTC).replace(tzinfo=None))
        return vault_pb2.AccessToken(access_token=cached[0], expires_at=expires, email=email,
                                     scopes=[f"https://www.googleapis.com/auth/{s}" for s in wanted])


class MailerProcess(ServiceProcess):
    """The mailer (``python -m coffeeping_mailer``) on the ``GRPC_PORT`` of ``env``."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__("coffeeping_mailer", env, int(env["GRPC_PORT"]), log_path)
