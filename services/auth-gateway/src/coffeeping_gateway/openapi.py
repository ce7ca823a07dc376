"""The OpenAPI 3.1 document, assembled from the blueprints' own path items."""

from __future__ import annotations

from typing import Any

from coffeeping_gateway import views

# Once an account's deletion is accepted, every route of that user answers 410 but the deletion's own
# (a repeated DELETE answers the deletion's status).
_NOT_GONE = {"/v1/account", "/v1/account/deletion"}
# Every state-changing route behind a session refuses a cookie-authenticated request from a foreign
# Origin (the app's check, before any view runs).
_UNSAFE = {"post", "put", "patch", "delete"}


def _paths() -> dict[str, Any]:
    paths = views.paths()
    for path, item in paths.items():
        for method, operation in item.items():
            responses = operation.get("responses", {})
            if "{" in path or any(p.get("in") == "query" for p in operation.get("parameters", [])):
                responses.setdefault("414", {"$ref": "#/components/responses/UriTooLong"})
            if "requestBody" in operation:
                responses.setdefault("413", {"$ref": "#/components/responses/ContentTooLarge"})
            if "security" in operation:  # public, or authenticated otherwise than by a Clerk session
                continue
            if path not in _NOT_GONE:
                responses.setdefault("410", {"$ref": "#/components/responses/AccountDeleted"})
            if method in _UNSAFE:
                responses.setdefault("403", {"$ref": "#/components/responses/CrossSiteRefused"})
    return paths


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "CoffeePing API",
            "version": "1.0.0",
            "description": "Cold email with follow-ups that stop when the contact replies. Every /v1 route needs "
            "a Clerk session token (Authorization: Bearer, or the __session cookie). A POST, PUT, PATCH or "
            "DELETE authenticated by the cookie must carry an Origin among the allowed origins (403 otherwise). "
            "Errors are application/problem+json (RFC 9457).",
        },
        "security": [{"clerkSession": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "clerkSession": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "pubsubOidc": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                               "description": "Google-signed OIDC token of the Pub/Sub push subscription"},
            },
            "schemas": views.schemas(),
            "responses": {
                "Unauthorized": {
                    "description": "missing or invalid session token",
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                },
                "CrossSiteRefused": {
                    "description": "authenticated by the __session cookie without an allowed Origin (a request "
                    "from another site); send the app's Origin, or use Authorization: Bearer",
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                },
                "AccountDeleted": {
                    "description": "the account is deleted or being deleted; `links.status` is its deletion status",
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                },
                "ContentTooLarge": {
                    "description": "the body is larger than the gateway accepts (GATEWAY_MAX_BODY_BYTES, 2 MiB by "
                    "default)",
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                },
                "UriTooLong": {
                    "description": "the request line (path and query string) is longer than 4094 bytes; answered by "
                    "the HTTP server in front of the API, as HTML",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                },
                "ValidationError": {
                    "description": "the request is well-formed but invalid; `errors` lists the fields",
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                },
            },
        },
    }
