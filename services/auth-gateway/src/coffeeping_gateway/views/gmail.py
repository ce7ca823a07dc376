"""Connecting and disconnecting Gmail.

``POST /v1/gmail/connect`` answers Google's consent URL (exactly the four scopes, without
``include_granted_scopes`` so that Google adds no earlier grant's scopes, offline access, PKCE S256,
signed state) and sets the browser-binding cookie. ``GET /v1/gmail/callback`` is where Google sends
the browser back: it verifies the state and hands the code and PKCE verifier to the token vault,
which exchanges and stores the grant; the gateway never holds a Google token. The callback always
ends in a redirect to ``APP_URL`` with the outcome, never to a URL taken from the request.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any
from urllib.parse import urlencode

import grpc
from flask import Blueprint, Response, current_app, redirect, request
from google.protobuf.timestamp_pb2 import Timestamp

from coffeeping.accounts.v1 import accounts_pb2
from coffeeping.common.gmail import CONSENT_SCOPES
from coffeeping.vault.v1 import vault_pb2
from coffeeping_gateway.api import content, respond
from coffeeping_gateway.oauth_state import COOKIE_NAME, COOKIE_PATH, STATE_TTL_S, InvalidState, StateSigner
from coffeeping_gateway.schemas import GmailConnect
from coffeeping_gateway.web import call, clients, rate_limited, rpc, settings, user_id

log = logging.getLogger(__name__)

bp = Blueprint("gmail", __name__)

SCOPES = CONSENT_SCOPES
# Reason codes the vault may give for a refused connection, passed on to the app as they are: a scope
# unticked (missing_scope) or one more than the four (excess_scope, the new grant then revoked at Google),
# another Google account than the one connected, or a deleted account.
_VAULT_REASON = re.compile(r"different_account|account_deleted|(missing|excess)_scope:[a-z.]+(,[a-z.]+)*")


def known_vault_reason(details: str) -> str | None:
    """The vault's refusal reason when it is one of the codes above (whole string, no trailing newline)."""
    return details if _VAULT_REASON.fullmatch(details) else None


def _signer() -> StateSigner:
    signer = current_app.extensions.get("coffeeping.oauth_state")
    if signer is None:
        signer = current_app.extensions["coffeeping.oauth_state"] = StateSigner(settings().oauth_state_secret)
    return signer  # type: ignore[no-any-return]


def _to_app(**params: str) -> Response:
    """Back to the app with the outcome; the target is configuration, never the request."""
    base = settings().app_url
    response = redirect(base + ("&" if "?" in base else "?") + urlencode(params), code=302)
    response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, secure=True, httponly=True, samesite="Lax")
    return response


def _refuse(reason: str, why: str) -> Response:
    log.info("gmail connection refused", extra={"reason": reason, "why": why})
    return _to_app(gmail="error", reason=reason)


@bp.post("/v1/gmail/connect")
@rate_limited(per_minute=20)
def connect() -> Any:
    # A deleted account connects nothing (410); the vault alone learns of a deletion only at its end.
    call(clients().accounts.GetMe, accounts_pb2.GetMeRequest())
    info = call(clients().vault.GetGrantInfo, vault_pb2.GetGrantInfoRequest())
    pending = _signer().begin(user_id())
    params = {
        "client_id": settings().google_client_id,
        "redirect_uri": settings().google_redirect_uri,
        "response_type": "code",
        "scope": " ".join(SCOPES),
        "access_type": "offline",
        "state": pending.state,
        "code_challenge": pending.code_challenge,
        "code_challenge_method": "S256",
    }
    if not info.has_refresh_token:
        # Google returns a refresh token again only when asked to show the consent screen.
        params["prompt"] = "consent"
    response = respond(GmailConnect(authorization_url=settings().google_auth_url + "?" + urlencode(params)))
    response.set_cookie(COOKIE_NAME, pending.cookie, max_age=STATE_TTL_S, path=COOKIE_PATH, secure=True,
                        httponly=True, samesite="Lax")
    return response


@bp.get("/v1/gmail/callback")
def callback() -> Response:
    try:
        verified = _signer().verify(request.args.get("state", ""), request.cookies.get(COOKIE_NAME), user_id())
    except InvalidState as exc:
        return _refuse("invalid_state", str(exc))
    expires = Timestamp()
    expires.FromDatetime(dt.datetime.fromtimestamp(verified.expires_at, dt.UTC))
    try:
        fresh = rpc(clients().vault.ConsumeStateNonce,
                    vault_pb2.ConsumeStateNonceRequest(nonce=verified.nonce, expires_at=expires)).fresh
    except grpc.RpcError as exc:
        return _refuse("temporarily_unavailable", f"nonce check: {exc.code().name}")
    if not fresh:
        return _refuse("invalid_state", "replayed")
    error = request.args.get("error")
    if error:
        return _refuse("access_denied" if error == "access_denied" else "authorization_failed", "google error")
    code = request.args.get("code", "")
    if not code:
        return _refuse("missing_code", "no code")
    try:
        rpc(clients().vault.CompleteConnection,
            vault_pb2.CompleteConnectionRequest(code=code, code_verifier=verified.code_verifier,
                                                redirect_uri=settings().google_redirect_uri))
    except grpc.RpcError as exc:
        status, details = exc.code(), exc.details() or ""
        if status == grpc.StatusCode.FAILED_PRECONDITION and known_vault_reason(details):
            return _refuse(details, "vault refused")
        if status == grpc.StatusCode.INVALID_ARGUMENT:
            return _refuse("exchange_failed", "vault refused the code")
        return _refuse("temporarily_unavailable", f"vault: {status.name}")
    log.info("gmail connected")
    return _to_app(gmail="connected")


@bp.delete("/v1/gmail")
def disconnect() -> Response:
    call(clients().vault.RevokeGrant, vault_pb2.RevokeGrantRequest(reason="user_disconnected"))
    return Response(status=204)


_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_REDIRECT = {
    "description": "to APP_URL with `?gmail=connected` or `?gmail=error&reason=...` (invalid_state, "
    "access_denied, authorization_failed, missing_code, missing_scope:<names>, excess_scope:<names> (Google "
    "granted more than the four scopes; the new grant is revoked), different_account, account_deleted, "
    "exchange_failed, temporarily_unavailable)",
    "headers": {"Location": {"schema": {"type": "string"}}},
}

PATHS: dict[str, Any] = {
    "/v1/gmail/connect": {
        "post": {
            "summary": "Start connecting Gmail: Google's consent URL (PKCE S256, signed single-use state)",
            "description": "Sets an HttpOnly, Secure, SameSite=Lax cookie that binds the flow to this browser; "
            "the callback must come back with it. Asks for exactly gmail.send, gmail.compose, gmail.metadata and "
            "userinfo.email with offline access; a consent granting fewer or more is refused.",
            "responses": {
                "200": {"description": "where to send the browser", "content": content(GmailConnect)},
                "401": {"$ref": "#/components/responses/Unauthorized"},
                "429": {"description": "too many attempts", "content": _PROBLEM},
            },
        }
    },
    "/v1/gmail/callback": {
        "get": {
            "summary": "Google's redirect back after consent; ends in a redirect to the app with the outcome",
            "parameters": [
                {"name": "state", "in": "query", "required": True, "schema": {"type": "string"}},
                {"name": "code", "in": "query", "schema": {"type": "string"}},
                {"name": "error", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {"302": _REDIRECT, "401": {"$ref": "#/components/responses/Unauthorized"}},
        }
    },
    "/v1/gmail": {
        "delete": {
            "summary": "Disconnect Gmail: the grant is revoked at Google and deleted; active sequences pause",
            "responses": {
                "204": {"description": "disconnected (also when nothing was connected)"},
                "401": {"$ref": "#/components/responses/Unauthorized"},
                "503": {"description": "Google or the vault is unavailable; nothing was deleted, try again",
                        "content": _PROBLEM},
            },
        }
    },
}
