"""Events the token vault consumes."""

from __future__ import annotations

from sqlalchemy import Connection

from coffeeping.common.messaging import Event, Handler
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping_vault.services import Vault


def make_handler(vault: Vault) -> Handler:
    def handle(conn: Connection, event: Event) -> None:
        if isinstance(event.message, ev.AccountRevokeRequested):
            vault.purge_for_deletion(conn, event.user_id, event.message)

    return handle
