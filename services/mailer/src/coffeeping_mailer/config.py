from __future__ import annotations

from dataclasses import dataclass

from coffeeping.common.access_log import AccessLogSettings
from coffeeping.common.config import host_port, integer, number, setting, url
from coffeeping.common.runtime import ServiceSettings

ALL, API, SCHEDULER = "all", "api", "scheduler"
ROLES = (ALL, API, SCHEDULER)


def role(raw: str) -> str:
    """What one mailer process runs (``__main__``): everything, the API side, or the scheduler side."""
    value = raw.strip().lower()
    if value not in ROLES:
        raise ValueError("must be all, api or scheduler")
    return value


@dataclass(frozen=True)
class Settings(ServiceSettings, AccessLogSettings):
    # What this process runs: all (the local stack: everything in one process); api (the gRPC Mailer API,
    # the event consumer, the dead-letter janitor, the outbox relay and the access log's writer); or
    # scheduler (the scheduler, the outbox relay, the access log's writer, and gRPC health alone on
    # GRPC_PORT). Any number of processes of either role may run side by side (claims use SKIP LOCKED).
    role: str = setting("MAILER_ROLE", role, default=ALL)
    vault_addr: str = setting("TOKEN_VAULT_GRPC_ADDR", host_port, default="127.0.0.1:50052")
    gmail_api_endpoint: str = setting("GMAIL_API_ENDPOINT", url, default="https://gmail.googleapis.com")
    # How often the scheduler looks for due steps when it found none the last time.
    scheduler_interval_s: float = setting("MAILER_SCHEDULER_INTERVAL_S", number(0.05), default=5.0)
    # Parallel senders per process (threads overlapping their Gmail calls); they share a few database
    # connections, so this may well exceed the pool.
    scheduler_workers: int = setting("MAILER_SCHEDULER_WORKERS", integer(1, 128), default=16)
    # Sends per user per rolling 24 hours; the rest waits for the next window.
    daily_cap: int = setting("MAILER_DAILY_CAP", integer(1, 100_000), default=400)
    # Attempts of one step against Gmail 429/5xx before it is marked failed.
    max_attempts: int = setting("MAILER_MAX_ATTEMPTS", integer(1, 100), default=8)
    # How long an account deletion keeps retrying to remove the user's Gmail drafts before it reports
    # the ones left and lets the vault revoke the grant.
    draft_cleanup_s: float = setting("MAILER_DRAFT_CLEANUP_S", number(1.0), default=900.0)
    db_pool_size: int = setting("MAILER_DB_POOL_SIZE", integer(1, 200), default=5)
