"""The accounts gRPC API."""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Engine

from coffeeping.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from coffeeping.common.rpc import GATEWAY, Allow, allow, current_user
from coffeeping_accounts import services

_SERVICE = "/coffeeping.accounts.v1.Accounts/"
POLICY: dict[str, Allow] = {
    _SERVICE + "GetMe": allow(GATEWAY),
    _SERVICE + "RequestDeletion": allow(GATEWAY),
    _SERVICE + "GetDeletionStatus": allow(GATEWAY),
    _SERVICE + "Export": allow(GATEWAY),
}


def _ts(value) -> Timestamp:  # type: ignore[no-untyped-def]
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


class AccountsServicer(accounts_pb2_grpc.AccountsServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def GetMe(self, request: accounts_pb2.GetMeRequest, context: grpc.ServicerContext) -> accounts_pb2.User:
        user = services.get_or_create_user(self.engine, current_user())
        return accounts_pb2.User(user_id=user.user_id, created_at=_ts(user.created_at))
