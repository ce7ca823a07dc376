"""The access log: every Gmail API call CoffeePing made on the user's behalf (mailer, reply watcher) and
every access token issued for their Google grant (token vault), and a 30-day summary counted from it.

Each service keeps its own part of the log and describes its entries in plain words where the facts are
(the mailer knows its sequences' subjects and steps); the gateway fans in with typed calls and merges.
Pages are newest first, in the order (time, service, entry number); the cursor holds each service's
position (the last entry of it shown, or "done"), so that a page asks each service only for what comes
after what was shown of it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections import Counter
from typing import Any

from flask import Blueprint, Response
from google.protobuf.timestamp_pb2 import Timestamp

from coffeeping.types.v1 import access_pb2
from coffeeping_gateway.api import content, from_message, parse_query, query_parameters, respond
from coffeeping_gateway.problems import Problem
from coffeeping_gateway.schemas import AccessCount, AccessEntry, AccessLogPage, AccessLogQuery, PrivacySummary
from coffeeping_gateway.web import call, clients

bp = Blueprint("privacy", __name__)

# Each part of the log and the client that serves it; the mailer first, so that a deleted account's 410
# comes before any other call.
SOURCES = {"mailer": "mailer", "reply-watcher": "watcher", "token-vault": "vault"}
GMAIL_CALLERS = ("mailer", "reply-watcher")
SUMMARY_DAYS = 30
Position = tuple[int, int, int] | None  # (seconds, nanos, entry number) of the last entry shown; None: done
_LIMITS = (253_402_300_800, 1_000_000_000, 2**63)  # a Timestamp's seconds (to year 9999) and nanos, a bigint


def _stamp(value: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _window(since: dt.datetime | None, until: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    end = until or dt.datetime.now(dt.UTC)
    return since or end - dt.timedelta(days=SUMMARY_DAYS), end


def _filter(query: AccessLogQuery, since: dt.datetime | None, until: dt.datetime | None) -> access_pb2.AccessFilter:
    flt = access_pb2.AccessFilter(kind=query.kind or "", method=query.method)
    if since is not None:
        flt.since.CopyFrom(_stamp(since))
    if until is not None:
        flt.until.CopyFrom(_stamp(until))
    return flt


def _encode(positions: dict[str, Position]) -> str:
    document = {service: list(position) if position else 0 for service, position in positions.items()}
    return base64.urlsafe_b64encode(json.dumps(document, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode(cursor: str) -> dict[str, Position]:
    """The positions a cursor holds (every service from the newest when empty); 422 when it is not ours."""
    if not cursor:
        return {}
    try:
        document = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        positions: dict[str, Position] = {}
        for service, value in document.items():
            if service not in SOURCES:
                raise ValueError(service)
            if value == 0:
                positions[service] = None
                continue
            seconds, nanos, number = value
            if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < limit
                       for v, limit in zip(value, _LIMITS, strict=True)):
                raise ValueError(value)
            positions[service] = (seconds, nanos, number)
        return positions
    except (ValueError, TypeError, AttributeError, binascii.Error, UnicodeDecodeError):
        raise Problem(422, "the request has invalid fields", errors=[
            {"field": "cursor", "message": "not a cursor of this list; pass next_cursor as it came"}]) from None


def _order(entry: access_pb2.AccessEntry) -> tuple[int, int, str, int]:
    return -entry.at.seconds, -entry.at.nanos, entry.service, -entry.id


def _request(size: int, flt: access_pb2.AccessFilter, position: Position) -> access_pb2.ListAccessEntriesRequest:
    request = access_pb2.ListAccessEntriesRequest(page_size=size, filter=flt)
    if position is not None:
        seconds, nanos, number = position
        request.before.CopyFrom(Timestamp(seconds=seconds, nanos=nanos))
        request.before_id = number
    return request


def _page(query: AccessLogQuery) -> tuple[list[access_pb2.AccessEntry], str | None]:
    """One page of the merged log and the cursor of the next (None on the last)."""
    positions = _decode(query.cursor)
    flt = _filter(query, query.since, query.until)
    wanted = [s for s in SOURCES if (query.service is None or s == query.service)]
    fetched: dict[str, list[access_pb2.AccessEntry]] = {}
    for service in wanted:
        if service in positions and positions[service] is None:
            continue  # that part of the log is done
        reply = call(clients().stub(SOURCES[service]).ListAccessEntries,
                     _request(query.limit, flt, positions.get(service)))
        fetched[service] = [e for e in reply.entries if e.service == service]
    shown = sorted((e for entries in fetched.values() for e in entries), key=_order)[:query.limit]
    following = dict(positions)
    for service, entries in fetched.items():
        mine = [e for e in shown if e.service == service]
        if mine:
            following[service] = (mine[-1].at.seconds, mine[-1].at.nanos, mine[-1].id)
        if len(entries) < query.limit and len(mine) == len(entries):
            following[service] = None  # everything it had is shown
    more = any(following.get(s, ()) is not None for s in wanted)
    return shown, _encode({s: following.get(s) for s in wanted if s in following}) if more else None


def _counts(flt: access_pb2.AccessFilter, only: str | None = None) -> dict[str, access_pb2.SummarizeAccessResponse]:
    return {service: call(clients().stub(stub).SummarizeAccess, access_pb2.SummarizeAccessRequest(filter=flt))
            for service, stub in SOURCES.items() if only is None or service == only}


@bp.get("/v1/privacy/access-log")
def access_log() -> Response:
    return respond(access_log_page(parse_query(AccessLogQuery)))


@bp.get("/v1/privacy/summary")
def summary() -> Response:
    return respond(privacy_summary())


def access_log_page(query: AccessLogQuery) -> AccessLogPage:
    """A page of the merged log for ``query``, with its counts per day and kind (the API and the console)."""
    if query.since is not None and query.until is not None and query.since >= query.until:
        raise Problem(422, "the request has invalid fields",
                      errors=[{"field": "until", "message": "must be after since"}])
    shown, next_cursor = _page(query)
    since, until = _window(query.since, query.until)
    days: Counter[tuple[str, str]] = Counter()
    units: Counter[tuple[str, str]] = Counter()
    failed: Counter[tuple[str, str]] = Counter()
    for result in _counts(_filter(query, since, until), query.service).values():
        for count in result.counts:
            days[count.day, count.kind] += count.calls
            units[count.day, count.kind] += count.quota_units
            failed[count.day, count.kind] += count.failed
    return AccessLogPage(
        items=[from_message(AccessEntry, e, id=f"{e.service}-{e.id}") for e in shown], next_cursor=next_cursor,
        since=since, until=until,
        days=[AccessCount(day=dt.date.fromisoformat(day), kind=kind, calls=calls,
                          quota_units=units[day, kind], failed=failed[day, kind])
              for (day, kind), calls in sorted(days.items())])


def privacy_summary() -> PrivacySummary:
    """The last 30 days, counted from the log (the API and the console)."""
    since, until = _window(None, None)
    by_kind: Counter[str] = Counter()
    by_service: Counter[str] = Counter()
    headers: Counter[str] = Counter()
    failed = units = 0
    for service, result in _counts(access_pb2.AccessFilter(since=_stamp(since), until=_stamp(until))).items():
        for count in result.counts:
            by_kind[count.kind] += count.calls
            by_service[service] += count.calls
            failed += count.failed
            units += count.quota_units
        for header in result.headers:
            headers[header.header] += header.reads
    return PrivacySummary(
        since=since, until=until, messages_sent=by_kind["message_sent"], drafts_created=by_kind["draft_created"],
        drafts_updated=by_kind["draft_updated"], drafts_deleted=by_kind["draft_deleted"],
        drafts_read=by_kind["draft_read"], metadata_reads=by_kind["metadata_read"], metadata_headers=dict(headers),
        content_reads=by_kind["content_read"], gmail_calls=sum(by_service[s] for s in GMAIL_CALLERS),
        failed_calls=failed, quota_units=units, tokens_issued=by_kind["token_issued"],
        by_kind=dict(by_kind), by_service={s: by_service[s] for s in SOURCES})


_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_GONE = {"410": {"description": "the account is deleted or being deleted", "content": _PROBLEM}}
_ERRORS: dict[str, Any] = {"401": {"$ref": "#/components/responses/Unauthorized"}, **_GONE}

PATHS: dict[str, Any] = {
    "/v1/privacy/access-log": {
        "get": {"summary": "Every Gmail API call made on your behalf and every access token issued for your Google "
                           "grant, newest first, each in plain words (ids and methods only, never content); with "
                           "counts per day and kind",
                "parameters": query_parameters(AccessLogQuery),
                "responses": {"200": {"description": "a page of the log", "content": content(AccessLogPage)},
                              "422": {"$ref": "#/components/responses/ValidationError"}, **_ERRORS}},
    },
    "/v1/privacy/summary": {
        "get": {"summary": "What CoffeePing did with your Gmail over the last 30 days, counted from the access log "
                           "(content reads: always 0)",
                "responses": {"200": {"description": "the counts", "content": content(PrivacySummary)}, **_ERRORS}},
    },
}
