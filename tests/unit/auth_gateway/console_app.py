"""A gateway app with the console, a stand-in verifier and stand-in gRPC stubs (no process, no network)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coffeeping.common.config import load
from coffeeping_gateway.app import create_app
from coffeeping_gateway.auth import InvalidToken, Session
from coffeeping_gateway.config import Settings

CONSOLE = "http://127.0.0.1:8080"
ENV = {
    "CLERK_JWKS_URL": "http://127.0.0.1:8701/.well-known/jwks.json", "CLERK_ISSUER": "http://127.0.0.1:8701",
    "CLERK_WEBHOOK_SECRET": "w" * 24, "OAUTH_STATE_SECRET": "s" * 48, "GOOGLE_CLIENT_ID": "client",
    "GOOGLE_REDIRECT_URI": f"{CONSOLE}/v1/gmail/callback", "GOOGLE_AUTH_URL": "http://127.0.0.1:8702/o/oauth2/v2/auth",
    "APP_URL": f"{CONSOLE}/settings", "COFFEEPING_ENV": "development", "CONSOLE_URL": CONSOLE,
    "CLERK_SIGN_IN_URL": "http://127.0.0.1:8701/sign-in", "CLERK_FRONTEND_API": "http://127.0.0.1:8701",
    "CORS_ALLOWED_ORIGINS": CONSOLE, "CLERK_AUTHORIZED_PARTIES": CONSOLE,
    "TLS_CA_CERT": "/dev/null", "TLS_CERT": "/dev/null", "TLS_KEY": "/dev/null",
}


class Verifier:
    """Accepts the token "good" as user_console."""

    def verify(self, token: str) -> Session:
        if token != "good":
            raise InvalidToken("bad")
        return Session(user_id="user_console", session_id="sess_1", issued_at=0)


class Stubs:
    """Each service's stub: a method answers what ``answers`` names for it."""

    def __init__(self, answers: dict[str, Callable[[Any], Any]]) -> None:
        self.answers = answers

    def __getattr__(self, method: str) -> Callable[..., Any]:
        return lambda request, metadata=None, timeout=None: self.answers[method](request)


class Clients:
    def __init__(self, **answers: Callable[[Any], Any]) -> None:
        self.accounts = self.vault = self.mailer = self.watcher = Stubs(answers)

    def metadata(self, user_id: str | None) -> list[tuple[str, str]]:
        return [("x-user-id", user_id or "")]


def settings(**overrides: str) -> Settings:
    return load(Settings, {**ENV, **overrides})


def console_app(**answers: Callable[[Any], Any]) -> Any:
    return create_app(settings(), verifier=Verifier(), clients=Clients(**answers))  # type: ignore[arg-type]
