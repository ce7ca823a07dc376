"""Contacts and sequences: each route validates its document, makes one typed call to the mailer, and
answers the resource it returns (see ``coffeeping_gateway.schemas``).

The mailer's refusals arrive as status codes with ``google.rpc`` details and become problem documents in
``coffeeping_gateway.web.rpc_problem``, the gateway's one mapping.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request
from pydantic import BaseModel

from coffeeping.mailer.v1 import mailer_pb2 as pb
from coffeeping.mailer.v1 import mailer_pb2_grpc
from coffeeping_gateway.api import (
    content,
    from_message,
    parse,
    parse_query,
    query_parameters,
    respond,
    to_message,
)
from coffeeping_gateway.schemas import (
    Contact,
    ContactInput,
    ContactPage,
    ImportResult,
    PageQuery,
    SendInput,
    Sequence,
    SequenceInput,
    SequencePage,
    SequenceQuery,
)
from coffeeping_gateway.web import call, clients, rate_limited

bp = Blueprint("outreach", __name__)


def _mailer() -> mailer_pb2_grpc.MailerStub:
    return clients().mailer


def _sequence(message: pb.Sequence, status: int = 200) -> Response:
    return respond(from_message(Sequence, message), status)


# ------------------------------------------------------------------------------------------- contacts
@bp.post("/v1/contacts")
def create_contact() -> Response:
    contact = to_message(parse(ContactInput), pb.Contact())
    created = call(_mailer().CreateContact, pb.CreateContactRequest(contact=contact))
    return respond(from_message(Contact, created), 201)


@bp.get("/v1/contacts")
def list_contacts() -> Response:
    query = parse_query(PageQuery)
    page = call(_mailer().ListContacts, pb.ListContactsRequest(page_size=query.limit, page_token=query.cursor))
    return respond(ContactPage(items=[from_message(Contact, c) for c in page.contacts],
                               next_cursor=page.next_page_token or None))


@bp.post("/v1/contacts/import")
@rate_limited(per_minute=6, burst=3)
def import_contacts() -> Response:
    data = next(iter(request.files.values())).read() if request.files else request.get_data(cache=False)
    result = call(_mailer().ImportContacts, pb.ImportContactsRequest(csv=data))
    return respond(from_message(ImportResult, result))


@bp.get("/v1/contacts/<contact_id>")
def get_contact(contact_id: str) -> Response:
    return respond(from_message(Contact, call(_mailer().GetContact, pb.GetContactRequest(contact_id=contact_id))))


@bp.patch("/v1/contacts/<contact_id>")
def update_contact(contact_id: str) -> Response:
    changes = parse(ContactInput)
    request_ = pb.UpdateContactRequest(contact_id=contact_id, contact=to_message(changes, pb.Contact()))
    request_.update_mask.paths.extend(sorted(changes.model_fields_set))
    return respond(from_message(Contact, call(_mailer().UpdateContact, request_)))


@bp.delete("/v1/contacts/<contact_id>")
def delete_contact(contact_id: str) -> Response:
    call(_mailer().DeleteContact, pb.DeleteContactRequest(contact_id=contact_id))
    return Response(status=204)


# ------------------------------------------------------------------------------------------ sequences
@bp.post("/v1/sequences")
def create_sequence() -> Response:
    created = call(_mailer().CreateSequence, to_message(parse(SequenceInput), pb.CreateSequenceRequest()))
    return _sequence(created, 201)


@bp.get("/v1/sequences")
def list_sequences() -> Response:
    query = parse_query(SequenceQuery)
    page = call(_mailer().ListSequences, pb.ListSequencesRequest(
        page_size=query.limit, page_token=query.cursor, contact_id=query.contact_id, status=query.status))
    return respond(SequencePage(items=[from_message(Sequence, s) for s in page.sequences],
                                next_cursor=page.next_page_token or None))


@bp.get("/v1/sequences/<sequence_id>")
def get_sequence(sequence_id: str) -> Response:
    return _sequence(call(_mailer().GetSequence, pb.GetSequenceRequest(sequence_id=sequence_id)))


@bp.post("/v1/sequences/<sequence_id>/send")
def send_sequence(sequence_id: str) -> Response:
    send = to_message(parse(SendInput), pb.SendSequenceRequest(sequence_id=sequence_id))
    return _sequence(call(_mailer().SendSequence, send), 202)


@bp.post("/v1/sequences/<sequence_id>/pause")
def pause_sequence(sequence_id: str) -> Response:
    return _sequence(call(_mailer().PauseSequence, pb.PauseSequenceRequest(sequence_id=sequence_id)))


@bp.post("/v1/sequences/<sequence_id>/resume")
def resume_sequence(sequence_id: str) -> Response:
    return _sequence(call(_mailer().ResumeSequence, pb.ResumeSequenceRequest(sequence_id=sequence_id)))


@bp.post("/v1/sequences/<sequence_id>/cancel")
def cancel_sequence(sequence_id: str) -> Response:
    return _sequence(call(_mailer().CancelSequence, pb.CancelSequenceRequest(sequence_id=sequence_id)))


_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_ERRORS = {
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "422": {"$ref": "#/components/responses/ValidationError"},
}
_NOT_FOUND = {"404": {"description": "no such resource (or not yours)", "content": _PROBLEM}}
_BAD_BODY = {"400": {"description": "the body is not a JSON object", "content": _PROBLEM},
             "415": {"description": "the body is not application/json", "content": _PROBLEM}}


def _id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"},
            "description": "the id the resource was created with (a UUID)"}


def _json_body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    return {"requestBody": {"required": required, "content": content(model)}}


def _action(summary: str) -> dict[str, Any]:
    return {"post": {"summary": summary, "parameters": [_id("sequence_id")],
                     "responses": {"200": {"description": "the sequence", "content": content(Sequence)},
                                   "409": {"description": "not possible in this state", "content": _PROBLEM},
                                   **_NOT_FOUND, **_ERRORS}}}


PATHS: dict[str, Any] = {
    "/v1/contacts": {
        "post": {"summary": "Add a contact (one per email address, case-insensitive)", **_json_body(ContactInput),
                 "responses": {"201": {"description": "created", "content": content(Contact)},
                               "409": {"description": "a contact with this address exists; `existing_id` names it",
                                       "content": _PROBLEM}, **_BAD_BODY, **_ERRORS}},
        "get": {"summary": "Contacts, oldest first", "parameters": query_parameters(PageQuery),
                "responses": {"200": {"description": "a page", "content": content(ContactPage)}, **_ERRORS}},
    },
    "/v1/contacts/import": {
        "post": {"summary": "Import contacts from a CSV file (UTF-8, header row with `email`; at most 1 MiB and "
                            "5000 rows). Rate-limited.",
                 "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}},
                 "responses": {"200": {"description": "what happened", "content": content(ImportResult)},
                               "429": {"description": "too many imports", "content": _PROBLEM}, **_ERRORS}},
    },
    "/v1/contacts/{contact_id}": {
        "get": {"summary": "A contact", "parameters": [_id("contact_id")],
                "responses": {"200": {"description": "the contact", "content": content(Contact)},
                              **_NOT_FOUND, **_ERRORS}},
        "patch": {"summary": "Change the fields given (null clears one)", "parameters": [_id("contact_id")],
                  **_json_body(ContactInput),
                  "responses": {"200": {"description": "the contact", "content": content(Contact)},
                                "409": {"description": "the new address belongs to another contact",
                                        "content": _PROBLEM}, **_BAD_BODY, **_NOT_FOUND, **_ERRORS}},
        "delete": {"summary": "Delete a contact, its sequences, emails and bodies, and its mirrored Gmail drafts",
                   "parameters": [_id("contact_id")],
                   "responses": {"204": {"description": "deleted"}, **_NOT_FOUND, **_ERRORS}},
    },
    "/v1/sequences": {
        "post": {"summary": "Write a first email and its follow-ups to a contact (not sent until /send)",
                 **_json_body(SequenceInput),
                 "responses": {"201": {"description": "created", "content": content(Sequence)},
                               **_BAD_BODY, **_NOT_FOUND, **_ERRORS}},
        "get": {"summary": "Sequences, oldest first", "parameters": query_parameters(SequenceQuery),
                "responses": {"200": {"description": "a page", "content": content(SequencePage)},
                              "404": {"description": "`contact_id` names no contact of yours", "content": _PROBLEM},
                              **_ERRORS}},
    },
    "/v1/sequences/{sequence_id}": {
        "get": {"summary": "A sequence with every step", "parameters": [_id("sequence_id")],
                "responses": {"200": {"description": "the sequence", "content": content(Sequence)},
                              **_NOT_FOUND, **_ERRORS}},
    },
    "/v1/sequences/{sequence_id}/send": {"post": {
        "summary": "Send the first email now, or at `send_at`", "parameters": [_id("sequence_id")],
        **_json_body(SendInput, required=False),
        "responses": {"202": {"description": "scheduled", "content": content(Sequence)},
                      "409": {"description": "already sent", "content": _PROBLEM}, **_BAD_BODY, **_NOT_FOUND,
                      **_ERRORS}}},
    "/v1/sequences/{sequence_id}/pause": _action("Pause: nothing is sent until resumed"),
    "/v1/sequences/{sequence_id}/resume": _action("Resume: steps whose time passed go out in the next window, once"),
    "/v1/sequences/{sequence_id}/cancel": _action("Cancel: pending follow-ups and their drafts are removed"),
}
