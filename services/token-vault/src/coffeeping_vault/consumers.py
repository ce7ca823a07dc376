"""Events the token vault consumes."""

from __future__ import annotations

from sqlalchemy import Connection

from coffeeping_vault.services import Vault


def make_handler(vault: Vault):  # type: ignore[no-untyped-def]
    def handle(conn: Connection, event: dict) -> None:
        if event["type"] == "account.revoke_requested":
            vault.purge_for_deletion(conn, event)

    return handle
