"""The gateway's settings, read once at start-up (``load_or_exit``): a bad one stops it with one line."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from urllib.parse import urlsplit

from coffeeping.common.access_log import AccessLogRetention
from coffeeping.common.config import ConfigError, csv_list, host_port, integer, secret_text, setting, url
from coffeeping.common.metrics import MetricsSettings
from coffeeping.common.rpc import TlsSettings

DEVELOPMENT, PRODUCTION = "development", "production"


def origin(address: str) -> str:
    """``scheme://host[:port]`` of a URL: what a browser sends as ``Origin``."""
    parts = urlsplit(address)
    return f"{parts.scheme}://{parts.netloc}"


def publishable_key(raw: str) -> str:
    """A Clerk publishable key: ``pk_test_`` or ``pk_live_`` and the base64 of ``<frontend api host>$``."""
    frontend_api_host(raw)
    return raw


def frontend_api_host(key: str) -> str:
    prefix, _, encoded = key.partition("_")[2].partition("_")
    try:
        decoded = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        decoded = ""
    if prefix not in ("test", "live") or not key.startswith("pk_") or not decoded.endswith("$") or len(decoded) < 2:
        raise ValueError("must be a Clerk publishable key (pk_test_... or pk_live_...)")
    return decoded[:-1]


def environment(raw: str) -> str:
    value = raw.strip().lower()
    if value not in (DEVELOPMENT, PRODUCTION):
        raise ValueError(f"must be {DEVELOPMENT} or {PRODUCTION}")
    return value


@dataclass(frozen=True)
class Settings(TlsSettings, AccessLogRetention, MetricsSettings):  # the retention: told on the console's Privacy page
    # Unset means production, so a forgotten setting fails closed; any other value stops the start.
    environment: str = setting("COFFEEPING_ENV", environment, default=PRODUCTION)
    port: int = setting("GATEWAY_PORT", integer(1, 65535), default=8080)
    workers: int = setting("GATEWAY_WORKERS", integer(1, 64), default=2)
    threads: int = setting("GATEWAY_THREADS", integer(1, 256), default=16)
    clerk_jwks_url: str = setting("CLERK_JWKS_URL", url)
    clerk_issuer: str = setting("CLERK_ISSUER", url)
    clerk_authorized_parties: tuple[str, ...] = setting("CLERK_AUTHORIZED_PARTIES", csv_list, default=())
    clerk_webhook_secret: str = setting("CLERK_WEBHOOK_SECRET", secret_text(16), secret=True)
    oauth_state_secret: str = setting("OAUTH_STATE_SECRET", secret_text(32), secret=True)
    google_client_id: str = setting("GOOGLE_CLIENT_ID")
    google_redirect_uri: str = setting("GOOGLE_REDIRECT_URI", url)
    google_auth_url: str = setting("GOOGLE_AUTH_URL", url, default="https://accounts.google.com/o/oauth2/v2/auth")
    app_url: str = setting("APP_URL", url)
    cors_origins: tuple[str, ...] = setting("CORS_ALLOWED_ORIGINS", csv_list, default=())
    max_body_bytes: int = setting("GATEWAY_MAX_BODY_BYTES", integer(1024, 64 * 1024 * 1024), default=2 * 1024 * 1024)
    accounts_addr: str = setting("ACCOUNTS_GRPC_ADDR", host_port, default="127.0.0.1:50051")
    vault_addr: str = setting("TOKEN_VAULT_GRPC_ADDR", host_port, default="127.0.0.1:50052")
    mailer_addr: str = setting("MAILER_GRPC_ADDR", host_port, default="127.0.0.1:50053")
    watcher_addr: str = setting("REPLY_WATCHER_GRPC_ADDR", host_port, default="127.0.0.1:50054")
    rpc_timeout_s: int = setting("GATEWAY_RPC_TIMEOUT_S", integer(1, 600), default=30)
    log_level: str = setting("LOG_LEVEL", default="INFO")
    # Gmail push (Cloud Pub/Sub push subscription with OIDC authentication): off unless both are set.
    gmail_push_audience: str = setting("GMAIL_PUSH_AUDIENCE", default="")
    gmail_push_service_account: str = setting("GMAIL_PUSH_SERVICE_ACCOUNT", default="")
    google_oidc_certs_url: str = setting("GOOGLE_OIDC_CERTS_URL", url,
                                         default="https://www.googleapis.com/oauth2/v1/certs")
    # The web console (docs/CONSOLE.md): served when CONSOLE_URL is set. Sign-in is Clerk's hosted page;
    # Clerk's frontend script (from the Frontend API named by the publishable key) keeps the session fresh.
    # Without a publishable key (development: a warning is logged) the console's own script refreshes the
    # session at CLERK_FRONTEND_API, the sandbox's Clerk stand-in.
    console_url: str = setting("CONSOLE_URL", url, default="")
    clerk_sign_in_url: str = setting("CLERK_SIGN_IN_URL", url, default="")
    clerk_publishable_key: str = setting("CLERK_PUBLISHABLE_KEY", publishable_key, default="")
    clerk_frontend_api: str = setting("CLERK_FRONTEND_API", url, default="")

    def __post_init__(self) -> None:
        # Without allowed parties a session token minted for any other Clerk frontend would be accepted;
        # only a developer's machine may run so (the gateway then checks no ``azp``).
        if not self.clerk_authorized_parties and self.environment != DEVELOPMENT:
            raise ConfigError("CLERK_AUTHORIZED_PARTIES is required unless COFFEEPING_ENV=development")
        # /metrics is served by gunicorn's master on a port of its own, never on the public one.
        if self.metrics_port and self.metrics_port == self.port:
            raise ConfigError("METRICS_PORT must differ from GATEWAY_PORT: metrics are never served on the public port")
        if self.console_url:
            self._check_console()

    def _check_console(self) -> None:
        if not self.clerk_sign_in_url:
            raise ConfigError("CONSOLE_URL needs CLERK_SIGN_IN_URL (Clerk's hosted sign-in page)")
        if not self.clerk_publishable_key and not self.clerk_frontend_api:
            raise ConfigError("CONSOLE_URL needs CLERK_PUBLISHABLE_KEY or CLERK_FRONTEND_API")
        # The console's forms ride on the session cookie: its origin must pass the cross-site check.
        if origin(self.console_url) not in self.cors_origins:
            raise ConfigError("CORS_ALLOWED_ORIGINS must include the origin of CONSOLE_URL")
        if self.clerk_authorized_parties and origin(self.console_url) not in self.clerk_authorized_parties:
            raise ConfigError("CLERK_AUTHORIZED_PARTIES must include the origin of CONSOLE_URL")

    @property
    def console_frontend_api(self) -> str:
        """Where the browser refreshes its Clerk session: configured, or named by the publishable key."""
        if self.clerk_frontend_api or not self.clerk_publishable_key:
            return self.clerk_frontend_api
        return "https://" + frontend_api_host(self.clerk_publishable_key)
