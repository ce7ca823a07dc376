"""The mailer gRPC API: the public outreach API tunnelled as ``Call``, and the export stream."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from coffeeping.common.rpc import GATEWAY, Allow, allow, current_user
from coffeeping.mailer.v1 import mailer_pb2, mailer_pb2_grpc
from coffeeping.types.v1 import export_pb2
from coffeeping_mailer import fence, services
from coffeeping_mailer.errors import ApiError

log = logging.getLogger("coffeeping_mailer.api")

_SERVICE = "/coffeeping.mailer.v1.Mailer/"
POLICY: dict[str, Allow] = {
    _SERVICE + "Ping": allow("auth-gateway", "accounts", "mailer", "reply-watcher", "token-vault", needs_user=False),
    _SERVICE + "Call": allow(GATEWAY),
    _SERVICE + "ExportData": allow("accounts", user_from=["accounts"]),
    _SERVICE + "FenceUser": allow("accounts", user_from=["accounts"]),
}

Operation = Callable[[Engine, str, dict[str, str], dict[str, str], bytes], tuple[int, Any]]

OPERATIONS: dict[str, Operation] = {
    "contacts.create": lambda e, u, p, q, b: services.create_contact(e, u, b),
    "contacts.list": lambda e, u, p, q, b: services.list_contacts(e, u, q),
    "contacts.get": lambda e, u, p, q, b: services.get_contact(e, u, p.get("contact_id", "")),
    "contacts.update": lambda e, u, p, q, b: services.update_contact(e, u, p.get("contact_id", ""), b),
    "contacts.delete": lambda e, u, p, q, b: services.delete_contact(e, u, p.get("contact_id", "")),
    "contacts.import": lambda e, u, p, q, b: services.import_contacts(e, u, b),
    "sequences.create": lambda e, u, p, q, b: services.create_sequence(e, u, b),
    "sequences.list": lambda e, u, p, q, b: services.list_sequences(e, u, q),
    "sequences.get": lambda e, u, p, q, b: services.get_sequence(e, u, p.get("sequence_id", "")),
    "sequences.send": lambda e, u, p, q, b: services.send_sequence(e, u, p.get("sequence_id", ""), b),
    "sequences.pause": lambda e, u, p, q, b: services.pause_sequence(e, u, p.get("sequence_id", "")),
    "sequences.resume": lambda e, u, p, q, b: services.resume_sequence(e, u, p.get("sequence_id", "")),
    "sequences.cancel": lambda e, u, p, q, b: services.cancel_sequence(e, u, p.get("sequence_id", "")),
}


def _response(status: int, body: Any) -> mailer_pb2.ApiResponse:
    data = b"" if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return mailer_pb2.ApiResponse(http_status=status, body=data)


class MailerServicer(mailer_pb2_grpc.MailerServicer):
    def __init__(self, engine: Engine, tombstone_key: bytes) -> None:
        self.engine = engine
        self.tombstone_key = tombstone_key

    def FenceUser(self, request: mailer_pb2.FenceUserRequest,
                  context: grpc.ServicerContext) -> mailer_pb2.FenceUserResponse:
        try:
            fence.fence(self.engine, self.tombstone_key, current_user())
        except DBAPIError as exc:
            log.error("database error", extra={"operation": "FenceUser", "error": type(exc.orig).__name__})
            context.abort(grpc.StatusCode.UNAVAILABLE, "storage unavailable")
        return mailer_pb2.FenceUserResponse()

    def Ping(self, request: export_pb2.PingRequest, context: grpc.ServicerContext) -> export_pb2.PingResponse:
        return export_pb2.PingResponse()

    def Call(self, request: mailer_pb2.ApiRequest, context: grpc.ServicerContext) -> mailer_pb2.ApiResponse:
        operation = OPERATIONS.get(request.operation)
        if operation is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "unknown operation")
        user_id = current_user()
        try:
            if fence.is_fenced(self.engine, self.tombstone_key, user_id):
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, fence.ACCOUNT_DELETED)
            status, body = operation(self.engine, user_id, dict(request.params), dict(request.query),
                                     bytes(request.body))
        except ApiError as exc:
            return _response(exc.status, exc.problem())
        except DBAPIError as exc:
            log.error("database error", extra={"operation": request.operation, "error": type(exc.orig).__name__})
            context.abort(grpc.StatusCode.UNAVAILABLE, "storage unavailable")
        return _response(status, body)

    def ExportData(self, request: export_pb2.ExportRequest,
                   context: grpc.ServicerContext) -> Iterator[export_pb2.ExportRecord]:
        for section, record in services.export_records(self.engine, current_user()):
            yield export_pb2.ExportRecord(section=section, json=json.dumps(record, ensure_ascii=False))
