"""``COFFEEPING_SANDBOX=off deploy/run.sh``: every application setting comes from the operator's
environment as given, and a missing one stops the run before anything starts, named."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

from stack import StackConfig

ROOT = Path(__file__).resolve().parents[3]

OPERATOR = {
    "GATEWAY_PORT": "18080",
    "GOOGLE_CLIENT_ID": "operator-client.apps.googleusercontent.com",
    "GOOGLE_CLIENT_SECRET": "operator-client-secret",
    "GOOGLE_REDIRECT_URI": "https://app.example.com/v1/gmail/callback",
    "APP_URL": "https://app.example.com",
    "OAUTH_STATE_SECRET": "o" * 48,
    "CLERK_WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"w" * 24).decode(),
    "TOKEN_VAULT_LOCAL_KEY": base64.b64encode(b"k" * 32).decode(),
}


def test_the_operators_values_reach_the_services_unchanged(tmp_path):
    config = StackConfig(var_dir=tmp_path, sandbox=False, environ=dict(OPERATOR))
    gateway, vault = config.env("auth-gateway"), config.env("token-vault")
    for name in ("GATEWAY_PORT", "GOOGLE_CLIENT_ID", "GOOGLE_REDIRECT_URI", "APP_URL", "OAUTH_STATE_SECRET",
                 "CLERK_WEBHOOK_SECRET"):
        assert gateway[name] == OPERATOR[name], name
    for name in ("GOOGLE_CLIENT_ID", "GOOGLE_CLIENT_SECRET", "TOKEN_VAULT_LOCAL_KEY"):
        assert vault[name] == OPERATOR[name], name
    assert config.gateway_url.endswith(":18080")
    # Nothing of the development set-up is added: no sandbox endpoint, no development mode.
    assert "COFFEEPING_ENV" not in gateway and "CLERK_JWKS_URL" not in gateway and "KMS_ENDPOINT" not in vault


def test_what_is_missing_is_named_for_each_service_that_needs_it(tmp_path):
    found = StackConfig(var_dir=tmp_path, sandbox=False, environ=dict(OPERATOR)).settings_problems()
    assert "auth-gateway: CLERK_JWKS_URL is required but not set" in found
    assert "token-vault: TOMBSTONE_KEY is required but not set" in found
    assert "mailer: TOMBSTONE_KEY is required but not set" in found
    assert not any(OPERATOR["OAUTH_STATE_SECRET"] in line or OPERATOR["GOOGLE_CLIENT_SECRET"] in line for line in found)
    # With the sandbox, the run command supplies everything itself.
    assert StackConfig(var_dir=tmp_path).settings_problems() == []


def test_the_run_command_refuses_to_start_and_says_why(tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "COFFEEPING_SANDBOX": "off", **OPERATOR}
    result = subprocess.run([sys.executable, str(ROOT / "deploy" / "run.py")], env=env, capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert "nothing was started" in result.stderr
    assert "auth-gateway: CLERK_ISSUER is required but not set" in result.stderr
    assert "CoffeePing is running" not in result.stdout
