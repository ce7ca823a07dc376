"""Contacts and sequences: every route is answered by the mailer through ``Mailer.Call``.

The mailer validates the request and answers the status and body (a problem document with field-level
``errors`` when something is wrong); the gateway authenticates, rate-limits the CSV import, and passes
the JSON through.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from coffeeping.mailer.v1 import mailer_pb2
from coffeeping_gateway.problems import Problem
from coffeeping_gateway.web import call, clients, rate_limited

bp = Blueprint("outreach", __name__)

_QUERY_KEYS = ("limit", "cursor", "contact_id", "status")


def _forward(operation: str, body: bytes = b"", **params: str) -> Response:
    query = {k: v for k, v in request.args.items() if k in _QUERY_KEYS and len(v) <= 512}
    reply = call(clients().mailer.Call,
                 mailer_pb2.ApiRequest(operation=operation, params=params, query=query, body=body))
    if reply.http_status == 204 or not reply.body:
        return Response(status=reply.http_status)
    mimetype = "application/problem+json" if reply.http_status >= 400 else "application/json"
    return Response(reply.body, status=reply.http_status, mimetype=mimetype)


def _json_body() -> bytes:
    data = request.get_data(cache=False)
    if data and not (request.mimetype or "").endswith("json"):
        raise Problem(415, "send the body as application/json")
    return data


@bp.post("/v1/contacts")
def create_contact() -> Response:
    return _forward("contacts.create", _json_body())


@bp.get("/v1/contacts")
def list_contacts() -> Response:
    return _forward("contacts.list")


@bp.post("/v1/contacts/import")
@rate_limited(per_minute=6, burst=3)
def import_contacts() -> Response:
    if request.files:
        upload = next(iter(request.files.values()))
        data = upload.read()
    else:
        data = request.get_data(cache=False)
    return _forward("contacts.import", data)


@bp.get("/v1/contacts/<contact_id>")
def get_contact(contact_id: str) -> Response:
    return _forward("contacts.get", contact_id=contact_id)


@bp.patch("/v1/contacts/<contact_id>")
def update_contact(contact_id: str) -> Response:
    return _forward("contacts.update", _json_body(), contact_id=contact_id)


@bp.delete("/v1/contacts/<contact_id>")
def delete_contact(contact_id: str) -> Response:
    return _forward("contacts.delete", contact_id=contact_id)


@bp.post("/v1/sequences")
def create_sequence() -> Response:
    return _forward("sequences.create", _json_body())


@bp.get("/v1/sequences")
def list_sequences() -> Response:
    return _forward("sequences.list")


@bp.get("/v1/sequences/<sequence_id>")
def get_sequence(sequence_id: str) -> Response:
    return _forward("sequences.get", sequence_id=sequence_id)


@bp.post("/v1/sequences/<sequence_id>/<any(send, pause, resume, cancel):action>")
def act_on_sequence(sequence_id: str, action: str) -> Response:
    body = _json_body() if action == "send" else b""
    return _forward(f"sequences.{action}", body, sequence_id=sequence_id)


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_ERRORS = {
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "422": {"$ref": "#/components/responses/ValidationError"},
}
_NOT_FOUND = {"404": {"description": "no such resource (or not yours)", "content": _PROBLEM}}
_PAGE = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}},
    {"name": "cursor", "in": "query", "schema": {"type": "string"}, "description": "next_cursor of the last page"},
]


def _id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}


def _action(summary: str) -> dict[str, Any]:
    return {"post": {"summary": summary, "parameters": [_id("sequence_id")],
                     "responses": {"200": {"description": "the sequence", "content": _json("Sequence")},
                                   "409": {"description": "not possible in this state", "content": _PROBLEM},
                                   **_NOT_FOUND, **_ERRORS}}}


PATHS: dict[str, Any] = {
    "/v1/contacts": {
        "post": {"summary": "Add a contact (one per email address, case-insensitive)",
                 "requestBody": {"required": True, "content": _json("ContactInput")},
                 "responses": {"201": {"description": "created", "content": _json("Contact")},
                               "409": {"description": "a contact with this address exists; `existing_id` names it",
                                       "content": _PROBLEM}, **_ERRORS}},
        "get": {"summary": "Contacts, oldest first", "parameters": _PAGE,
                "responses": {"200": {"description": "a page", "content": _json("ContactPage")}, **_ERRORS}},
    },
    "/v1/contacts/import": {
        "post": {"summary": "Import contacts from a CSV file (UTF-8, header row with `email`; at most 1 MiB and "
                            "5000 rows). Rate-limited.",
                 "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}},
                 "responses": {"200": {"description": "what happened", "content": _json("ImportResult")},
                               "429": {"description": "too many imports", "content": _PROBLEM}, **_ERRORS}},
    },
    "/v1/contacts/{contact_id}": {
        "get": {"summary": "A contact", "parameters": [_id("contact_id")],
                "responses": {"200": {"description": "the contact", "content": _json("Contact")},
                              **_NOT_FOUND, **_ERRORS}},
        "patch": {"summary": "Change a contact", "parameters": [_id("contact_id")],
                  "requestBody": {"required": True, "content": _json("ContactInput")},
                  "responses": {"200": {"description": "the contact", "content": _json("Contact")},
                                "409": {"description": "the new address belongs to another contact",
                                        "content": _PROBLEM}, **_NOT_FOUND, **_ERRORS}},
        "delete": {"summary": "Delete a contact, its sequences, emails and bodies, and its mirrored Gmail drafts",
                   "parameters": [_id("contact_id")],
                   "responses": {"204": {"description": "deleted"}, **_NOT_FOUND, **_ERRORS}},
    },
    "/v1/sequences": {
        "post": {"summary": "Write a first email and its follow-ups to a contact (not sent until /send)",
                 "requestBody": {"required": True, "content": _json("SequenceInput")},
                 "responses": {"201": {"description": "created", "content": _json("Sequence")},
                               **_NOT_FOUND, **_ERRORS}},
        "get": {"summary": "Sequences, oldest first",
                "parameters": [*_PAGE, {"name": "contact_id", "in": "query", "schema": {"type": "string"}},
                               {"name": "status", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "a page", "content": _json("SequencePage")}, **_ERRORS}},
    },
    "/v1/sequences/{sequence_id}": {
        "get": {"summary": "A sequence with every step", "parameters": [_id("sequence_id")],
                "responses": {"200": {"description": "the sequence", "content": _json("Sequence")},
                              **_NOT_FOUND, **_ERRORS}},
    },
    "/v1/sequences/{sequence_id}/send": {"post": {
        **_action("Send the first email now, or at `send_at`")["post"],
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"send_at": {"type": "string", "format": "date-time"}}}}}},
        "responses": {"202": {"description": "scheduled", "content": _json("Sequence")},
                      "409": {"description": "already sent", "content": _PROBLEM}, **_NOT_FOUND, **_ERRORS}}},
    "/v1/sequences/{sequence_id}/pause": _action("Pause: nothing is sent until resumed"),
    "/v1/sequences/{sequence_id}/resume": _action("Resume: steps whose time passed go out in the next window, once"),
    "/v1/sequences/{sequence_id}/cancel": _action("Cancel: pending follow-ups and their drafts are removed"),
}

_NULLABLE = {"type": ["string", "null"]}
SCHEMAS: dict[str, Any] = {
    "ContactInput": {"type": "object", "additionalProperties": False, "properties": {
        "email": {"type": "string", "format": "email"}, "name": _NULLABLE, "first_name": _NULLABLE,
        "last_name": _NULLABLE, "company": _NULLABLE, "role": _NULLABLE,
        "time_zone": {"type": ["string", "null"], "description": "IANA name, e.g. Europe/Paris"},
        "notes": _NULLABLE}},
    "Contact": {"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"}, "email": {"type": "string"}, "name": _NULLABLE,
        "first_name": _NULLABLE, "last_name": _NULLABLE, "company": _NULLABLE, "role": _NULLABLE,
        "time_zone": _NULLABLE, "notes": _NULLABLE, "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"}}},
    "ContactPage": {"type": "object", "properties": {
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Contact"}}, "next_cursor": _NULLABLE}},
    "ImportResult": {"type": "object", "properties": {
        "created": {"type": "integer"}, "duplicates": {"type": "integer"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "line": {"type": "integer"}, "reason": {"type": "string"}}}}}},
    "SequenceInput": {"type": "object", "required": ["contact_id", "subject", "body"], "properties": {
        "contact_id": {"type": "string", "format": "uuid"},
        "subject": {"type": "string", "maxLength": 250, "description": "merge fields {{first_name}}, {{name}}, "
                                                                      "{{company}}, {{role}}"},
        "body": {"type": "string", "maxLength": 20000},
        "follow_ups": {"type": "array", "maxItems": 10, "items": {"type": "object", "properties": {
            "body": {"type": "string"}, "delay": {"type": "string", "description": "ISO 8601, e.g. P3D, PT10S"},
            "send_at": {"type": "string", "format": "date-time"}}}},
        "business_days": {"type": "boolean"},
        "send_window": {"type": "object", "properties": {"start": {"type": "string", "example": "09:00"},
                                                         "end": {"type": "string", "example": "17:00"}}},
        "time_zone": {"type": "string"}}},
    "Step": {"type": "object", "properties": {
        "id": {"type": "string"}, "position": {"type": "integer"}, "kind": {"enum": ["first", "follow_up"]},
        "body": {"type": "string"}, "sent_body": _NULLABLE, "edited_in_gmail": {"type": "boolean"},
        "delay": _NULLABLE, "send_at": _NULLABLE, "due_at": _NULLABLE,
        "status": {"enum": ["scheduled", "sending", "sent", "cancelled", "failed"]}, "cancel_reason": _NULLABLE,
        "sent_at": _NULLABLE, "draft_id": _NULLABLE, "gmail_message_id": _NULLABLE, "thread_id": _NULLABLE,
        "rfc_message_id": _NULLABLE, "attempts": {"type": "integer"}, "last_error": _NULLABLE}},
    "Sequence": {"type": "object", "properties": {
        "id": {"type": "string"}, "contact_id": {"type": "string"}, "subject": {"type": "string"},
        "status": {"enum": ["draft", "scheduled", "active", "paused", "stopped", "completed"]},
        "stop_reason": {"type": ["string", "null"], "enum": [
            None, "replied", "bounced", "cancelled", "user_took_over", "draft_deleted", "gmail_disconnected",
            "contact_deleted", "failed"]},
        "stopped_at": _NULLABLE, "pause_reason": _NULLABLE, "business_days": {"type": "boolean"},
        "send_window": {"type": ["object", "null"]}, "time_zone": {"type": "string"}, "to": {"type": "string"},
        "thread_id": _NULLABLE, "created_at": {"type": "string"}, "started_at": _NULLABLE,
        "steps": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}}}},
    "SequencePage": {"type": "object", "properties": {
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Sequence"}}, "next_cursor": _NULLABLE}},
}
