"""The gateway's settings, read once at start-up (``load_or_exit``): a bad one stops it with one line."""

from __future__ import annotations

from dataclasses import dataclass

from coffeeping.common.config import ConfigError, csv_list, host_port, integer, secret_text, setting, url
from coffeeping.common.rpc import TlsSettings

DEVELOPMENT, PRODUCTION = "development", "production"


def environment(raw: str) -> str:
    value = raw.strip().lower()
    if value not in (DEVELOPMENT, PRODUCTION):
        raise ValueError(f"must be {DEVELOPMENT} or {PRODUCTION}")
    return value


@dataclass(frozen=True)
class Settings(TlsSettings):
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

    def __post_init__(self) -> None:
        # Without allowed parties a session token minted for any other Clerk frontend would be accepted;
        # only a developer's machine may run so (the gateway then checks no ``azp``).
        if not self.clerk_authorized_parties and self.environment != DEVELOPMENT:
            raise ConfigError("CLERK_AUTHORIZED_PARTIES is required unless COFFEEPING_ENV=development")
