"""Signing in and out. Clerk's hosted page signs the person in; the console's sign-in page is where a
signed-out navigation lands: its script takes a fresh session token from Clerk (the session may well be
alive, only the 60-second token ran out) and goes back, or sends the browser on to Clerk's page."""

from __future__ import annotations

from flask import Response, redirect, request

from coffeeping_gateway.console.frontend import bp, clerk_sign_in_href, render, safe_next
from coffeeping_gateway.console.receipt import has_receipt
from coffeeping_gateway.web import public

SESSION_COOKIE = "__session"


@bp.get("/sign-in")
@public
def sign_in() -> Response:
    next_path = safe_next(request.args.get("next"))
    return render("sign_in.html", next_path=next_path, sign_in_href=clerk_sign_in_href(next_path))


@bp.post("/sign-out")
@public
def sign_out() -> Response:
    """Forgets the session cookie (the page's script has ended the Clerk session first)."""
    response = redirect("/signed-out", code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@bp.get("/signed-out")
@public
def signed_out() -> Response:
    return render("signed_out.html", sign_in_href=clerk_sign_in_href("/"), deletion=has_receipt())
