"""The log formatter's second line of defence: whatever looks like a token is masked, in any case."""

from __future__ import annotations

import pytest

from coffeeping.common.logging import mask_secrets


@pytest.mark.parametrize("secret", [
    "Authorization: Bearer abc.def-ghi",
    "authorization: BEARER abc",
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyXzEifQ.c2lnbmF0dXJl",
    "ya29.a0AfH6SMBx-secret",
    "1//0gLx-refresh-token",
    "https://x/?access_token=abc&y=1",
    "refresh_token=r1",
    "CLIENT_SECRET=s3cr3t",
    "Code_Verifier=v",
])
def test_every_kind_of_token_is_masked(secret):
    masked = mask_secrets(f"before {secret} after")
    assert "[redacted]" in masked and masked.startswith("before ")
    assert not any(part in masked for part in ("abc.def", "a0AfH6", "0gLx", "s3cr3t", "c2lnbmF0dXJl", "r1 ")), masked


def test_a_line_without_any_is_returned_as_it_is():
    line = '{"msg": "rpc", "rpc_method": "/coffeeping.accounts.v1.Accounts/GetMe", "code": "OK", "ms": 1.2}'
    assert mask_secrets(line) is line


def test_an_error_carries_its_frames_but_no_values(capsys):
    import json
    import logging

    from coffeeping.common.logging import JsonFormatter

    def deep(address: str) -> None:
        secret_local = f"mail for {address}"  # noqa: F841 - a local that must never reach a log line
        raise KeyError("step")

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter("test"))
    log = logging.getLogger("test_logging_frames")
    log.addHandler(handler)
    try:
        deep("ada@example.com")
    except KeyError as exc:
        log.error("unhandled error", exc_info=exc)
    finally:
        log.removeHandler(handler)
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["error"] == "KeyError: 'step'"
    assert entry["stack"][-1].startswith("test_logging.py:") and entry["stack"][-1].endswith(" in deep")
    assert "ada@example.com" not in json.dumps(entry) and "secret_local" not in json.dumps(entry)
