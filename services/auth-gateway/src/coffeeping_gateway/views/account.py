"""Your data, your choice: export (``GET /v1/export``), account deletion (``DELETE /v1/account``, its
progress at ``GET /v1/account/deletion``) and Clerk's ``user.deleted`` webhook (``POST
/v1/webhooks/clerk``), which starts the same deletion."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import grpc
from flask import Blueprint, Response, request
from svix.webhooks import Webhook, WebhookVerificationError

from coffeeping.accounts.v1 import accounts_pb2
from coffeeping_gateway.api import content, from_message, parse, respond
from coffeeping_gateway.problems import Problem
from coffeeping_gateway.schemas import CONFIRMATION, DeleteAccountInput, DeletionAccepted, DeletionStatus, Export
from coffeeping_gateway.web import (
    DELETION_STATUS_PATH,
    call,
    clients,
    public,
    rate_limited,
    rpc,
    rpc_problem,
    settings,
)

log = logging.getLogger(__name__)

bp = Blueprint("account", __name__)

STATUS_PATH = DELETION_STATUS_PATH
EXPORT_TIMEOUT_S = 600
MAX_WEBHOOK_BYTES = 256 * 1024
_USER_ID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
_SVIX_ID = re.compile(r"^[A-Za-z0-9_\-.:]{1,128}$")


def _status(status: accounts_pb2.DeletionStatus) -> DeletionStatus:
    return from_message(DeletionStatus, status, links={"status": STATUS_PATH})


# -- export ----------------------------------------------------------------------------------------


@bp.get("/v1/export")
@rate_limited(per_minute=4, burst=2)
def export() -> Response:
    fmt = request.args.get("format", "json")
    if fmt != "json":
        raise Problem(422, "unsupported export format", errors=[{"field": "format", "message": "must be json"}])
    stream = rpc(clients().accounts.Export, accounts_pb2.ExportRequest(format="json"), timeout=EXPORT_TIMEOUT_S)
    # The first chunk is read before answering, so that a refusal (deletion in progress, a service
    # down) is still a problem document and not a broken download.
    try:
        first = next(stream, None)
    except grpc.RpcError as exc:
        raise rpc_problem(exc) from None

    def body() -> Iterator[bytes]:
        if first is not None:
            yield first.data
        try:
            for chunk in stream:
                yield chunk.data
        except grpc.RpcError as exc:
            # Headers are gone: end the response without the closing of the document, so the client
            # sees an incomplete download (the document ends with "complete": true when whole).
            log.warning("export interrupted", extra={"code": str(exc.code()) if hasattr(exc, "code") else ""})
            raise

    response = Response(body(), mimetype="application/json")
    response.headers["Content-Disposition"] = 'attachment; filename="coffeeping-export.json"'
    return response


# -- deletion ---------------------------------------------------------------------------------------


@bp.delete("/v1/account")
@rate_limited(per_minute=10, burst=5)
def delete_account() -> Response:
    try:
        parse(DeleteAccountInput)
    except Problem as problem:
        raise Problem(422, "to delete your account, confirm it",
                      errors=[{"field": "confirm", "message": f'must be exactly "{CONFIRMATION}"'}]) from problem
    key = request.headers.get("Idempotency-Key", "")
    if len(key) > 200:
        raise Problem(422, "Idempotency-Key is too long",
                      errors=[{"field": "Idempotency-Key", "message": "at most 200 characters"}])
    status = call(clients().accounts.RequestDeletion,
                  accounts_pb2.RequestDeletionRequest(source="api", idempotency_key=key))
    response = respond(_status(status), 202)
    response.headers["Location"] = STATUS_PATH
    return response


@bp.get(STATUS_PATH)
def deletion_status() -> Response:
    status = call(clients().accounts.GetDeletionStatus, accounts_pb2.GetDeletionStatusRequest())
    if status.state in ("", "none"):
        raise Problem(404, "no deletion of this account was requested")
    return respond(_status(status))


# -- Clerk webhook ----------------------------------------------------------------------------------


@bp.post("/v1/webhooks/clerk")
@public
def clerk_webhook() -> Response:
    """Verified with Svix (signature over id, timestamp and body; timestamps more than 5 minutes away
    refused by the library). A bad signature is 400 with nothing done."""
    if (request.content_length or 0) > MAX_WEBHOOK_BYTES:
        raise Problem(413, "the request body is too large")
    body = request.get_data(cache=False)
    headers = {name: request.headers.get(name, "") for name in ("svix-id", "svix-timestamp", "svix-signature")}
    try:
        Webhook(settings().clerk_webhook_secret).verify(body, headers)
    except (WebhookVerificationError, ValueError, TypeError):
        # ValueError also covers a malformed signature list, bad base64 and a body that is not UTF-8.
        log.info("clerk webhook refused: signature")
        raise Problem(400, "invalid webhook signature") from None
    try:
        event = json.loads(body)
    except ValueError:
        raise Problem(400, "the webhook body is not JSON") from None
    kind = event.get("type") if isinstance(event, dict) else None
    if kind != "user.deleted":
        log.info("clerk webhook ignored", extra={"event_type": str(kind)[:64]})
        return Response(status=204)
    data = event.get("data")
    subject = data.get("id") if isinstance(data, dict) else None
    if not isinstance(subject, str) or not _USER_ID.match(subject):
        raise Problem(400, "user.deleted without a valid user id")
    svix_id = headers["svix-id"]
    if not _SVIX_ID.match(svix_id):
        raise Problem(400, "invalid svix-id")
    # The user id comes from a payload whose signature was just verified: the gateway asserts it.
    status = call(clients().accounts.RequestDeletion,
                  accounts_pb2.RequestDeletionRequest(source="clerk_webhook", idempotency_key=f"svix:{svix_id}"),
                  user=subject)
    log.info("clerk user.deleted accepted", extra={"deletion_id": status.deletion_id})
    return respond(DeletionAccepted(deletion_id=status.deletion_id, state=status.state))


# -- OpenAPI ------------------------------------------------------------------------------------------

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_STATUS = content(DeletionStatus)

PATHS: dict[str, Any] = {
    "/v1/export": {
        "get": {
            "summary": "Everything CoffeePing holds about you, as one JSON document (a download)",
            "description": "Sections: profile, gmail_connection, vault_audit, contacts, sequences, replies, each "
                           "with a description and its records. A whole document ends with \"complete\": true. "
                           "Rate limited per user.",
            "parameters": [{"name": "format", "in": "query", "required": False,
                            "schema": {"type": "string", "enum": ["json"], "default": "json"}}],
            "responses": {
                "200": {"description": "the export", "headers": {"Content-Disposition": {
                    "schema": {"type": "string"}, "description": 'attachment; filename="coffeeping-export.json"'}},
                        "content": content(Export)},
                "401": {"$ref": "#/components/responses/Unauthorized"},
                "422": {"$ref": "#/components/responses/ValidationError"},
                "429": {"description": "too many exports; try again later", "content": _PROBLEM},
            },
        }
    },
    "/v1/account": {
        "delete": {
            "summary": "Delete your account and everything in it, and revoke CoffeePing's Google access",
            "requestBody": {"required": True, "content": content(DeleteAccountInput)},
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string", "maxLength": 200}}],
            "responses": {
                "202": {"description": "deletion accepted and sending already stopped (or the deletion already "
                        "accepted earlier; a failed one restarts its failed steps); follow `Location` for progress",
                        "headers": {"Location": {"schema": {"type": "string"}}}, "content": _STATUS},
                "401": {"$ref": "#/components/responses/Unauthorized"},
                "422": {"$ref": "#/components/responses/ValidationError"},
                "503": {"description": "the deletion is recorded but the stop of sending is not confirmed yet; "
                        "repeat the request", "content": _PROBLEM},
            },
        }
    },
    STATUS_PATH: {
        "get": {
            "summary": "Progress of your account's deletion, per step and service (answerable after completion)",
            "responses": {
                "200": {"description": "the latest deletion", "content": _STATUS},
                "401": {"$ref": "#/components/responses/Unauthorized"},
                "404": {"description": "no deletion was requested", "content": _PROBLEM},
            },
        }
    },
    "/v1/webhooks/clerk": {
        "post": {
            "summary": "Clerk webhook (Svix-signed); `user.deleted` starts the account's deletion",
            "security": [],
            "parameters": [{"name": n, "in": "header", "required": True, "schema": {"type": "string"}}
                           for n in ("svix-id", "svix-timestamp", "svix-signature")],
            "responses": {
                "200": {"description": "user.deleted accepted (a replay changes nothing)", "content": {
                    "application/json": {"schema": {"type": "object", "required": ["deletion_id", "state"],
                                                    "properties": {"deletion_id": {"type": "string"},
                                                                   "state": {"type": "string"}}}}}},
                "204": {"description": "another event type, acknowledged and ignored"},
                "400": {"description": "bad signature, stale timestamp or malformed event", "content": _PROBLEM},
                "413": {"description": "the body is larger than 256 KiB", "content": _PROBLEM},
            },
        }
    },
}
