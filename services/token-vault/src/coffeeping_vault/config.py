"""The token vault's settings, read once at start-up."""

from __future__ import annotations

import re
from dataclasses import dataclass

from coffeeping.common.access_log import AccessLogRetention
from coffeeping.common.config import ConfigError, host_port, integer, key32, number, setting, url
from coffeeping.common.runtime import ServiceSettings

_KMS_KEY = re.compile(r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$")


def kms_key_name(raw: str) -> str:
    if not _KMS_KEY.match(raw):
        raise ValueError("must look like projects/*/locations/*/keyRings/*/cryptoKeys/*")
    return raw


@dataclass(frozen=True)
class Settings(ServiceSettings, AccessLogRetention):
    google_client_id: str = setting("GOOGLE_CLIENT_ID")
    google_client_secret: str = setting("GOOGLE_CLIENT_SECRET", secret=True)
    google_token_url: str = setting("GOOGLE_TOKEN_URL", url, default="https://oauth2.googleapis.com/token")
    google_revoke_url: str = setting("GOOGLE_REVOKE_URL", url, default="https://oauth2.googleapis.com/revoke")
    google_userinfo_url: str = setting(
        "GOOGLE_USERINFO_URL", url, default="https://openidconnect.googleapis.com/v1/userinfo"
    )
    google_timeout_s: float = setting("TOKEN_VAULT_GOOGLE_TIMEOUT_S", number(0.1), default=10.0)
    google_attempts: int = setting("TOKEN_VAULT_GOOGLE_ATTEMPTS", integer(1, 10), default=4)
    kms_key_name: str = setting("KMS_KEY_NAME", kms_key_name, default="")
    kms_endpoint: str = setting("KMS_ENDPOINT", host_port, default="")
    kms_timeout_s: float = setting("TOKEN_VAULT_KMS_TIMEOUT_S", number(0.1), default=5.0)
    local_key: bytes | None = setting("TOKEN_VAULT_LOCAL_KEY", key32, default=None, secret=True)
    data_key_cache_ttl_s: float = setting("TOKEN_VAULT_DATA_KEY_CACHE_TTL_S", number(0.0), default=3600.0)
    data_key_cache_size: int = setting("TOKEN_VAULT_DATA_KEY_CACHE_SIZE", integer(1, 10_000_000), default=100_000)
    # Decrypted access tokens kept in memory at most this long (a backstop: grant changes evict them
    # at once through PostgreSQL notifications); 0 turns the in-memory cache off.
    token_cache_max_age_s: float = setting("TOKEN_VAULT_TOKEN_CACHE_MAX_AGE_S", number(0.0), default=60.0)
    token_cache_size: int = setting("TOKEN_VAULT_TOKEN_CACHE_SIZE", integer(1, 10_000_000), default=100_000)
    # How often queued token-issue records are written (at most this much is lost in a hard crash).
    audit_flush_s: float = setting("TOKEN_VAULT_AUDIT_FLUSH_S", number(0.01), default=0.1)
    # An account deletion's revocation is retried until Google confirms it, at most this long apart.
    revoke_retry_cap_s: float = setting("TOKEN_VAULT_REVOKE_RETRY_CAP_S", number(0.1), default=300.0)
    db_pool_size: int = setting("TOKEN_VAULT_DB_POOL_SIZE", integer(1, 200), default=8)
    grpc_workers: int = setting("TOKEN_VAULT_GRPC_WORKERS", integer(1, 512), default=32)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.kms_key_name and self.local_key is None:
            raise ConfigError("KMS_KEY_NAME or TOKEN_VAULT_LOCAL_KEY is required (neither is set)")
