"""Google's batch endpoint (``POST /batch/gmail/v1``): multipart/mixed of ``application/http`` parts.

Each inner request is dispatched to the same Flask app, so it goes through the same auth, scope, quota,
rate-limit, fault and logging path as a direct call, and is answered in Google's batch response format
(``Content-ID: <response-ID>``), which ``googleapiclient.http.BatchHttpRequest`` parses.
"""

from __future__ import annotations

import secrets
from email.parser import BytesFeedParser
from http import HTTPStatus

import flask

from .gmail_errors import ApiError, invalid_argument

MAX_BATCH = 100  # Gmail refuses more than 100 calls in one batch


def _parse_inner(payload: bytes) -> tuple[str, str, dict[str, str], bytes]:
    head, _, body = payload.replace(b"\r\n", b"\n").partition(b"\n\n")
    lines = head.decode("utf-8", "replace").split("\n")
    parts = lines[0].split(" ")
    if len(parts) < 2:
        raise invalid_argument("Failed to parse batch request, error: bad request line", reason="badRequest")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    return parts[0].upper(), parts[1], headers, body


def batch_view() -> flask.Response:
    ctype = flask.request.headers.get("Content-Type", "")
    if not ctype.lower().startswith("multipart/mixed"):
        return invalid_argument("Failed to parse batch request: expected multipart/mixed").response()
    parser = BytesFeedParser()
    parser.feed(f"Content-Type: {ctype}\r\n\r\n".encode() + flask.request.get_data())
    outer = parser.close()
    parts = outer.get_payload() if outer.is_multipart() else []
    if not isinstance(parts, list) or not parts:
        return invalid_argument("Failed to parse batch request: no parts").response()
    if len(parts) > MAX_BATCH:
        return ApiError(400, f"Too many requests in batch (max {MAX_BATCH}).", "batchSizeTooLarge").response()
    client = flask.current_app.test_client()
    outer_auth = flask.request.headers.get("Authorization")
    boundary = "batch_" + secrets.token_hex(12)
    chunks: list[bytes] = []
    for part in parts:
        content_id = (part.get("Content-ID") or "").strip()
        raw = part.get_payload(decode=False)
        payload = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""
        try:
            method, path, headers, body = _parse_inner(payload)
        except ApiError as err:
            status, resp_headers, resp_body = (
                err.code,
                {"Content-Type": "application/json"},
                err.response().data,
            )
        else:
            if outer_auth and not any(k.lower() == "authorization" for k in headers):
                headers["Authorization"] = outer_auth
            resp = client.open(path, method=method, headers=headers, data=body)
            status, resp_body = resp.status_code, resp.get_data()
            resp_headers = {
                k: v
                for k, v in resp.headers.items()
                if k.lower() in ("content-type", "retry-after", "www-authenticate")
            }
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Unknown"
        inner = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in resp_headers.items())
        inner_bytes = inner.encode() + b"\r\n" + resp_body
        rid = content_id[1:-1] if content_id.startswith("<") and content_id.endswith(">") else content_id
        head = "Content-Type: application/http\r\n" + (f"Content-ID: <response-{rid}>\r\n" if rid else "")
        chunks.append(f"--{boundary}\r\n{head}\r\n".encode() + inner_bytes + b"\r\n")
    body_out = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return flask.Response(body_out, status=200, content_type=f"multipart/mixed; boundary={boundary}")
