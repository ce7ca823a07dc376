"""The console's pages over the app in process: signed-out navigations go to sign in while the API keeps
answering 401 problem documents, the strict headers, HTML errors for people, the cookie's Origin check,
the deletion receipt, and the vocabularies the pages share with the mailer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Response

from coffeeping.mailer.v1 import mailer_pb2 as pb
from coffeeping.vault.v1 import vault_pb2
from coffeeping_gateway import schemas
from coffeeping_gateway.console import present, receipt
from coffeeping_gateway.console.frontend import STATIC, safe_next
from coffeeping_mailer.merge import MERGE_FIELDS
from tests.unit.auth_gateway.console_app import CONSOLE, console_app

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
SIGNED_IN = {"__session": "good"}


@pytest.fixture
def app():
    return console_app(GetGrantInfo=lambda _: vault_pb2.GrantInfo(connected=False),
                       ListSequences=lambda _: pb.ListSequencesResponse(),
                       CreateContact=lambda _: pb.Contact(id="c1", email="ada@example.com"))


def _client(app, signed_in: bool = True):
    client = app.test_client()
    if signed_in:
        client.set_cookie("__session", "good")
    return client


def test_a_signed_out_page_goes_to_sign_in_and_the_api_still_answers_401(app):
    client = _client(app, signed_in=False)
    page = client.get("/contacts?cursor=abc", headers=HTML)
    assert page.status_code == 303 and page.headers["Location"] == "/sign-in?next=%2Fcontacts%3Fcursor%3Dabc"
    api = client.get("/v1/contacts", headers=HTML)
    assert api.status_code == 401 and api.mimetype == "application/problem+json"


def test_the_gmail_callback_sends_a_browser_through_sign_in_and_an_api_client_gets_401(app):
    client = _client(app, signed_in=False)
    browser = client.get("/v1/gmail/callback?state=s&code=c", headers=HTML)
    assert browser.status_code == 303 and browser.headers["Location"].startswith("/sign-in?next=%2Fv1%2Fgmail%2F")
    assert client.get("/v1/gmail/callback?state=s&code=c").status_code == 401


def test_pages_carry_a_strict_policy_and_send_their_origin(app):
    page = _client(app).get("/", headers=HTML)
    assert page.status_code == 200
    policy = dict(d.split(" ", 1) for d in page.headers["Content-Security-Policy"].split("; "))
    assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and policy["base-uri"] == "'none'"
    assert policy["form-action"] == "'self' http://127.0.0.1:8702 http://127.0.0.1:8701"
    assert "unsafe" not in page.headers["Content-Security-Policy"]
    # no-referrer would make the browser send "Origin: null" on the console's own form posts
    assert page.headers["Referrer-Policy"] == "same-origin"
    assert page.headers["Cache-Control"] == "no-store"
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.get_data(as_text=True)), "an inline script"
    assert not re.search(r"\sstyle=|<style", page.get_data(as_text=True)), "an inline style"


def test_a_cookie_post_from_another_origin_is_refused_with_a_page(app):
    client = _client(app)
    foreign = client.post("/contacts/new", data={"email": "a@example.com"}, headers={**HTML, "Origin": "https://evil"})
    assert foreign.status_code == 403 and foreign.mimetype == "text/html"
    assert "another site" in foreign.get_data(as_text=True)
    own = client.post("/contacts/new", data={"email": "ada@example.com"}, headers={**HTML, "Origin": CONSOLE})
    assert own.status_code == 303 and own.headers["Location"] == "/contacts/c1?notice=saved"


def test_people_get_error_pages_and_api_clients_problem_documents(app):
    client = _client(app)
    missing = client.get("/no/such/page", headers=HTML)
    assert missing.status_code == 404 and missing.mimetype == "text/html"
    assert client.get("/v1/no-such-route", headers=HTML).mimetype == "application/problem+json"
    too_large = client.post("/contacts/import", data=b"x" * (3 * 1024 * 1024),
                            headers={**HTML, "Origin": CONSOLE, "Content-Type": "text/csv"})
    assert too_large.status_code == 413 and too_large.mimetype == "text/html"
    wrong_method = client.put("/healthz", headers=HTML)  # an API route: the API answers it
    assert wrong_method.status_code == 405 and wrong_method.mimetype == "application/problem+json"


def test_a_deleted_account_is_sent_to_its_deletion(app):
    def gone(_request: object) -> None:
        from coffeeping_gateway.problems import Problem

        raise Problem(410, "this account is deleted or being deleted")

    app.extensions["coffeeping.clients"].mailer.answers["ListSequences"] = gone
    page = _client(app).get("/", headers=HTML)
    assert page.status_code == 303 and page.headers["Location"] == "/account/deletion"


@pytest.mark.parametrize("target, expected", [
    ("/contacts", "/contacts"), ("//evil.example/", "/"), ("https://evil.example/", "/"), ("/\\evil", "/"),
    ("", "/"), (None, "/"),
])
def test_only_paths_on_this_origin_are_come_back_to(target, expected):
    assert safe_next(target) == expected


def test_a_deletion_receipt_names_its_user_only_when_genuine(app):
    with app.test_request_context("/"):
        response = Response()
        receipt.issue(response, "user_gone")
        cookie = response.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
        assert "HttpOnly" in response.headers["Set-Cookie"]
    for value, holder in [(cookie, "user_gone"), (cookie.replace("user_gone", "user_other"), None),
                          (cookie[:-1] + ("0" if cookie[-1] != "0" else "1"), None), ("junk", None)]:
        with app.test_request_context("/", headers={"Cookie": f"{receipt.COOKIE}={value}"}):
            assert receipt.holder() == holder


def test_the_pages_know_every_stop_reason_and_the_preview_every_merge_field():
    assert set(present.STOP_REASONS) == set(schemas.StopReason.__args__)
    preview = (STATIC / "preview.js").read_text()
    fields = re.search(r"const FIELDS = \[(.*?)\];", preview).group(1)
    assert re.findall(r'"(\w+)"', fields) == list(MERGE_FIELDS)


def test_every_asset_is_served_and_versioned(app):
    client = _client(app, signed_in=False)
    for path in Path(STATIC).iterdir():
        served = client.get(f"/assets/{path.name}")
        assert served.status_code == 200 and served.headers["Cache-Control"] == "no-cache"
