"""The vault's part of a user's access log: every access token it handed out for the user's grant (who
got it, for which scopes, until when), from the ``token_issued`` records of ``vault.audit``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, false, func, literal, select

from coffeeping.common.access_log import Filter, Page, day_of, describe
from coffeeping.common.db import user_tx
from coffeeping.common.tombstones import is_buried
from coffeeping.types.v1 import access_pb2
from coffeeping_vault.models import audit
from coffeeping_vault.services import SCHEMA, Vault

SERVICE = "token-vault"
KIND = "token_issued"
METHOD = "TokenVault.GetAccessToken"


def _issues(flt: Filter, page: Page | None = None) -> list[ColumnElement[bool]]:
    """The user's token issues that ``flt`` keeps (none when it asks for another kind or method), after
    ``page``'s cursor."""
    kind, method = literal(KIND), literal(METHOD)
    found = [audit.c.action == KIND, audit.c.outcome == "ok",
             *(page.conditions(audit.c.at, audit.c.id, kind, method) if page else flt.conditions(audit.c.at, kind,
                                                                                               method))]
    if (flt.kind and flt.kind != KIND) or (flt.method and flt.method != METHOD):
        found.append(false())
    return found


def _entry(row: Any) -> access_pb2.AccessEntry:
    entry = access_pb2.AccessEntry(id=row.id, service=SERVICE, at=row.at, kind=KIND, method=METHOD,
                                   scopes=row.scopes or [], caller=row.caller, expires_at=row.expires_at)
    entry.description = describe(SERVICE, entry)
    return entry


def list_entries(vault: Vault, user_id: str, page: Page) -> access_pb2.ListAccessEntriesResponse:
    vault.audit.flush()  # this process's queued issues first; other processes write theirs within ~100 ms
    query = (select(audit.c.id, audit.c.at, audit.c.caller, audit.c.scopes, audit.c.expires_at)
             .where(*_issues(page.filter, page))
             .order_by(audit.c.at.desc(), audit.c.id.desc()).limit(page.size))
    with user_tx(vault.engine, user_id) as conn:
        if is_buried(conn, SCHEMA, vault.tombstone_key, user_id):
            return access_pb2.ListAccessEntriesResponse()
        rows = conn.execute(query).all()
    return access_pb2.ListAccessEntriesResponse(entries=[_entry(row) for row in rows])


def summarize(vault: Vault, user_id: str, flt: Filter) -> access_pb2.SummarizeAccessResponse:
    day = day_of(audit.c.at).label("day")
    query = select(day, func.count().label("calls")).where(*_issues(flt)).group_by(day).order_by(day)
    with user_tx(vault.engine, user_id) as conn:
        if is_buried(conn, SCHEMA, vault.tombstone_key, user_id):
            return access_pb2.SummarizeAccessResponse()
        rows = conn.execute(query).all()
    return access_pb2.SummarizeAccessResponse(
        counts=[access_pb2.AccessCount(day=r.day, kind=KIND, calls=r.calls) for r in rows])
