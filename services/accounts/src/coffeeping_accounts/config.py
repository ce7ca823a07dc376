from __future__ import annotations

from dataclasses import dataclass

from coffeeping.common.config import db_url, host_port, number, setting
from coffeeping.common.runtime import ServiceSettings


@dataclass(frozen=True)
class Settings(ServiceSettings):
    vault_addr: str = setting("VAULT_GRPC_ADDR", host_port, default="127.0.0.1:50052")
    mailer_addr: str = setting("MAILER_GRPC_ADDR", host_port, default="127.0.0.1:50053")
    watcher_addr: str = setting("WATCHER_GRPC_ADDR", host_port, default="127.0.0.1:50054")
    # A deletion step that reports nothing for this long is shown as failed (its message may have been
    # dead-lettered); the operator retries it with ``retry-deletion``.
    deletion_step_deadline_s: float = setting("DELETION_STEP_DEADLINE_S", number(1.0), default=900.0)
    deletion_watch_interval_s: float = setting("DELETION_WATCH_INTERVAL_S", number(0.1), default=30.0)
    export_timeout_s: float = setting("EXPORT_TIMEOUT_S", number(1.0), default=300.0)


@dataclass(frozen=True)
class OperatorSettings:
    """What the operator commands need: the service's database only."""

    database_url: str = setting("DATABASE_URL", db_url)
