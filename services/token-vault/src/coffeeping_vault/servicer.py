"""The token-vault gRPC API."""

from __future__ import annotations

import grpc

from coffeeping.common.rpc import Allow, allow
from coffeeping.types.v1 import export_pb2
from coffeeping.vault.v1 import vault_pb2, vault_pb2_grpc

_SERVICE = "/coffeeping.vault.v1.TokenVault/"
POLICY: dict[str, Allow] = {
    _SERVICE + "GetGrantInfo": allow("auth-gateway", "accounts", user_from=["auth-gateway", "accounts"]),
    _SERVICE + "Ping": allow("auth-gateway", "accounts", "mailer", "reply-watcher", "token-vault", needs_user=False),
}


class TokenVaultServicer(vault_pb2_grpc.TokenVaultServicer):
    def Ping(self, request: export_pb2.PingRequest, context: grpc.ServicerContext) -> export_pb2.PingResponse:
        return export_pb2.PingResponse()

    def GetGrantInfo(self, request: vault_pb2.GetGrantInfoRequest, context: grpc.ServicerContext) -> vault_pb2.GrantInfo:
        return vault_pb2.GrantInfo(connected=False)
