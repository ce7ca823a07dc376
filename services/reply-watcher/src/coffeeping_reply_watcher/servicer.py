"""The reply-watcher gRPC API."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import grpc
from sqlalchemy import Engine

from coffeeping.common import access_log
from coffeeping.common.rpc import GATEWAY, Allow, allow, current_user
from coffeeping.types.v1 import access_pb2, export_pb2
from coffeeping.watcher.v1 import watcher_pb2, watcher_pb2_grpc
from coffeeping_reply_watcher import SERVICE, metrics, services
from coffeeping_reply_watcher.services import SCHEMA

log = logging.getLogger(__name__)

_SERVICE = "/coffeeping.watcher.v1.ReplyWatcher/"
POLICY: dict[str, Allow] = {
    # A Gmail push names only an address: the gateway calls without a user after checking the push token.
    _SERVICE + "CheckMailbox": allow(GATEWAY, needs_user=False),
    # The accounts service assembles the export and passes the user it exports.
    _SERVICE + "ExportData": allow("accounts", user_from=["accounts"]),
    _SERVICE + "Ping": allow("auth-gateway", "accounts", "mailer", "reply-watcher", "token-vault", needs_user=False),
    # The signed-in user's access log.
    _SERVICE + "ListAccessEntries": allow(GATEWAY),
    _SERVICE + "SummarizeAccess": allow(GATEWAY),
}
EXPORT_SECTION = "replies"
ACCESS_SECTION = "gmail_access_by_reply_watcher"


class ReplyWatcherServicer(watcher_pb2_grpc.ReplyWatcherServicer):
    def __init__(self, engine: Engine, wake: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.wake = wake

    def CheckMailbox(self, request: watcher_pb2.CheckMailboxRequest,
                     context: grpc.ServicerContext) -> watcher_pb2.CheckMailboxResponse:
        if len(request.email) > 320 or len(request.history_id) > 32:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "email or history_id too long")
        # The mailbox's history id after the change: a push the cursor has already passed is not read again.
        # Anything but digits is ignored (the mailbox is then read, as for a push naming no history id).
        history_id = int(request.history_id) if request.history_id.isdigit() else None
        scheduled = services.schedule_check(self.engine, request.email, history_id)
        metrics.PUSHES.labels("scheduled" if scheduled else "ignored").inc()
        if scheduled and self.wake:
            self.wake()
        log.info("mailbox check requested", extra={"scheduled": scheduled})
        return watcher_pb2.CheckMailboxResponse(scheduled=scheduled)

    def ExportData(self, request: export_pb2.ExportRequest,
                   context: grpc.ServicerContext) -> Iterator[export_pb2.ExportRecord]:
        for record in services.export_replies(self.engine, current_user()):
            yield export_pb2.ExportRecord(section=EXPORT_SECTION, json=services.dumps(record))
        for entry in access_log.export_entries(self.engine, SCHEMA, SERVICE, current_user()):
            yield export_pb2.ExportRecord(section=ACCESS_SECTION, json=access_log.export_json(entry))

    def Ping(self, request: export_pb2.PingRequest, context: grpc.ServicerContext) -> export_pb2.PingResponse:
        return export_pb2.PingResponse()

    def ListAccessEntries(self, request: access_pb2.ListAccessEntriesRequest,
                          context: grpc.ServicerContext) -> access_pb2.ListAccessEntriesResponse:
        with access_log.answered(context):
            return access_log.list_entries(self.engine, SCHEMA, SERVICE, current_user(), access_log.Page.of(request))

    def SummarizeAccess(self, request: access_pb2.SummarizeAccessRequest,
                        context: grpc.ServicerContext) -> access_pb2.SummarizeAccessResponse:
        with access_log.answered(context):
            return access_log.summarize(self.engine, SCHEMA, current_user(), access_log.Filter.of(request.filter))
