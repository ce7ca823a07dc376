"""``GET /v1/me``: the signed-in user, created on first sight, with the Gmail connection."""

from __future__ import annotations

from typing import Any

import grpc
from flask import Blueprint, jsonify

from coffeeping.accounts.v1 import accounts_pb2
from coffeeping.vault.v1 import vault_pb2
from coffeeping_gateway.web import clients, rpc_problem, settings, user_id

bp = Blueprint("me", __name__)


def gmail_summary(info: vault_pb2.GrantInfo) -> dict[str, Any]:
    if not info.connected:
        return {"connected": False}
    return {"connected": True, "email": info.email, "scopes": list(info.scopes), "status": info.status}


@bp.get("/v1/me")
def me() -> Any:
    # Blocking calls, one after the other: grpc's ``.future()`` starts a polling thread per call in
    # a process without one, which costs more than the second round trip it would save.
    metadata, timeout = clients().metadata(user_id()), settings().rpc_timeout_s
    try:
        user = clients().accounts.GetMe(accounts_pb2.GetMeRequest(), metadata=metadata, timeout=timeout)
        grant = clients().vault.GetGrantInfo(vault_pb2.GetGrantInfoRequest(), metadata=metadata, timeout=timeout)
    except grpc.RpcError as exc:
        raise rpc_problem(exc) from None
    return jsonify(
        {
            "user_id": user.user_id,
            "created_at": user.created_at.ToDatetime().replace(microsecond=0).isoformat() + "Z",
            "gmail": gmail_summary(grant),
        }
    )


PATHS: dict[str, Any] = {
    "/v1/me": {
        "get": {
            "summary": "The signed-in user (created on first sight) and their Gmail connection",
            "responses": {
                "200": {"description": "the user", "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/Me"}}}},
                "401": {"$ref": "#/components/responses/Unauthorized"},
            },
        }
    }
}

SCHEMAS: dict[str, Any] = {
    "Me": {
        "type": "object",
        "required": ["user_id", "created_at", "gmail"],
        "properties": {
            "user_id": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "gmail": {
                "type": "object",
                "required": ["connected"],
                "properties": {
                    "connected": {"type": "boolean"},
                    "email": {"type": "string"},
                    "scopes": {"type": "array", "items": {"type": "string"}},
                    "status": {"type": "string", "enum": ["connected", "needs_reconnect"]},
                },
            },
        },
    }
}
