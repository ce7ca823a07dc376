"""gRPC clients of the other services.

Channels are created lazily on first use, so each gunicorn worker makes its own after the fork
(gRPC channels do not survive ``fork``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import grpc

from coffeeping.accounts.v1 import accounts_pb2_grpc
from coffeeping.common.rpc import TlsFiles, call_metadata, channel
from coffeeping.mailer.v1 import mailer_pb2_grpc
from coffeeping.vault.v1 import vault_pb2_grpc
from coffeeping.watcher.v1 import watcher_pb2_grpc
from coffeeping_gateway.config import Settings

_STUBS = {
    "accounts": ("accounts_addr", accounts_pb2_grpc.AccountsStub),
    "vault": ("vault_addr", vault_pb2_grpc.TokenVaultStub),
    "mailer": ("mailer_addr", mailer_pb2_grpc.MailerStub),
    "watcher": ("watcher_addr", watcher_pb2_grpc.ReplyWatcherStub),
}


class Clients:
    def __init__(self, settings: Settings, tls: TlsFiles) -> None:
        self.settings = settings
        self.tls = tls
        self._lock = threading.Lock()
        self._stubs: dict[str, Any] = {}
        self._channels: dict[str, grpc.Channel] = {}

    def stub(self, name: str) -> Any:
        stub = self._stubs.get(name)
        if stub is None:
            with self._lock:
                stub = self._stubs.get(name)
                if stub is None:
                    attr, factory = _STUBS[name]
                    chan = channel(getattr(self.settings, attr), self.tls)
                    self._channels[name] = chan
                    stub = self._stubs[name] = factory(chan)
        return stub

    def channel(self, name: str) -> grpc.Channel:
        self.stub(name)
        return self._channels[name]

    @property
    def accounts(self) -> accounts_pb2_grpc.AccountsStub:
        return self.stub("accounts")

    @property
    def vault(self) -> vault_pb2_grpc.TokenVaultStub:
        return self.stub("vault")

    @property
    def mailer(self) -> mailer_pb2_grpc.MailerStub:
        return self.stub("mailer")

    @property
    def watcher(self) -> watcher_pb2_grpc.ReplyWatcherStub:
        return self.stub("watcher")

    def metadata(self, user_id: str | None) -> Iterable[tuple[str, str]]:
        return call_metadata(user_id)
