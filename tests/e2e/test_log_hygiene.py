"""No token, key, Authorization header, email address, subject or email body in any service's log line.

Runs after every other test, over all the logs the shared stack's services wrote during the session
(error paths included: ``test_error_paths.py`` drives a database error, Gmail 4xx/5xx, a KMS failure
and a poisoned message), and compares them with every secret the session handed out, every address
that wrote or was written to, and every message in the sandbox.
"""

from __future__ import annotations

import json
import re

import pytest
import requests
from stack import dev_secrets


@pytest.mark.last
def test_service_logs_are_json_lines_free_of_secrets_and_content(stack):
    grants = requests.get(f"{stack.google}/_sandbox/grants", timeout=10).json()
    grants = grants.get("grants", grants) if isinstance(grants, dict) else grants
    forbidden: dict[str, str] = {}
    for token in stack.minted:
        forbidden[token] = "clerk session token"
        forbidden[token.split(".")[2]] = "clerk token signature"
    for name, value in dev_secrets(stack.config.var_dir / "dev-secrets.env").items():
        forbidden[value] = name
    emails = set()
    for grant in grants:
        emails.add(grant["email"])
        for token in grant["refresh_tokens"]:
            forbidden[token["token"]] = "google refresh token"
        for token in grant["access_tokens"]:
            forbidden[token["token"]] = "google access token"
    for email in emails:
        forbidden[email.lower()] = "email address"
        mailbox = requests.get(f"{stack.google}/_sandbox/gmail/mailbox", params={"user": email}, timeout=10).json()
        messages = [m for t in mailbox.get("threads", []) for m in t["messages"]]
        messages += [d["message"] for d in mailbox.get("drafts", [])]
        for message in messages:
            for field in ("from", "to"):
                for address in re.findall(r"[\w.+-]+@[\w.-]+", message.get(field) or ""):
                    forbidden[address.lower()] = "email address"
            for line in (message.get("body") or "").splitlines():
                if len(line.strip()) >= 16:
                    forbidden[line.strip()] = "email body"
            subject = (message.get("subject") or "").strip()
            if len(subject) >= 12:
                forbidden[subject] = "email subject"
    logs = sorted((stack.config.var_dir / "logs").glob("*.log"))
    assert logs
    checked = 0
    for path in logs:
        if path.name == "sandbox.log":
            continue  # the stand-ins are test tooling, not our services
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)  # one JSON object per line, nothing else
            except json.JSONDecodeError:
                raise AssertionError(f"not a JSON line: {path.name}:{number}: {line[:200]}") from None
            assert {"ts", "level", "service", "msg"} <= entry.keys(), (path.name, number)
            lowered = line.lower()
            assert "authorization" not in lowered or "bearer" not in lowered, (path.name, number)
            assert "traceback" not in lowered or "@" not in lowered, f"a stack trace with an address: {path.name}"
            for value, what in forbidden.items():
                assert value.lower() not in lowered, f"{what} in {path.name}:{number}"
            checked += 1
    assert checked > 0
