"""Gmail push notifications through Cloud Pub/Sub: an immediate mailbox check; polling stays the fallback.

Pub/Sub carries no Clerk session, so the route is public and authenticated as Google does it: the OIDC
token of the push subscription in ``Authorization: Bearer`` (``push_auth``), minted for
``GMAIL_PUSH_AUDIENCE`` and the service account ``GMAIL_PUSH_SERVICE_ACCOUNT``; with either unset the
endpoint does not exist. The notification names only a Gmail address and a history id; the watcher
makes that mailbox due now if it watches it. Every accepted push answers 204 whether or not the
address is watched, so the answer reveals nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

from flask import Blueprint, Response, current_app, request

from coffeeping.watcher.v1 import watcher_pb2
from coffeeping_gateway.api import content, parse
from coffeeping_gateway.problems import Problem
from coffeeping_gateway.push_auth import CertificatesUnavailable, Forbidden, PushVerifier, Unauthenticated
from coffeeping_gateway.schemas import PushEnvelope
from coffeeping_gateway.web import call, clients, public, settings

log = logging.getLogger(__name__)

bp = Blueprint("push", __name__)

_MAX_DATA = 4096


def _verifier() -> PushVerifier | None:
    """The app's push verifier (certificates cached per process), or None when push is off."""
    verifier: PushVerifier | None = current_app.extensions.get("coffeeping.push_verifier")
    if verifier is None:
        config = settings()
        if not (config.gmail_push_audience and config.gmail_push_service_account):
            return None
        verifier = current_app.extensions.setdefault("coffeeping.push_verifier", PushVerifier(
            config.google_oidc_certs_url, config.gmail_push_audience, config.gmail_push_service_account))
    return verifier


def _notification() -> tuple[str, str]:
    """The mailbox address and history id of the push's Gmail notification."""
    try:
        data = parse(PushEnvelope).message.data
    except Problem:
        raise Problem(400, "expected a Pub/Sub push message with data") from None
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
    verifier = _verifier()
    if verifier is None:
        raise Problem(404, "no such resource")
    try:
        verifier.verify(request.headers.get("Authorization", ""))
    except Unauthenticated as exc:
        log.info("gmail push refused", extra={"reason": str(exc)})
        raise Problem(401, "a valid Google OIDC token is required") from None
    except Forbidden as exc:
        log.info("gmail push refused", extra={"reason": f"not our subscription: {exc}"})
        raise Problem(403, "the token was not issued for this push subscription") from None
    except CertificatesUnavailable:
        log.warning("gmail push deferred: Google's certificates are unavailable")
        raise Problem(503, "cannot verify the push now; try again") from None
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
            "description": "Authenticated by the OIDC token the push subscription sends (issuer Google, "
                           "audience GMAIL_PUSH_AUDIENCE, service account GMAIL_PUSH_SERVICE_ACCOUNT). Makes the "
                           "named mailbox due for a check now; polling remains the fallback. Answers 204 whether "
                           "or not the mailbox is watched.",
            "security": [{"pubsubOidc": []}],
            "requestBody": {"required": True, "content": content(PushEnvelope)},
            "responses": {"204": {"description": "accepted"},
                          "400": {"description": "not a Gmail notification", "content": _PROBLEM},
                          "401": {"description": "no token, or one that does not verify", "content": _PROBLEM},
                          "403": {"description": "a token for another audience, issuer or account",
                                  "content": _PROBLEM},
                          "404": {"description": "push notifications are not configured", "content": _PROBLEM},
                          "503": {"description": "the push cannot be verified or delivered now; Pub/Sub retries",
                                  "content": _PROBLEM}},
        }
    }
}
