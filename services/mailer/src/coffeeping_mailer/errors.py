"""Errors of the public API, answered by the mailer as problem documents (RFC 9457)."""

from __future__ import annotations

from typing import Any

_TITLES = {400: "Bad Request", 404: "Not Found", 409: "Conflict", 413: "Content Too Large",
           422: "Unprocessable Content", 429: "Too Many Requests", 503: "Service Unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, detail: str, errors: list[dict[str, Any]] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "about:blank", "title": _TITLES.get(self.status, "Error"),
                                "status": self.status, "detail": self.detail}
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


class Invalid(ApiError):
    """422 with one entry per bad field."""

    def __init__(self, errors: list[dict[str, Any]], detail: str = "the request has invalid fields") -> None:
        super().__init__(422, detail, errors)


def not_found(what: str) -> ApiError:
    return ApiError(404, f"no such {what}")


def conflict(detail: str, **extra: Any) -> ApiError:
    return ApiError(409, detail, **extra)
