"""Home: the user's sequences with their status, next step and timeline, filtered by status; the list
refreshes in place (its fragment) so a reply shows without a reload."""

from __future__ import annotations

from typing import Any

from flask import Response

from coffeeping.mailer.v1 import mailer_pb2 as pb
from coffeeping.vault.v1 import vault_pb2
from coffeeping_gateway.api import from_message, parse_query
from coffeeping_gateway.console.frontend import bp, page, render
from coffeeping_gateway.schemas import Sequence, SequenceQuery
from coffeeping_gateway.web import call, clients

PAGE_SIZE = 20


def _listing() -> dict[str, Any]:
    query = parse_query(SequenceQuery)
    found = call(clients().mailer.ListSequences, pb.ListSequencesRequest(
        page_size=PAGE_SIZE, page_token=query.cursor, status=query.status))
    return {"sequences": [from_message(Sequence, s) for s in found.sequences],
            "next_cursor": found.next_page_token or None, "status": query.status, "cursor": query.cursor}


@bp.get("/")
@page
def home() -> Response:
    grant = call(clients().vault.GetGrantInfo, vault_pb2.GetGrantInfoRequest())
    return render("home.html", gmail_connected=grant.connected, **_listing())


@bp.get("/fragments/sequences")
def sequence_list() -> Response:
    return render("_sequence_list.html", **_listing())
