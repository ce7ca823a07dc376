"""The reply-watcher gRPC API."""

from __future__ import annotations

import grpc

from coffeeping.common.rpc import Allow, allow
from coffeeping.types.v1 import export_pb2
from coffeeping.watcher.v1 import watcher_pb2_grpc

_SERVICE = "/coffeeping.watcher.v1.ReplyWatcher/"
POLICY: dict[str, Allow] = {
    _SERVICE + "Ping": allow("auth-gateway", "accounts", "mailer", "reply-watcher", "token-vault", needs_user=False),
}


class ReplyWatcherServicer(watcher_pb2_grpc.ReplyWatcherServicer):
    def Ping(self, request: export_pb2.PingRequest, context: grpc.ServicerContext) -> export_pb2.PingResponse:
        return export_pb2.PingResponse()
