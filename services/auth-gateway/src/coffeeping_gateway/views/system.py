"""Public routes: health, the OpenAPI document, and security.txt (RFC 9116)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, Response, jsonify

from coffeeping_gateway.api import content, respond
from coffeeping_gateway.schemas import Health
from coffeeping_gateway.web import public

bp = Blueprint("system", __name__)

SECURITY_CONTACT = "mailto:security@coffeeping.io"


@bp.get("/healthz")
@public
def healthz() -> Any:
    """The gateway's readiness: it answers, so it is ready. It does not ask the services behind it (a
    backend's rollout must not take the whole API out of its load balancer); each of them has its own
    readiness, and a request that needs one that is down is answered 503 on its own."""
    return respond(Health(status="ok"))


@bp.get("/openapi.json")
@public
def openapi() -> Any:
    from coffeeping_gateway.openapi import document

    return jsonify(document())


@bp.get("/.well-known/security.txt")
@public
def security_txt() -> Response:
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=180)).replace(microsecond=0)
    body = (
        f"Contact: {SECURITY_CONTACT}\n"
        f"Expires: {expires.isoformat().replace('+00:00', 'Z')}\n"
        "Preferred-Languages: en\n"
        "Policy: https://coffeeping.io/security\n"
    )
    return Response(body, mimetype="text/plain")


_HEALTH = content(Health)

PATHS: dict[str, Any] = {
    "/healthz": {"get": {"summary": "The gateway's readiness (it does not depend on the services behind it)",
                         "security": [], "responses": {"200": {"description": "ready", "content": _HEALTH}}}},
    "/openapi.json": {"get": {"summary": "This document", "security": [],
                              "responses": {"200": {"description": "OpenAPI 3.1 document", "content": {
                                  "application/json": {"schema": {"type": "object"}}}}}}},
    "/.well-known/security.txt": {"get": {"summary": "Vulnerability reporting (RFC 9116)", "security": [],
                                          "responses": {"200": {"description": "security.txt", "content": {
                                              "text/plain": {"schema": {"type": "string"}}}}}}},
}
