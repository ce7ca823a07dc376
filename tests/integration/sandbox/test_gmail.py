"""The Gmail stand-in, driven through the real google-api-python-client over real HTTP."""

from __future__ import annotations

import base64
from email.message import EmailMessage
from typing import Any

import pytest
import requests
from google.auth.exceptions import RefreshError
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest

from coffeeping_sandbox.control import Control
from coffeeping_sandbox.gmail import GmailSandbox
from coffeeping_sandbox.server import Sandbox

ME = "pat@example.com"
OTHER = "kim@example.com"
# token name -> (account, scopes); the sandbox's OAuth stand-in issues a real access token for each
TOKENS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tok-compose-read": (ME, ("gmail.compose", "gmail.readonly")),
    "tok-metadata-compose": (ME, ("gmail.metadata", "gmail.compose")),
    "tok-metadata-readonly": (ME, ("gmail.metadata", "gmail.readonly")),
    "tok-send": (ME, ("gmail.send",)),
    "tok-compose": (ME, ("gmail.compose",)),
    "tok-readonly": (ME, ("gmail.readonly",)),
    "tok-mail": (ME, ("https://mail.google.com/",)),
    "tok-other": (OTHER, ("https://mail.google.com/",)),
}


def http(method: str, url: str, **kw: Any) -> requests.Response:
    return requests.request(method, url, timeout=5, **kw)


class Env:
    def __init__(self, sandbox: Sandbox, issue: Any) -> None:
        self.url: str = sandbox.google_url
        self.gmail: GmailSandbox = sandbox.gmail
        self.control: Control = sandbox.control
        self.pubsub = sandbox.pubsub
        self._issue = issue
        self._tokens: dict[str, str] = {}

    def token(self, name: str) -> str:
        """A live access token for a name in TOKENS; any other name is sent as is (an invalid token)."""
        if name not in TOKENS:
            return name
        if name not in self._tokens:
            email, scopes = TOKENS[name]
            self._tokens[name] = self._issue(email=email, scopes=list(scopes))
        return self._tokens[name]

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(name)}"}

    def api(self, token: str = "tok-compose-read") -> Any:  # noqa: S107 - a token name, see TOKENS
        return build(
            "gmail",
            "v1",
            credentials=Credentials(token=self.token(token)),
            static_discovery=True,
            cache_discovery=False,
            client_options={"api_endpoint": self.url},
        )

    def ctl(self, method: str, path: str, **kw: Any) -> Any:
        resp = http(method, f"{self.url}/_sandbox/gmail/{path}", **kw)
        assert resp.status_code == 200, resp.text
        return resp.json()


@pytest.fixture
def env(sandbox: Sandbox, google_token: Any) -> Env:
    assert sandbox.gmail is not None, sandbox.gmail_error
    sandbox.gmail.set_rate_limit(None)  # tests that need the limit set it themselves
    return Env(sandbox, google_token)


def raw(
    to: str = "ann@x.com", subject: str = "Coffee?", body: str = "Fancy a coffee?", **headers: str
) -> str:
    msg = EmailMessage()
    msg["To"] = to
    msg["From"] = ME
    msg["Subject"] = subject
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return base64.urlsafe_b64encode(msg.as_bytes()).decode()


def header(message: dict[str, Any], name: str) -> str | None:
    for h in message["payload"]["headers"]:
        if h["name"].lower() == name.lower():
            return h["value"]
    return None


def status_of(exc: pytest.ExceptionInfo[HttpError]) -> int:
    return exc.value.resp.status


def send(api: Any, **kw: Any) -> dict[str, Any]:
    thread_id = kw.pop("threadId", None)
    body: dict[str, Any] = {"raw": raw(**kw)}
    if thread_id:
        body["threadId"] = thread_id
    return api.users().messages().send(userId="me", body=body).execute()


def message_id_header(api: Any, msg_id: str) -> str:
    msg = (
        api.users().messages().get(userId="me", id=msg_id, format="metadata", metadataHeaders=["Message-ID"])
    )
    return header(msg.execute(), "Message-ID") or ""


# ---------------------------------------------------------------------------------------------- sending


def test_send_starts_thread_and_gets_message_id(env: Env) -> None:
    api = env.api()
    sent = send(api)
    assert sent["threadId"] == sent["id"]
    assert sent["labelIds"] == ["SENT"]
    msg_id = message_id_header(api, sent["id"])
    assert msg_id.startswith("<") and msg_id.endswith(">")
    full = api.users().messages().get(userId="me", id=sent["id"], format="raw").execute()
    assert b"Message-ID: " + msg_id.encode() in base64.urlsafe_b64decode(full["raw"])
    box = env.gmail.mailbox(ME)
    assert [t["id"] for t in box["threads"]] == [sent["threadId"]]
    assert box["threads"][0]["messages"][0]["body"].strip() == "Fancy a coffee?"


def test_threading_rules(env: Env) -> None:
    api = env.api()
    first = send(api, subject="Coffee?")
    mid = message_id_header(api, first["id"])
    joined = send(api, threadId=first["threadId"], subject="Re: Coffee?", In_Reply_To=mid, References=mid)
    assert joined["threadId"] == first["threadId"]
    fwd = send(api, threadId=first["threadId"], subject="RE: Fwd: coffee?", References=mid)
    assert fwd["threadId"] == first["threadId"]
    no_thread_id = send(api, subject="Re: Coffee?", In_Reply_To=mid)
    assert no_thread_id["threadId"] == no_thread_id["id"]
    wrong_subject = send(api, threadId=first["threadId"], subject="Lunch instead?", In_Reply_To=mid)
    assert wrong_subject["threadId"] == wrong_subject["id"]
    no_headers = send(api, threadId=first["threadId"], subject="Re: Coffee?")
    assert no_headers["threadId"] == no_headers["id"]
    thread = api.users().threads().get(userId="me", id=first["threadId"], format="minimal").execute()
    assert [m["id"] for m in thread["messages"]] == [first["id"], joined["id"], fwd["id"]]
    with pytest.raises(HttpError) as exc:
        send(api, threadId="deadbeefdeadbeef", subject="x")
    assert status_of(exc) == 404


def test_deliver_reply_auto_reply_and_bounce_join_thread(env: Env) -> None:
    api = env.api()
    first = send(api)
    mid = message_id_header(api, first["id"])
    reply = env.ctl(
        "POST",
        "deliver",
        json={"to": ME, "from": "Ann <ann@x.com>", "thread_id": first["threadId"], "body": "Yes!"},
    )
    assert reply["threadId"] == first["threadId"]
    assert reply["in_reply_to"] == mid and reply["subject"] == "Re: Coffee?"
    assert reply["labelIds"] == ["INBOX", "UNREAD"]
    auto = env.gmail.deliver(
        ME, "Ann <ann@x.com>", thread_id=first["threadId"], kind="auto_reply", body="Away"
    )
    assert auto["threadId"] == first["threadId"]
    assert auto["subject"] == "Automatic reply: Coffee?"
    assert {"name": "Auto-Submitted", "value": "auto-replied"} in auto["headers"]
    bounce = env.gmail.deliver(ME, "", thread_id=first["threadId"], kind="bounce")
    assert bounce["from"] == "Mail Delivery Subsystem <mailer-daemon@googlemail.com>"
    assert bounce["threadId"] == first["threadId"]
    # Gmail's rule when asked: a different subject starts a new thread
    strict = env.gmail.deliver(
        ME, "ann@x.com", thread_id=first["threadId"], subject="Other", strict_threading=True
    )
    assert strict["threadId"] == strict["id"]
    # the user replies from Gmail itself
    mine = env.ctl("POST", "user-send", json={"user": ME, "thread_id": first["threadId"], "body": "See you"})
    assert mine["labelIds"] == ["SENT"] and mine["to"] == "Ann <ann@x.com>"  # auto replies skipped
    assert mine["in_reply_to"] == bounce["message_id"]
    thread = api.users().threads().get(userId="me", id=first["threadId"], format="metadata").execute()
    assert len(thread["messages"]) == 5
    with pytest.raises(requests.HTTPError):
        r = http(
            "POST", f"{env.url}/_sandbox/gmail/deliver", json={"to": ME, "from": "a@x", "thread_id": "nope"}
        )
        r.raise_for_status()


# ---------------------------------------------------------------------------------------------- drafts


def test_drafts_lifecycle(env: Env) -> None:
    api = env.api()
    drafts = api.users().drafts()
    draft = drafts.create(userId="me", body={"message": {"raw": raw(body="v1")}}).execute()
    assert draft["id"].startswith("r")
    assert draft["message"]["labelIds"] == ["DRAFT"]
    got = drafts.get(userId="me", id=draft["id"]).execute()
    assert got["message"]["id"] == draft["message"]["id"]
    listed = drafts.list(userId="me").execute()
    assert [d["id"] for d in listed["drafts"]] == [draft["id"]]

    updated = drafts.update(userId="me", id=draft["id"], body={"message": {"raw": raw(body="v2")}}).execute()
    assert updated["id"] == draft["id"]
    assert updated["message"]["id"] != draft["message"]["id"]
    with pytest.raises(HttpError) as exc:
        api.users().messages().get(userId="me", id=draft["message"]["id"]).execute()
    assert status_of(exc) == 404

    # the user edits it in Gmail: same draft id, new message id, new body
    edited = env.ctl("POST", "drafts/edit", json={"user": ME, "draft_id": draft["id"], "body": "v3 by hand"})
    assert edited["id"] == draft["id"] and edited["message"]["id"] != updated["message"]["id"]
    assert edited["message"]["body"].strip() == "v3 by hand"

    sent = drafts.send(userId="me", body={"id": draft["id"]}).execute()
    assert sent["labelIds"] == ["SENT"]
    box = env.gmail.mailbox(ME)
    assert box["drafts"] == []
    assert box["threads"][0]["messages"][0]["body"].strip() == "v3 by hand"
    for call in (
        lambda: drafts.send(userId="me", body={"id": draft["id"]}),
        lambda: drafts.get(userId="me", id=draft["id"]),
        lambda: drafts.delete(userId="me", id=draft["id"]),
        lambda: drafts.update(userId="me", id=draft["id"], body={"message": {"raw": raw()}}),
    ):
        with pytest.raises(HttpError) as exc:
            call().execute()
        assert status_of(exc) == 404


def test_draft_delete_and_reply_draft_threading(env: Env) -> None:
    api = env.api()
    first = send(api)
    mid = message_id_header(api, first["id"])
    drafts = api.users().drafts()
    body = {"message": {"raw": raw(subject="Re: Coffee?", In_Reply_To=mid), "threadId": first["threadId"]}}
    reply_draft = drafts.create(userId="me", body=body).execute()
    assert reply_draft["message"]["threadId"] == first["threadId"]
    stray = drafts.create(userId="me", body={"message": {"raw": raw(subject="Re: Coffee?")}}).execute()
    assert stray["message"]["threadId"] == stray["message"]["id"]
    assert drafts.delete(userId="me", id=stray["id"]).execute() == ""
    env.ctl("POST", "drafts/delete", json={"user": ME, "draft_id": reply_draft["id"]})
    with pytest.raises(HttpError) as exc:
        drafts.send(userId="me", body={"id": reply_draft["id"]}).execute()
    assert status_of(exc) == 404
    assert "drafts" not in drafts.list(userId="me").execute()


# ---------------------------------------------------------------------------------------------- history


def test_history_paging_filters_and_expiry(env: Env) -> None:
    api = env.api()
    start = int(api.users().getProfile(userId="me").execute()["historyId"])
    first = send(api)
    for i in range(4):
        env.gmail.deliver(ME, f"friend{i}@x.com", thread_id=first["threadId"], body=f"reply {i}")
    draft = api.users().drafts().create(userId="me", body={"message": {"raw": raw()}}).execute()
    api.users().drafts().update(
        userId="me", id=draft["id"], body={"message": {"raw": raw(body="2")}}
    ).execute()
    env.gmail.modify_labels(ME, first["id"], add=["STARRED"])

    history = api.users().history()
    seen: list[dict[str, Any]] = []
    req = history.list(userId="me", startHistoryId=str(start), maxResults=2)
    pages = 0
    while req is not None:
        resp = req.execute()
        pages += 1
        seen.extend(resp.get("history", []))
        req = history.list_next(req, resp)
    ids = [int(h["id"]) for h in seen]
    assert ids == sorted(ids) and len(ids) == len(set(ids)) == 9  # 1 send, 4 in, create, update (2), label
    assert pages == 5
    assert resp["historyId"] == api.users().getProfile(userId="me").execute()["historyId"]
    assert seen[-1]["labelsAdded"][0]["labelIds"] == ["STARRED"]

    inbox = history.list(
        userId="me", startHistoryId=str(start), historyTypes=["messageAdded"], labelId="INBOX"
    ).execute()
    assert len(inbox["history"]) == 4
    assert all(h["messagesAdded"][0]["message"]["threadId"] == first["threadId"] for h in inbox["history"])
    deleted = history.list(userId="me", startHistoryId=str(start), historyTypes=["messageDeleted"]).execute()
    assert deleted["history"][0]["messagesDeleted"][0]["message"]["id"] == draft["message"]["id"]
    latest = history.list(userId="me", startHistoryId=inbox["historyId"]).execute()
    assert "history" not in latest

    env.ctl("POST", "history/expire", json={"user": ME})
    with pytest.raises(HttpError) as exc:
        history.list(userId="me", startHistoryId=str(start)).execute()
    assert status_of(exc) == 404
    assert b"notFound" in exc.value.content
    now = api.users().getProfile(userId="me").execute()["historyId"]
    assert "history" not in history.list(userId="me", startHistoryId=now).execute()
    env.gmail.deliver(ME, "late@x.com", body="after expiry")
    assert len(history.list(userId="me", startHistoryId=now).execute()["history"]) == 1


def test_history_needs_start_id(env: Env) -> None:
    r = http("GET", f"{env.url}/gmail/v1/users/me/history", headers=env.auth("tok-readonly"))
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    r = http(
        "GET",
        f"{env.url}/gmail/v1/users/me/history?startHistoryId=abc",
        headers=env.auth("tok-readonly"),
    )
    assert r.status_code == 400


# ---------------------------------------------------------------------------------------------- scopes


def test_metadata_scope_refuses_full_raw_and_q(env: Env) -> None:
    reply = env.gmail.deliver(ME, "ann@x.com", subject="Hi", body="secret body")
    for token in ("tok-metadata-compose", "tok-metadata-readonly"):
        api = env.api(token)
        for fmt in ("full", "raw"):
            with pytest.raises(HttpError) as exc:
                api.users().messages().get(userId="me", id=reply["id"], format=fmt).execute()
            assert status_of(exc) == 403
            assert (
                exc.value.error_details[0]["message"] == f"Metadata scope does not allow format {fmt.upper()}"
            )
        with pytest.raises(HttpError) as exc:
            api.users().threads().get(userId="me", id=reply["threadId"]).execute()  # default format is full
        assert status_of(exc) == 403
        with pytest.raises(HttpError) as exc:
            api.users().messages().list(userId="me", q="from:ann").execute()
        assert status_of(exc) == 403
        ok = (
            api.users()
            .messages()
            .get(userId="me", id=reply["id"], format="metadata", metadataHeaders=["From"])
            .execute()
        )
        assert ok["payload"]["headers"] == [{"name": "From", "value": "ann@x.com"}]
        assert "snippet" not in ok
    listed = env.api("tok-metadata-readonly").users().messages().list(userId="me").execute()
    assert listed["messages"] == [{"id": reply["id"], "threadId": reply["threadId"]}]
    full = env.api("tok-readonly").users().messages().get(userId="me", id=reply["id"]).execute()
    assert full["snippet"] == "secret body"


def test_missing_scope_is_403_and_bad_token_401(env: Env) -> None:
    msg = env.gmail.deliver(ME, "ann@x.com", body="x")
    with pytest.raises(HttpError) as exc:
        env.api("tok-send").users().messages().get(userId="me", id=msg["id"], format="minimal").execute()
    assert status_of(exc) == 403
    assert exc.value.error_details[0]["reason"] == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"  # client shows `details`
    assert exc.value.reason == "Request had insufficient authentication scopes."
    assert b'"reason": "insufficientPermissions"' in exc.value.content
    assert b'"status": "PERMISSION_DENIED"' in exc.value.content
    assert b"Request had insufficient authentication scopes." in exc.value.content
    with pytest.raises(HttpError) as exc:
        send(env.api("tok-readonly"))
    assert status_of(exc) == 403
    with pytest.raises(HttpError) as exc:
        env.api("tok-send").users().drafts().create(userId="me", body={"message": {"raw": raw()}}).execute()
    assert status_of(exc) == 403
    with pytest.raises(HttpError) as exc:  # reads are not open to gmail.compose (discovery document)
        env.api("tok-compose").users().history().list(userId="me", startHistoryId="1").execute()
    assert status_of(exc) == 403
    assert env.api("tok-compose").users().getProfile(userId="me").execute()["emailAddress"] == ME
    assert send(env.api("tok-send"))["labelIds"] == ["SENT"]
    assert send(env.api("tok-mail"))["labelIds"] == ["SENT"]
    with pytest.raises(RefreshError):  # Credentials(token=...) only: the client tries to refresh on 401
        env.api("tok-unknown").users().getProfile(userId="me").execute()
    r = http("GET", f"{env.url}/gmail/v1/users/me/profile", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
    r = http("GET", f"{env.url}/gmail/v1/users/{ME}/profile", headers=env.auth("tok-other"))
    assert r.status_code == 403


# ---------------------------------------------------------------------------------------------- quota


def test_quota_units(env: Env) -> None:
    api = env.api("tok-mail")
    sent = send(api)
    api.users().messages().get(userId="me", id=sent["id"], format="minimal").execute()
    api.users().threads().get(userId="me", id=sent["threadId"], format="minimal").execute()
    draft = api.users().drafts().create(userId="me", body={"message": {"raw": raw()}}).execute()
    api.users().drafts().update(userId="me", id=draft["id"], body={"message": {"raw": raw()}}).execute()
    api.users().drafts().get(userId="me", id=draft["id"], format="minimal").execute()
    api.users().drafts().list(userId="me").execute()
    api.users().drafts().send(userId="me", body={"id": draft["id"]}).execute()
    other = api.users().drafts().create(userId="me", body={"message": {"raw": raw()}}).execute()
    api.users().drafts().delete(userId="me", id=other["id"]).execute()
    profile = api.users().getProfile(userId="me").execute()
    api.users().history().list(userId="me", startHistoryId=profile["historyId"]).execute()
    env.pubsub.create_topic("projects/p/topics/gmail")
    watch = api.users().watch(userId="me", body={"topicName": "projects/p/topics/gmail"}).execute()
    assert watch["historyId"] == profile["historyId"] and int(watch["expiration"]) > 0
    api.users().stop(userId="me").execute()
    q = env.ctl("GET", "quota", params={"user": ME})
    assert q["by_method"] == {
        "messages.send": 100,
        "messages.get": 5,
        "threads.get": 10,
        "drafts.create": 20,
        "drafts.update": 15,
        "drafts.get": 5,
        "drafts.list": 5,
        "drafts.send": 100,
        "drafts.delete": 10,
        "getProfile": 1,
        "history.list": 2,
        "watch": 100,
        "stop": 50,
    }
    assert q["units_used"] == 423
    assert q["calls"]["drafts.create"] == 2


def test_rate_limit_429_with_retry_after(env: Env) -> None:
    env.ctl("POST", "rate-limit", json={"units_per_second": 250})
    api = env.api()
    send(api)
    send(api)
    with pytest.raises(HttpError) as exc:
        send(api)  # 300 units within one second
    assert status_of(exc) == 429
    assert exc.value.error_details[0]["reason"] == "rateLimitExceeded"
    assert int(exc.value.resp["retry-after"]) >= 1
    assert env.gmail.quota(ME)["rate_limited"] == 1
    # other users have their own budget
    assert send(env.api("tok-other"))["labelIds"] == ["SENT"]

    env.gmail.set_rate_limit(3)
    env.gmail.reset()
    assert env.gmail.quota(ME)["units_per_second"] == 250  # reset restores Google's default
    env.gmail.set_rate_limit(3)
    for _ in range(3):
        api.users().getProfile(userId="me").execute()
    with pytest.raises(HttpError) as exc:
        api.users().getProfile(userId="me").execute()
    assert status_of(exc) == 429


# ---------------------------------------------------------------------------------------------- faults


def test_fault_injection_and_request_log(env: Env) -> None:
    api = env.api()
    env.control.arm("gmail.messages.send", 503)
    with pytest.raises(HttpError) as exc:
        send(api)
    assert status_of(exc) == 503
    assert exc.value.error_details[0]["reason"] == "backendError"
    env.control.arm("gmail.messages.get", 429, count=2)
    msg = send(api)
    for _ in range(2):
        with pytest.raises(HttpError) as exc:
            api.users().messages().get(userId="me", id=msg["id"], format="minimal").execute()
        assert status_of(exc) == 429
        assert exc.value.resp["retry-after"] == "1"
    api.users().messages().get(
        userId="me", id=msg["id"], format="metadata", metadataHeaders=["From"]
    ).execute()
    env.control.arm("gmail.getProfile", 500)
    with pytest.raises(HttpError) as exc:
        api.users().getProfile(userId="me").execute()
    assert status_of(exc) == 500
    env.control.arm("gmail.history.list", "hang", hang_seconds=0.05)
    with pytest.raises(HttpError) as exc:
        api.users().history().list(userId="me", startHistoryId="1").execute()
    assert status_of(exc) == 503
    log = env.control.log("gmail.messages.get")
    assert log[-1]["user"] == ME and log[-1]["id"] == msg["id"]
    assert log[-1]["format"] == "metadata" and log[-1]["metadataHeaders"] == ["From"]
    assert env.control.count("gmail.messages.send") == 2
    assert env.gmail.quota(ME)["calls"] == {"messages.send": 1, "messages.get": 1}


# ---------------------------------------------------------------------------------------------- privacy


def test_privacy_audit(env: Env) -> None:
    api = env.api("tok-compose-read")
    sent = send(api)
    reply = env.gmail.deliver(ME, "Ann <ann@x.com>", thread_id=sent["threadId"], body="Sure, 3pm")
    get = api.users().messages().get
    get(userId="me", id=reply["id"], format="metadata", metadataHeaders=["From"]).execute()
    get(userId="me", id=reply["id"], format="minimal").execute()
    get(userId="me", id=sent["id"], format="full").execute()  # the user's own message
    assert env.ctl("GET", "privacy-audit", params={"user": ME})["content_reads"] == []

    get(userId="me", id=reply["id"], format="full").execute()
    get(userId="me", id=reply["id"], format="metadata", metadataHeaders=["From", "Subject"]).execute()
    get(userId="me", id=reply["id"], format="metadata").execute()
    api.users().threads().get(userId="me", id=sent["threadId"]).execute()
    audit = env.ctl("GET", "privacy-audit", params={"user": ME})
    assert audit["count"] == 4
    reasons = [e["reason"] for e in audit["content_reads"]]
    assert reasons[0] == "format=full"
    assert "Subject" in reasons[1]
    assert "all headers" in reasons[2]
    assert audit["content_reads"][3]["method"] == "gmail.threads.get"
    assert audit["content_reads"][3]["received_message_ids"] == [reply["id"]]
    # readonly tokens also get the snippet on From-only reads: reported separately
    assert audit["snippet_exposures"][0]["received_message_ids"] == [reply["id"]]

    # refused requests read nothing
    with pytest.raises(HttpError):
        env.api("tok-metadata-readonly").users().messages().get(userId="me", id=reply["id"]).execute()
    assert env.gmail.privacy_audit(ME)["count"] == 4


def test_attachments_get_counts_as_content(env: Env) -> None:
    msg = EmailMessage()
    msg["From"] = "ann@x.com"
    msg["To"] = ME
    msg["Subject"] = "Menu"
    msg.set_content("see attached")
    msg.add_attachment(b"espresso,2.50\n", maintype="text", subtype="csv", filename="menu.csv")
    env.gmail.deliver(ME, "ann@x.com", subject="Menu", body="see attached")  # a plain one too
    # put the multipart message in through a draft-free path: send it to ourselves via Gmail's own UI
    api = env.api("tok-mail")
    sent = (
        api.users()
        .messages()
        .send(userId="me", body={"raw": base64.urlsafe_b64encode(msg.as_bytes()).decode()})
        .execute()
    )
    full = api.users().messages().get(userId="me", id=sent["id"]).execute()
    part = next(p for p in full["payload"]["parts"] if p["filename"] == "menu.csv")
    att = (
        api.users()
        .messages()
        .attachments()
        .get(userId="me", messageId=sent["id"], id=part["body"]["attachmentId"])
        .execute()
    )
    assert base64.urlsafe_b64decode(att["data"]) == b"espresso,2.50\n"
    assert env.control.log("gmail.messages.attachments.get")[0]["id"] == sent["id"]
    assert env.gmail.quota(ME)["by_method"]["messages.attachments.get"] == 5
    # it is the user's own (SENT) message: not flagged; a received one is
    assert env.gmail.privacy_audit(ME)["count"] == 0
    env.gmail.modify_labels(ME, sent["id"], add=["INBOX"], remove=["SENT"])
    api.users().messages().attachments().get(
        userId="me", messageId=sent["id"], id=part["body"]["attachmentId"]
    ).execute()
    assert env.gmail.privacy_audit(ME)["content_reads"][0]["reason"] == "attachment content"


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_gets_google_errors_never_500(env: Env) -> None:
    api = env.api()
    auth = env.auth("tok-compose-read")
    base = f"{env.url}/gmail/v1/users/me"
    with pytest.raises(HttpError) as exc:
        api.users().messages().send(userId="me", body={"raw": "not base64 !!"}).execute()
    assert status_of(exc) == 400
    with pytest.raises(HttpError) as exc:
        api.users().messages().send(userId="me", body={}).execute()
    assert status_of(exc) == 400
    assert "'raw' RFC822 payload" in exc.value.error_details[0]["message"]
    with pytest.raises(HttpError) as exc:
        api.users().messages().send(userId="me", body={"raw": raw(to="")}).execute()
    assert status_of(exc) == 400
    with pytest.raises(HttpError) as exc:
        api.users().drafts().get(userId="me", id="r123").execute()
    assert status_of(exc) == 404
    with pytest.raises(HttpError) as exc:
        api.users().drafts().send(userId="me", body={}).execute()
    assert status_of(exc) == 400
    with pytest.raises(HttpError) as exc:
        api.users().messages().get(userId="me", id="0000000000000000").execute()
    assert status_of(exc) == 404

    cases = [
        ("GET", f"{base}/messages/abc?format=fancy", None, 400),
        ("GET", f"{base}/threads/abc?format=raw", None, 400),
        ("POST", f"{base}/messages/send", b"{not json", 400),
        ("POST", f"{base}/messages/send", b"[1, 2]", 400),
        ("POST", f"{base}/messages/send", b'{"raw": 5}', 400),
        ("POST", f"{base}/messages/send", b'{"rawr": "x"}', 400),
        ("POST", f"{base}/drafts", b'{"message": "x"}', 400),
        ("POST", f"{base}/watch", b"{}", 400),
        ("GET", f"{base}/history?startHistoryId=1&historyTypes=bogus", None, 400),
        ("GET", f"{base}/drafts?pageToken=zzz", None, 400),
        ("GET", f"{base}/drafts?maxResults=lots", None, 400),
        ("GET", f"{base}/nothing/here", None, 404),
    ]
    for method, url, data, want in cases:
        r = http(method, url, data=data, headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == want, (url, data, r.text)
        err = r.json()["error"]
        assert err["code"] == want and err["errors"][0]["reason"] and err["status"]


def test_profile_and_lists(env: Env) -> None:
    api = env.api()
    empty = api.users().getProfile(userId="me").execute()
    assert empty["emailAddress"] == ME and empty["messagesTotal"] == 0
    sent = send(api)
    env.gmail.deliver(ME, "ann@x.com", thread_id=sent["threadId"], body="ok")
    env.gmail.deliver(ME, "bob@x.com", subject="Other", body="hello")
    profile = api.users().getProfile(userId=ME).execute()
    assert (profile["messagesTotal"], profile["threadsTotal"]) == (3, 2)
    assert int(profile["historyId"]) > int(empty["historyId"])
    r = api.users().messages().list(userId="me", q="from:bob", maxResults=5).execute()
    assert r["resultSizeEstimate"] == 1
    r = api.users().threads().list(userId="me", labelIds=["INBOX"]).execute()
    assert len(r["threads"]) == 2
    box = env.ctl("GET", "mailbox", params={"user": ME})
    assert sorted(len(t["messages"]) for t in box["threads"]) == [1, 2]


def test_batch_endpoint(env: Env) -> None:
    api = env.api("tok-readonly")
    ids = [env.gmail.deliver(ME, f"f{i}@x.com", body=f"hi {i}")["id"] for i in range(3)]
    results: dict[str, Any] = {}

    def collect(request_id: str, response: Any, exception: Exception | None) -> None:
        results[request_id] = exception or response

    batch = BatchHttpRequest(callback=collect, batch_uri=env.url + "/batch/gmail/v1")
    for i, mid in enumerate([*ids, "0000000000000000"]):
        batch.add(
            api.users().messages().get(userId="me", id=mid, format="metadata", metadataHeaders=["From"]),
            request_id=str(i),
        )
    batch.execute()
    assert [results[str(i)]["payload"]["headers"][0]["value"] for i in range(3)] == [
        "f0@x.com",
        "f1@x.com",
        "f2@x.com",
    ]
    assert isinstance(results["3"], HttpError) and results["3"].resp.status == 404
    assert env.gmail.quota(ME)["by_method"] == {"messages.get": 20}
    assert env.control.count("gmail.messages.get") == 4


def test_history_retention_window(env: Env) -> None:
    api = env.api("tok-readonly")
    start = api.users().getProfile(userId="me").execute()["historyId"]
    env.gmail.deliver(ME, "a@x.com", body="old")
    env.ctl("POST", "history/expire", json={"user": ME, "retention_seconds": 3600})
    assert len(api.users().history().list(userId="me", startHistoryId=start).execute()["history"]) == 1
    env.gmail.expire_history(ME, retention_seconds=0)
    with pytest.raises(HttpError) as exc:
        api.users().history().list(userId="me", startHistoryId=start).execute()
    assert status_of(exc) == 404
