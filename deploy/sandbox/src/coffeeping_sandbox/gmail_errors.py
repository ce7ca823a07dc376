"""Google API error bodies, shaped like the ones gmail.googleapis.com returns."""

from __future__ import annotations

import json
from typing import Any

import flask

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

UNAUTHENTICATED_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
    "other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)


class ApiError(Exception):
    """An error answered to the client as Google's JSON error body."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str,
        *,
        domain: str = "global",
        status: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.status = status or _STATUS.get(code, "UNKNOWN")
        self.headers = headers or {}
        self.extra = extra or {}
        self.details = details

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"message": self.message, "domain": self.domain, "reason": self.reason}
        err.update(self.extra)
        out: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "errors": [err],
            "status": self.status,
        }
        if self.details:
            out["details"] = self.details
        return {"error": out}

    def response(self) -> flask.Response:
        resp = flask.Response(
            json.dumps(self.body(), indent=2), status=self.code, mimetype="application/json"
        )
        resp.headers["Content-Type"] = "application/json; charset=UTF-8"
        for k, v in self.headers.items():
            resp.headers[k] = v
        return resp


def unauthenticated() -> ApiError:
    return ApiError(
        401,
        UNAUTHENTICATED_MESSAGE,
        "authError",
        extra={"location": "Authorization", "locationType": "header"},
        headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
    )


def insufficient_scopes(method: str) -> ApiError:
    return ApiError(
        403,
        "Request had insufficient authentication scopes.",
        "insufficientPermissions",
        headers={
            "WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="insufficient_scope"'
        },
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                "domain": "googleapis.com",
                "metadata": {
                    "service": "gmail.googleapis.com",
                    "method": f"caribou.api.proto.MailboxService.{method}",
                },
            }
        ],
    )


def forbidden(message: str) -> ApiError:
    return ApiError(403, message, "forbidden")


def not_found(message: str = "Requested entity was not found.") -> ApiError:
    return ApiError(404, message, "notFound")


def invalid_argument(message: str, reason: str = "invalidArgument") -> ApiError:
    return ApiError(400, message, reason)


def failed_precondition(message: str) -> ApiError:
    return ApiError(400, message, "failedPrecondition", status="FAILED_PRECONDITION")


def rate_limited(retry_after_s: int, until_iso: str) -> ApiError:
    return ApiError(
        429,
        f"User-rate limit exceeded.  Retry after {until_iso}",
        "rateLimitExceeded",
        domain="usageLimits",
        headers={"Retry-After": str(retry_after_s)},
    )


def backend_error(code: int = 500) -> ApiError:
    if code == 503:
        return ApiError(503, "The service is currently unavailable.", "backendError")
    if code == 504:
        return ApiError(504, "The request timed out. Please try again.", "backendError")
    return ApiError(code, "Internal error encountered.", "backendError")


def from_status(code: int) -> ApiError:
    """The error Google answers for an injected fault of this HTTP status."""
    if code == 429:
        return rate_limited(1, "a moment")
    if code == 403:
        return ApiError(
            403,
            "User-rate limit exceeded.",
            "userRateLimitExceeded",
            domain="usageLimits",
            status="PERMISSION_DENIED",
        )
    if code == 401:
        return unauthenticated()
    if code == 404:
        return not_found()
    if code == 400:
        return failed_precondition("Precondition check failed.")
    return backend_error(code)
