from __future__ import annotations

from dataclasses import dataclass

from coffeeping.common.config import host_port, setting
from coffeeping.common.runtime import ServiceSettings


@dataclass(frozen=True)
class Settings(ServiceSettings):
    vault_addr: str = setting("VAULT_GRPC_ADDR", host_port, default="127.0.0.1:50052")
    mailer_addr: str = setting("MAILER_GRPC_ADDR", host_port, default="127.0.0.1:50053")
    watcher_addr: str = setting("WATCHER_GRPC_ADDR", host_port, default="127.0.0.1:50054")
