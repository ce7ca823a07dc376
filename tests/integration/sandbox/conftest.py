"""Fixtures shared by every sandbox test (OAuth, KMS, Clerk and the Gmail stand-in's tests).

``sandbox`` is one running sandbox per test session (real HTTP and gRPC servers on free ports), reset
before each test so no state leaks between tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from coffeeping_sandbox.server import Sandbox, start_sandbox


@dataclass(frozen=True)
class OAuthClient:
    client_id: str
    client_secret: str
    redirect_uri: str


WEB_CLIENT = OAuthClient(
    client_id="coffeeping-web.apps.googleusercontent.com",
    client_secret="GOCSPX-sandbox-web-secret",
    redirect_uri="http://localhost:8080/v1/gmail/callback",
)
OTHER_CLIENT = OAuthClient(
    client_id="other-app.apps.googleusercontent.com",
    client_secret="GOCSPX-sandbox-other-secret",
    redirect_uri="http://localhost:9999/callback",
)


@pytest.fixture(scope="session")
def sandbox_session() -> Iterator[Sandbox]:
    sb = start_sandbox(
        clients=[
            (WEB_CLIENT.client_id, WEB_CLIENT.client_secret, [WEB_CLIENT.redirect_uri]),
            (OTHER_CLIENT.client_id, OTHER_CLIENT.client_secret, [OTHER_CLIENT.redirect_uri]),
        ],
    )
    try:
        yield sb
    finally:
        sb.stop()


@pytest.fixture
def sandbox(sandbox_session: Sandbox) -> Sandbox:
    """The running sandbox, freshly reset (no grants, keys, messages, faults or logged requests)."""
    sandbox_session.reset()
    return sandbox_session


@pytest.fixture
def web_client() -> OAuthClient:
    """The OAuth client registered in the sandbox for CoffeePing's gateway."""
    return WEB_CLIENT


@pytest.fixture
def other_client() -> OAuthClient:
    """A second registered OAuth client (another app)."""
    return OTHER_CLIENT


@pytest.fixture
def google_token(sandbox: Sandbox):
    """Factory: ``google_token(email=..., scopes=[...]) -> access token`` without a browser flow.

    Scopes may be short (``gmail.send``) or full URLs. The token is valid for the Gmail stand-in.
    """

    def make(email: str = "alice@example.com", scopes: tuple[str, ...] | list[str] = ("gmail.send",)) -> str:
        return sandbox.oauth.issue_tokens(email=email, scopes=scopes, client_id=WEB_CLIENT.client_id)[
            "access_token"
        ]

    return make
