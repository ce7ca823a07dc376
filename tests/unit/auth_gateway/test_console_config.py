"""The console's settings: off unless CONSOLE_URL is set, and then complete and consistent, or the
gateway stops with one line."""

from __future__ import annotations

import base64

import pytest

from coffeeping.common.config import ConfigError
from tests.unit.auth_gateway.console_app import CONSOLE, settings


def test_the_console_is_off_without_a_console_url():
    assert settings(CONSOLE_URL="").console_url == ""


@pytest.mark.parametrize("overrides, complaint", [
    ({"CLERK_SIGN_IN_URL": ""}, "CLERK_SIGN_IN_URL"),
    ({"CORS_ALLOWED_ORIGINS": "http://localhost:3000"}, "CORS_ALLOWED_ORIGINS"),
    ({"CLERK_AUTHORIZED_PARTIES": "http://localhost:3000"}, "CLERK_AUTHORIZED_PARTIES"),
    ({"CLERK_FRONTEND_API": ""}, "CLERK_FRONTEND_API"),
    ({"CLERK_PUBLISHABLE_KEY": "pk_live_not-base64!"}, "CLERK_PUBLISHABLE_KEY"),
])
def test_an_incomplete_console_configuration_stops_the_start(overrides, complaint):
    with pytest.raises(ConfigError, match=complaint):
        settings(**overrides)


def test_the_frontend_api_comes_from_the_publishable_key_in_production():
    key = "pk_live_" + base64.b64encode(b"clerk.coffeeping.io$").decode().rstrip("=")
    configured = settings(COFFEEPING_ENV="production", CLERK_PUBLISHABLE_KEY=key, CLERK_FRONTEND_API="")
    assert configured.console_frontend_api == "https://clerk.coffeeping.io"
    assert configured.console_url == CONSOLE
