"""Deleting the account: a typed confirmation, then the deletion's progress, step by step, refreshed in
place until it completes. The progress stays reachable after signing out (the deletion receipt)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Response, g, redirect, request

from coffeeping.accounts.v1 import accounts_pb2
from coffeeping_gateway.api import from_message
from coffeeping_gateway.console import receipt
from coffeeping_gateway.console.forms import FormErrors, validate
from coffeeping_gateway.console.frontend import bp, page, render
from coffeeping_gateway.problems import Problem
from coffeeping_gateway.schemas import CONFIRMATION, DeleteAccountInput, DeletionStatus
from coffeeping_gateway.web import DELETION_STATUS_PATH, call, clients, rate_limited, user_id

F = TypeVar("F", bound=Callable[..., Any])
SERVICES = {"mailer": "Emails, contacts and Gmail drafts", "reply-watcher": "Reply detection",
            "token-vault": "Google access", "accounts": "Your account"}


def receipt_allowed(view: F) -> F:
    """Open to the holder of a deletion receipt when no session is signed in."""
    view.deletion_receipt = True  # type: ignore[attr-defined]
    return view


def receipt_user(view: Any) -> str | None:
    """The user whose deletion a signed-out request may follow: a view that allows it, a genuine receipt."""
    return receipt.holder() if getattr(view, "deletion_receipt", False) else None


def _confirm_page(status: int = 200, errors: FormErrors | None = None) -> Response:
    key = request.form.get("idempotency_key") or secrets.token_urlsafe(16)
    return render("account_delete.html", code=status, errors=errors or FormErrors(), key=key[:200],
                  confirmation=CONFIRMATION)


@bp.get("/account/delete")
@page
def confirm() -> Response:
    return _confirm_page()


@bp.post("/account/delete")
@page
@rate_limited(per_minute=10, burst=5)
def delete() -> Response:
    try:
        validate(DeleteAccountInput, {"confirm": request.form.get("confirm", "").strip()})
    except Problem:
        return _confirm_page(422, FormErrors(confirm=f'must be exactly "{CONFIRMATION}"'))
    call(clients().accounts.RequestDeletion, accounts_pb2.RequestDeletionRequest(
        source="api", idempotency_key=request.form.get("idempotency_key", "")[:200]))
    response = redirect("/account/deletion", code=303)
    receipt.issue(response, user_id())
    return response


def _status() -> DeletionStatus | None:
    holder = g.session.user_id if "session" in g else g.receipt_user
    status = call(clients().accounts.GetDeletionStatus, accounts_pb2.GetDeletionStatusRequest(), user=holder)
    if status.state in ("", "none"):
        return None
    return from_message(DeletionStatus, status, links={"status": DELETION_STATUS_PATH})


@bp.get("/account/deletion")
@page
@receipt_allowed
def progress() -> Response:
    return render("deletion.html", deletion=_status(), services=SERVICES, signed_in="session" in g)


@bp.get("/fragments/account/deletion")
@receipt_allowed
def progress_steps() -> Response:
    return render("_deletion_steps.html", deletion=_status(), services=SERVICES)
