"""The accounts gRPC API."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Engine

from coffeeping.accounts.v1 import accounts_pb2, accounts_pb2_grpc
from coffeeping.common.rpc import GATEWAY, Allow, allow, current_user
from coffeeping_accounts import deletions, export, services

log = logging.getLogger(__name__)

_SERVICE = "/coffeeping.accounts.v1.Accounts/"
POLICY: dict[str, Allow] = {
    _SERVICE + "GetMe": allow(GATEWAY),
    # The gateway asserts the user for the API and for a verified Clerk webhook alike.
    _SERVICE + "RequestDeletion": allow(GATEWAY),
    _SERVICE + "GetDeletionStatus": allow(GATEWAY),
    _SERVICE + "Export": allow(GATEWAY),
}
_SOURCES = ("api", "clerk_webhook")
_DELETED = "account_deleted"


def _ts(value) -> Timestamp:  # type: ignore[no-untyped-def]
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _status(status: deletions.Status) -> accounts_pb2.DeletionStatus:
    reply = accounts_pb2.DeletionStatus(
        deletion_id=status.deletion_id, state=status.state, requested_at=_ts(status.requested_at)
    )
    if status.completed_at is not None:
        reply.completed_at.CopyFrom(_ts(status.completed_at))
    for step in status.steps:
        reply.steps.add(service=step.service, step=step.step, state=step.state, attempts=step.attempts,
                        updated_at=_ts(step.updated_at), error=step.error, note=step.note)
    return reply


class AccountsServicer(accounts_pb2_grpc.AccountsServicer):
    def __init__(self, engine: Engine, known: services.KnownUsers, sources: export.Sources | None = None) -> None:
        self.engine = engine
        self.known = known
        self.sources = sources

    def GetMe(self, request: accounts_pb2.GetMeRequest, context: grpc.ServicerContext) -> accounts_pb2.User:
        try:
            user = services.me(self.engine, self.known, current_user())
        except deletions.AccountDeleted:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, _DELETED)
        return accounts_pb2.User(user_id=user.user_id, created_at=_ts(user.created_at))

    def RequestDeletion(self, request: accounts_pb2.RequestDeletionRequest,
                        context: grpc.ServicerContext) -> accounts_pb2.DeletionStatus:
        source = request.source or "api"
        if source not in _SOURCES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown source")
        if len(request.idempotency_key) > 200:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "idempotency key too long")
        user_id = current_user()
        status = deletions.request_deletion(self.engine, user_id, source, request.idempotency_key)
        self.known.invalidate(user_id)  # the other processes hear of it from the notification
        if status.state != "completed" and self.sources is not None:
            # The fence: committed at the mailer before the caller hears "accepted". Should the mailer
            # be unreachable, the deletion stands (its event fences the mailer too) and a retry of the
            # request answers once the fence is confirmed.
            try:
                self.sources.fence(user_id)
            except grpc.RpcError as exc:
                log.warning("deletion fence not confirmed", extra={"deletion_id": status.deletion_id,
                                                                   "code": str(exc.code())})
                context.abort(grpc.StatusCode.UNAVAILABLE, "fence_unconfirmed")
        return _status(status)

    def GetDeletionStatus(self, request: accounts_pb2.GetDeletionStatusRequest,
                          context: grpc.ServicerContext) -> accounts_pb2.DeletionStatus:
        status = deletions.latest_status(self.engine, current_user())
        if status is None:
            return accounts_pb2.DeletionStatus(state="none")
        return _status(status)

    def Export(self, request: accounts_pb2.ExportRequest,
               context: grpc.ServicerContext) -> Iterator[accounts_pb2.ExportChunk]:
        if request.format not in ("", "json"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "format must be json")
        user_id = current_user()
        try:
            user = services.find_user(self.engine, user_id)
        except deletions.AccountDeleted:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, _DELETED)
        profile = {"user_id": user_id,
                   "created_at": export.stamp(user.created_at) if user else None}
        sources = self.sources.all() if self.sources is not None else []
        try:
            for chunk in export.document(user_id, profile, sources):
                yield accounts_pb2.ExportChunk(data=chunk)
        except export.ExportFailed as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the {exc} service could not export its data")
