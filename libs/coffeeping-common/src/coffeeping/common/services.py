"""The one list of CoffeePing's services: name, Python package, default port, database schema.

Everything that needs the list takes it from here: the local stack (``deploy/stack.py``), the database
and broker bootstraps, the development certificates, the messaging topology and registry. The name is
also the mTLS certificate's common name and the broker login's suffix.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Service:
    name: str
    package: str  # ``python -m <package>`` runs it
    port: int  # gRPC, or HTTP for the gateway
    schema: str | None  # its PostgreSQL schema, None when it stores nothing

    @property
    def folder(self) -> str:
        return f"services/{self.name}"


ACCOUNTS = Service("accounts", "coffeeping_accounts", 50051, "accounts")
VAULT = Service("token-vault", "coffeeping_vault", 50052, "vault")
MAILER = Service("mailer", "coffeeping_mailer", 50053, "mailer")
WATCHER = Service("reply-watcher", "coffeeping_reply_watcher", 50054, "watcher")
GATEWAY = Service("auth-gateway", "coffeeping_gateway", 8080, None)

# In start-up order: the gateway last, once the services it calls answer.
ALL = (ACCOUNTS, VAULT, MAILER, WATCHER, GATEWAY)
# The services with data of their own: a schema, a broker login, a queue.
BACKENDS = tuple(s for s in ALL if s.schema)
BY_NAME = {s.name: s for s in ALL}

__all__ = ["ACCOUNTS", "ALL", "BACKENDS", "BY_NAME", "GATEWAY", "MAILER", "Service", "VAULT", "WATCHER"]
