"""Events the token vault consumes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from coffeeping.common.messaging.consumer import Handler
from coffeeping_vault.services import Vault


def make_handler(vault: Vault) -> Handler:
    def handle(conn: Connection, event: dict[str, Any]) -> None:
        if event["type"] == "account.revoke_requested":
            vault.purge_for_deletion(conn, event)

    return handle
