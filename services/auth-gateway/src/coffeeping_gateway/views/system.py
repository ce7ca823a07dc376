"""Public routes: health, the OpenAPI document, and security.txt (RFC 9116)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
from flask import Blueprint, Response, jsonify
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coffeeping_gateway.api import content, respond
from coffeeping_gateway.schemas import Health
from coffeeping_gateway.web import clients, public

bp = Blueprint("system", __name__)

SECURITY_CONTACT = "mailto:security@coffeeping.io"
_DEPENDENCIES = ("accounts", "vault", "mailer", "watcher")


@bp.get("/healthz")
@public
def healthz() -> Any:
    """200 when every service the API needs answers its gRPC health check."""
    states = {}
    for name in _DEPENDENCIES:
        try:
            stub = health_pb2_grpc.HealthStub(clients().channel(name))
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            states[name] = "ok" if reply.status == health_pb2.HealthCheckResponse.SERVING else "down"
        except grpc.RpcError:
            states[name] = "down"
    healthy = all(state == "ok" for state in states.values())
    return respond(Health(status="ok" if healthy else "unavailable", dependencies=states), 200 if healthy else 503)


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
    "/healthz": {"get": {"summary": "Health of the API and the services it needs", "security": [],
                         "responses": {"200": {"description": "healthy", "content": _HEALTH},
                                       "503": {"description": "degraded", "content": _HEALTH}}}},
    "/openapi.json": {"get": {"summary": "This document", "security": [],
                              "responses": {"200": {"description": "OpenAPI 3.1 document", "content": {
                                  "application/json": {"schema": {"type": "object"}}}}}}},
    "/.well-known/security.txt": {"get": {"summary": "Vulnerability reporting (RFC 9116)", "security": [],
                                          "responses": {"200": {"description": "security.txt", "content": {
                                              "text/plain": {"schema": {"type": "string"}}}}}}},
}
