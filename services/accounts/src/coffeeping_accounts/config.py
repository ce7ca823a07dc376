from __future__ import annotations

from dataclasses import dataclass

from coffeeping.common.config import db_url, host_port, number, setting
from coffeeping.common.runtime import ServiceSettings
from coffeeping.common.tombstones import TombstoneSettings


@dataclass(frozen=True)
class Settings(ServiceSettings):
    vault_addr: str = setting("TOKEN_VAULT_GRPC_ADDR", host_port, default="127.0.0.1:50052")
    mailer_addr: str = setting("MAILER_GRPC_ADDR", host_port, default="127.0.0.1:50053")
    watcher_addr: str = setting("REPLY_WATCHER_GRPC_ADDR", host_port, default="127.0.0.1:50054")
    # A deletion step that reports nothing for this long is shown as failed (its message may have been
    # dead-lettered); a repeated request or the operator's ``retry-deletion`` restarts it. Longer than
    # the mailer's bounded draft cleanup (MAILER_DRAFT_CLEANUP_S, 15 minutes by default).
    deletion_step_deadline_s: float = setting("DELETION_STEP_DEADLINE_S", number(1.0), default=1800.0)
    deletion_watch_interval_s: float = setting("DELETION_WATCH_INTERVAL_S", number(0.1), default=30.0)
    export_timeout_s: float = setting("EXPORT_TIMEOUT_S", number(1.0), default=300.0)
    # Users seen by GetMe kept in memory at most this long (a backstop: an accepted deletion evicts them
    # at once through a PostgreSQL notification); 0 turns the in-memory cache off.
    known_users_max_age_s: float = setting("ACCOUNTS_KNOWN_USERS_MAX_AGE_S", number(0.0), default=300.0)


@dataclass(frozen=True)
class OperatorSettings(TombstoneSettings):
    """What the operator commands need: the service's database, and the tombstone key (a retried
    deletion that completes buries the user)."""

    database_url: str = setting("DATABASE_URL", db_url)
