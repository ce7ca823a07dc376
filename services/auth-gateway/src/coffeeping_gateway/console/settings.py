"""Settings: the Gmail connection (connect, reconnect, disconnect; the address and each scope granted,
explained), the export, the way to delete the account, and the security contact."""

from __future__ import annotations

import datetime as dt

from flask import Response, redirect, request

from coffeeping.accounts.v1 import accounts_pb2
from coffeeping.common.gmail import SCOPE_COMPOSE, SCOPE_METADATA, SCOPE_SEND, SCOPE_USERINFO_EMAIL
from coffeeping.vault.v1 import vault_pb2
from coffeeping_gateway.console.frontend import bp, page, render
from coffeeping_gateway.schemas import GmailConnect
from coffeeping_gateway.views import gmail
from coffeeping_gateway.views.me import gmail_connection
from coffeeping_gateway.web import call, clients

SCOPE_WORDS = {
    SCOPE_SEND: "Send the emails you write, from your own address.",
    SCOPE_COMPOSE: "Keep your follow-ups as drafts in the thread, so you can edit them in Gmail first.",
    SCOPE_METADATA: "See who wrote in a thread (the From line) to stop follow-ups on a reply; never what mail says.",
    SCOPE_USERINFO_EMAIL: "Know which Gmail address is connected.",
}
# What the Gmail callback's outcome (``?gmail=...&reason=...`` on APP_URL) means to the person.
OUTCOMES = {
    "connected": "Gmail is connected.",
    "disconnected": "Gmail is disconnected: CoffeePing's access is revoked at Google.",
}
REFUSALS = {
    "access_denied": "You cancelled on Google's screen, so Gmail is not connected.",
    "missing_scope": "Google did not grant every permission CoffeePing needs (one was unticked). Connect again "
                     "and leave them all ticked.",
    "excess_scope": "Google granted more than CoffeePing asks for, so the connection was refused and that access "
                    "given back. Connect again.",
    "different_account": "That is another Google account than the one connected. Disconnect first to switch.",
    "invalid_state": "The connection expired or was already used. Connect again.",
    "temporarily_unavailable": "Google or CoffeePing was briefly unavailable. Connect again in a moment.",
    "account_deleted": "This account is being deleted.",
}


def _outcome() -> tuple[str, str] | None:
    """(kind, sentence) for the outcome the page was sent back with, if any."""
    result = request.args.get("gmail", "")
    if result in OUTCOMES:
        return "success", OUTCOMES[result]
    if result == "error":
        reason = request.args.get("reason", "").split(":", 1)[0]
        return "error", REFUSALS.get(reason, "Gmail could not be connected. Connect again.")
    return None


@bp.get("/settings")
@page
def settings_page() -> Response:
    user = call(clients().accounts.GetMe, accounts_pb2.GetMeRequest())
    connection = gmail_connection(call(clients().vault.GetGrantInfo, vault_pb2.GetGrantInfoRequest()))
    return render("settings.html", user_id=user.user_id,
                  created_at=user.created_at.ToDatetime(dt.UTC).replace(microsecond=0), gmail=connection,
                  scopes=[(scope, SCOPE_WORDS.get(scope, "")) for scope in connection.scopes or ()],
                  outcome=_outcome())


@bp.post("/settings/gmail/connect")
@page
def connect_gmail() -> Response:
    """The API's own connect (consent URL, browser-binding cookie, rate limit), followed as a redirect."""
    started = gmail.connect()
    consent = redirect(GmailConnect.model_validate_json(started.get_data()).authorization_url, code=303)
    for cookie in started.headers.getlist("Set-Cookie"):
        consent.headers.add("Set-Cookie", cookie)
    return consent


@bp.post("/settings/gmail/disconnect")
@page
def disconnect_gmail() -> Response:
    gmail.disconnect()
    return redirect("/settings?gmail=disconnected", code=303)
