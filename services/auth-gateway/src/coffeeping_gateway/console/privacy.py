"""Settings → Privacy: what CoffeePing did with the person's Gmail, from the access log — the 30-day
summary (content reads: always 0) and every entry in plain words, newest first, filtered by service and
kind. The same builders as ``GET /v1/privacy/summary`` and ``GET /v1/privacy/access-log``."""

from __future__ import annotations

from flask import Response, request

from coffeeping_gateway.api import parse_query
from coffeeping_gateway.console.frontend import bp, page, render
from coffeeping_gateway.schemas import AccessLogQuery
from coffeeping_gateway.views import privacy
from coffeeping_gateway.web import settings

PAGE_SIZE = 25
SERVICES = {"mailer": "Mailer", "reply-watcher": "Reply watcher", "token-vault": "Token vault"}
KINDS = {
    "message_sent": "Emails sent", "draft_created": "Drafts created", "draft_updated": "Drafts updated",
    "draft_deleted": "Drafts deleted", "draft_read": "CoffeePing's own drafts read",
    "metadata_read": "Metadata read (From)", "content_read": "Content read", "ids_listed": "Changes listed (ids)",
    "profile_read": "Mailbox profile read", "watch_started": "Push notifications started",
    "watch_stopped": "Push notifications stopped", "token_issued": "Access tokens issued", "other": "Other",
}


@bp.get("/settings/privacy")
@page
def privacy_page() -> Response:
    # A filter left at "every ..." comes as an empty value: the API's query has no such parameter then.
    given = {name: value for name, value in request.args.items() if value}
    query = parse_query(AccessLogQuery, {**given, "limit": str(PAGE_SIZE)})
    return render("privacy.html", summary=privacy.privacy_summary(), log=privacy.access_log_page(query),
                  service=query.service or "", kind=query.kind or "", cursor=query.cursor,
                  services=SERVICES, kinds=KINDS, retention_days=settings().access_log_retention_days)
