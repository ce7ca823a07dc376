"""The mailer gRPC API."""

from __future__ import annotations

import grpc

from coffeeping.common.rpc import Allow, allow
from coffeeping.types.v1 import export_pb2
from coffeeping.mailer.v1 import mailer_pb2_grpc

_SERVICE = "/coffeeping.mailer.v1.Mailer/"
POLICY: dict[str, Allow] = {
    _SERVICE + "Ping": allow("auth-gateway", "accounts", "mailer", "reply-watcher", "token-vault", needs_user=False),
}


class MailerServicer(mailer_pb2_grpc.MailerServicer):
    def Ping(self, request: export_pb2.PingRequest, context: grpc.ServicerContext) -> export_pb2.PingResponse:
        return export_pb2.PingResponse()
