"""The mailer's gRPC API: typed resource RPCs for contacts and sequences, the export, the fence and the
access log.

Each RPC turns its request into plain values, calls the resource module, and turns the resource dict
it returns into the response message. A refusal is an :class:`ApiError`, answered with its status code
and ``google.rpc`` details; a storage failure is ``UNAVAILABLE``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from coffeeping.common.access_log import BadRequest, Filter, Page, export_json
from coffeeping.common.rpc import GATEWAY, Allow, allow, current_user
from coffeeping.mailer.v1 import mailer_pb2 as pb
from coffeeping.mailer.v1 import mailer_pb2_grpc
from coffeeping.types.v1 import access_pb2, export_pb2
from coffeeping_mailer import access, contacts, export, fence, imports, sequences
from coffeeping_mailer.errors import ApiError, Invalid, account_deleted
from coffeeping_mailer.fields import err, iso

log = logging.getLogger("coffeeping_mailer.api")

_SERVICE = "/coffeeping.mailer.v1.Mailer/"
_RESOURCE_METHODS = (
    "CreateContact", "GetContact", "ListContacts", "UpdateContact", "DeleteContact", "ImportContacts",
    "CreateSequence", "GetSequence", "ListSequences", "SendSequence", "PauseSequence", "ResumeSequence",
    "CancelSequence",
)
POLICY: dict[str, Allow] = {
    _SERVICE + "Ping": allow("auth-gateway", "accounts", "mailer", "reply-watcher", "token-vault", needs_user=False),
    **{_SERVICE + name: allow(GATEWAY) for name in _RESOURCE_METHODS},
    # The signed-in user's access log.
    _SERVICE + "ListAccessEntries": allow(GATEWAY),
    _SERVICE + "SummarizeAccess": allow(GATEWAY),
    _SERVICE + "ExportData": allow("accounts", user_from=["accounts"]),
    _SERVICE + "FenceUser": allow("accounts", user_from=["accounts"]),
}

M = TypeVar("M", bound=Message)
T = TypeVar("T")
Handler = Callable[["MailerServicer", Any, str], Message]


def _values(message: Message) -> dict[str, Any]:
    """The fields set in ``message`` as JSON values (times as RFC 3339 strings)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _message(values: dict[str, Any], message: type[M]) -> M:
    """A resource record (field names as in ``message``; None leaves a field unset, a datetime fills a
    Timestamp) as ``message``. The constructor is ten times cheaper than ``json_format.ParseDict``."""
    return message(**values)


def _page(items: list[dict[str, Any]], next_cursor: str | None, response: type[M], field: str) -> M:
    return response(**{field: items, "next_page_token": next_cursor or ""})


def _checked(parse: Callable[[Any], T], value: Any) -> T:
    """``parse(value)``, its ``BadRequest`` answered as a field violation."""
    try:
        return parse(value)
    except BadRequest as exc:
        raise Invalid([err(exc.field, exc.message)]) from None


def _export_json(value: Any) -> str:
    """JSON for what the standard encoder does not know: the records' datetimes, as the API shows them."""
    if isinstance(value, dt.datetime):
        return iso(value) or ""
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def resource_rpc(handler: Handler) -> Callable[..., Message]:
    """Run ``handler`` for the calling user unless the account is deleted, mapping its refusals."""

    @functools.wraps(handler)
    def rpc(self: MailerServicer, request: Any, context: grpc.ServicerContext) -> Message:
        user_id = current_user()
        try:
            if fence.is_fenced(self.engine, self.tombstone_key, user_id):
                raise account_deleted()
            return handler(self, request, user_id)
        except ApiError as exc:
            context.abort_with_status(exc.status())
        except DBAPIError as exc:
            log.error("database error", extra={"operation": handler.__name__, "error": type(exc.orig).__name__})
            context.abort(grpc.StatusCode.UNAVAILABLE, "storage unavailable")
        raise AssertionError("unreachable")  # abort raises

    return rpc


class MailerServicer(mailer_pb2_grpc.MailerServicer):
    def __init__(self, engine: Engine, tombstone_key: bytes) -> None:
        self.engine = engine
        self.tombstone_key = tombstone_key

    # ------------------------------------------------------------------------------------- contacts
    @resource_rpc
    def CreateContact(self, request: pb.CreateContactRequest, user_id: str) -> pb.Contact:
        return _message(contacts.create_contact(self.engine, user_id, _values(request.contact)), pb.Contact)

    @resource_rpc
    def GetContact(self, request: pb.GetContactRequest, user_id: str) -> pb.Contact:
        return _message(contacts.get_contact(self.engine, user_id, request.contact_id), pb.Contact)

    @resource_rpc
    def ListContacts(self, request: pb.ListContactsRequest, user_id: str) -> pb.ListContactsResponse:
        page = contacts.list_contacts(self.engine, user_id, request.page_size, request.page_token)
        return _page(page["items"], page["next_cursor"], pb.ListContactsResponse, "contacts")

    @resource_rpc
    def UpdateContact(self, request: pb.UpdateContactRequest, user_id: str) -> pb.Contact:
        given = _values(request.contact)
        changes = {path: given.get(path) for path in request.update_mask.paths}
        return _message(contacts.update_contact(self.engine, user_id, request.contact_id, changes), pb.Contact)

    @resource_rpc
    def DeleteContact(self, request: pb.DeleteContactRequest, user_id: str) -> pb.DeleteContactResponse:
        contacts.delete_contact(self.engine, user_id, request.contact_id, self.tombstone_key)
        return pb.DeleteContactResponse()

    @resource_rpc
    def ImportContacts(self, request: pb.ImportContactsRequest, user_id: str) -> pb.ImportContactsResponse:
        return _message(imports.import_contacts(self.engine, user_id, request.csv), pb.ImportContactsResponse)

    # ------------------------------------------------------------------------------------ sequences
    @resource_rpc
    def CreateSequence(self, request: pb.CreateSequenceRequest, user_id: str) -> pb.Sequence:
        return _message(sequences.create_sequence(self.engine, user_id, _values(request)), pb.Sequence)

    @resource_rpc
    def GetSequence(self, request: pb.GetSequenceRequest, user_id: str) -> pb.Sequence:
        return _message(sequences.get_sequence(self.engine, user_id, request.sequence_id), pb.Sequence)

    @resource_rpc
    def ListSequences(self, request: pb.ListSequencesRequest, user_id: str) -> pb.ListSequencesResponse:
        page = sequences.list_sequences(self.engine, user_id, request.page_size, request.page_token,
                                        request.contact_id, request.status)
        return _page(page["items"], page["next_cursor"], pb.ListSequencesResponse, "sequences")

    @resource_rpc
    def SendSequence(self, request: pb.SendSequenceRequest, user_id: str) -> pb.Sequence:
        send_at = _values(request).get("send_at")
        return _message(sequences.send_sequence(self.engine, user_id, request.sequence_id, send_at), pb.Sequence)

    @resource_rpc
    def PauseSequence(self, request: pb.PauseSequenceRequest, user_id: str) -> pb.Sequence:
        return _message(sequences.pause_sequence(self.engine, user_id, request.sequence_id), pb.Sequence)

    @resource_rpc
    def ResumeSequence(self, request: pb.ResumeSequenceRequest, user_id: str) -> pb.Sequence:
        return _message(sequences.resume_sequence(self.engine, user_id, request.sequence_id), pb.Sequence)

    @resource_rpc
    def CancelSequence(self, request: pb.CancelSequenceRequest, user_id: str) -> pb.Sequence:
        return _message(sequences.cancel_sequence(self.engine, user_id, request.sequence_id), pb.Sequence)

    # ------------------------------------------------------------------------- export and the fence
    def ExportData(self, request: export_pb2.ExportRequest,
                   context: grpc.ServicerContext) -> Iterator[export_pb2.ExportRecord]:
        for section, record in export.export_records(self.engine, current_user()):
            yield export_pb2.ExportRecord(section=section,
                                          json=json.dumps(record, ensure_ascii=False, default=_export_json))
        for entry in access.export_entries(self.engine, current_user()):
            yield export_pb2.ExportRecord(section=access.EXPORT_SECTION, json=export_json(entry))

    def FenceUser(self, request: pb.FenceUserRequest, context: grpc.ServicerContext) -> pb.FenceUserResponse:
        try:
            fence.fence(self.engine, self.tombstone_key, current_user())
        except DBAPIError as exc:
            log.error("database error", extra={"operation": "FenceUser", "error": type(exc.orig).__name__})
            context.abort(grpc.StatusCode.UNAVAILABLE, "storage unavailable")
        return pb.FenceUserResponse()

    def Ping(self, request: export_pb2.PingRequest, context: grpc.ServicerContext) -> export_pb2.PingResponse:
        return export_pb2.PingResponse()

    # ---------------------------------------------------------------------------------- the access log
    @resource_rpc
    def ListAccessEntries(self, request: access_pb2.ListAccessEntriesRequest,
                          user_id: str) -> access_pb2.ListAccessEntriesResponse:
        return access.list_entries(self.engine, user_id, _checked(Page.of, request))

    @resource_rpc
    def SummarizeAccess(self, request: access_pb2.SummarizeAccessRequest,
                        user_id: str) -> access_pb2.SummarizeAccessResponse:
        return access.summarize(self.engine, user_id, _checked(Filter.of, request.filter))
