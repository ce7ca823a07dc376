"""``GET /v1/me``: the signed-in user, created on first sight, with the Gmail connection."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, Response

from coffeeping.accounts.v1 import accounts_pb2
from coffeeping.vault.v1 import vault_pb2
from coffeeping_gateway.api import content, respond
from coffeeping_gateway.schemas import GmailConnection, Me
from coffeeping_gateway.web import call, clients

bp = Blueprint("me", __name__)


def gmail_connection(info: vault_pb2.GrantInfo) -> GmailConnection:
    if not info.connected:
        return GmailConnection(connected=False)
    return GmailConnection(connected=True, email=info.email, scopes=list(info.scopes), status=info.status)


@bp.get("/v1/me")
def me() -> Response:
    # Blocking calls, one after the other: grpc's ``.future()`` starts a polling thread per call in
    # a process without one, which costs more than the second round trip it would save.
    user = call(clients().accounts.GetMe, accounts_pb2.GetMeRequest())
    grant = call(clients().vault.GetGrantInfo, vault_pb2.GetGrantInfoRequest())
    created_at = user.created_at.ToDatetime(dt.UTC).replace(microsecond=0)
    return respond(Me(user_id=user.user_id, created_at=created_at, gmail=gmail_connection(grant)))


PATHS: dict[str, Any] = {
    "/v1/me": {
        "get": {
            "summary": "The signed-in user (created on first sight) and their Gmail connection",
            "responses": {
                "200": {"description": "the user", "content": content(Me)},
                "401": {"$ref": "#/components/responses/Unauthorized"},
            },
        }
    }
}
