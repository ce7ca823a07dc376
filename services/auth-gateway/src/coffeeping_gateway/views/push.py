"""Gmail push notifications through Cloud Pub/Sub: an immediate mailbox check; polling stays the fallback.

Pub/Sub carries no Clerk session, so the route is public and authenticated by the verification token
configured on the push subscription (``?token=...``, setting ``GMAIL_PUSH_TOKEN``), compared in constant
time. With no token configured the endpoint does not exist. The notification names only a Gmail
address and a history id; the watcher makes that mailbox due now if it watches it. Every accepted push
answers 204 whether or not the address is watched, so the answer reveals nothing.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from typing import Any

from flask import Blueprint, Response, request

from coffeeping.watcher.v1 import watcher_pb2
from coffeeping_gateway.problems import Problem
from coffeeping_gateway.web import call, clients, public, settings

log = logging.getLogger(__name__)

bp = Blueprint("push", __name__)

_MAX_DATA = 4096


def _notification() -> tuple[str, str]:
    body = request.get_json(silent=True)
    message = body.get("message") if isinstance(body, dict) else None
    data = message.get("data") if isinstance(message, dict) else None
    if not isinstance(data, str) or not data or len(data) > _MAX_DATA:
        raise Problem(400, "expected a Pub/Sub push message with data")
    try:
        decoded = json.loads(base64.b64decode(data + "=" * (-len(data) % 4), altchars=b"-_"))
    except (binascii.Error, ValueError):
        raise Problem(400, "message data is not base64 JSON") from None
    if not isinstance(decoded, dict):
        raise Problem(400, "message data is not a Gmail notification")
    address, history_id = decoded.get("emailAddress"), decoded.get("historyId")
    if not isinstance(address, str) or "@" not in address or len(address) > 320:
        raise Problem(400, "message data lacks emailAddress")
    if history_id is not None and (not str(history_id).isdigit() or len(str(history_id)) > 20):
        raise Problem(400, "message data has a malformed historyId")
    return address, str(history_id or "")


@bp.post("/v1/webhooks/gmail")
@public
def gmail_push() -> Any:
    expected = settings().gmail_push_token
    if not expected:
        raise Problem(404, "no such resource")
    given = request.args.get("token", "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        log.info("gmail push refused", extra={"reason": "bad token"})
        raise Problem(403, "invalid push token")
    address, history_id = _notification()
    reply = call(clients().watcher.CheckMailbox,
                 watcher_pb2.CheckMailboxRequest(email=address, history_id=history_id), user="")
    log.info("gmail push accepted", extra={"scheduled": reply.scheduled})
    return Response(status=204)


_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}

PATHS: dict[str, Any] = {
    "/v1/webhooks/gmail": {
        "post": {
            "summary": "Gmail push notification (Cloud Pub/Sub push subscription)",
            "description": "Authenticated by the subscription's verification token in the `token` query "
                           "parameter. Triggers an immediate check of the named mailbox; polling remains the "
                           "fallback. Answers 204 whether or not the mailbox is watched.",
            "security": [],
            "parameters": [{"name": "token", "in": "query", "required": True, "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["message"],
                "properties": {"message": {"type": "object", "required": ["data"],
                                           "properties": {"data": {"type": "string", "format": "byte"},
                                                          "messageId": {"type": "string"}}},
                               "subscription": {"type": "string"}}}}}},
            "responses": {"204": {"description": "accepted"},
                          "400": {"description": "not a Gmail notification", "content": _PROBLEM},
                          "403": {"description": "wrong verification token", "content": _PROBLEM},
                          "404": {"description": "push notifications are not configured", "content": _PROBLEM}},
        }
    }
}
