"""Gmail users.watch/stop and the Pub/Sub push stand-in, over real HTTP.

Gmail is driven through google-api-python-client; pushes land on a real local HTTP endpoint; OIDC tokens
are verified with google-auth against the certificates the sandbox serves.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from google.auth.transport.requests import Request as GoogleRequest
from google.oauth2 import id_token
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from coffeeping_sandbox.__main__ import PUSH_ENV, parse_push
from coffeeping_sandbox.pubsub import ACK_STATUSES, PushConfig
from coffeeping_sandbox.server import Sandbox, start_sandbox

ME = "pat@example.com"
TOPIC = "projects/coffeeping-dev/topics/gmail-push"
SUB = "projects/coffeeping-dev/subscriptions/gmail-push"
AUDIENCE = "https://coffeeping.example/v1/webhooks/gmail"
PUSH_SA = "gmail-push@coffeeping-dev.iam.gserviceaccount.com"


class Receiver:
    """A push endpoint: records every request, answers the queued statuses (then 204)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses: deque[int] = deque()
        self.delay_s = 0.0
        self._cond = threading.Condition()
        self._server = make_server("127.0.0.1", 0, self, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_port}/v1/webhooks/gmail"

    def __call__(self, environ: dict, start_response: Any) -> Any:
        req = Request(environ)
        entry = {
            "t": time.time(),
            "path": req.path,
            "query": req.query_string.decode(),
            "headers": dict(req.headers),
            "body": req.get_json(silent=True),
        }
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._cond:
            status = self.statuses.popleft() if self.statuses else 204
            self.requests.append({**entry, "status": status})
            self._cond.notify_all()
        return Response(status=status)(environ, start_response)

    def wait(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.requests)} of {count} pushes arrived: {self.requests}")
                self._cond.wait(left)
            return list(self.requests)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.stop()


def gmail(sandbox: Sandbox, token: str) -> Any:
    return build(
        "gmail",
        "v1",
        credentials=Credentials(token=token),
        static_discovery=True,
        cache_discovery=False,
        client_options={"api_endpoint": sandbox.google_url},
    )


@pytest.fixture
def api(sandbox: Sandbox, google_token: Any) -> Any:
    """Gmail as the reply watcher sees it: a gmail.metadata-only token."""
    sandbox.gmail.set_rate_limit(None)
    return gmail(sandbox, google_token(email=ME, scopes=["gmail.metadata"]))


def ctl(sandbox: Sandbox, method: str, path: str, want: int = 200, **kw: Any) -> Any:
    resp = requests.request(method, f"{sandbox.google_url}/_sandbox/{path}", timeout=30, **kw)
    assert resp.status_code == want, resp.text
    return resp.json()


def subscribe(sandbox: Sandbox, receiver: Receiver, **kw: Any) -> dict[str, Any]:
    sandbox.pubsub.create_topic(TOPIC)
    options = {"audience": AUDIENCE, "service_account": PUSH_SA, **kw}
    return sandbox.pubsub.create_push_subscription(SUB, TOPIC, receiver.url, **options)


def watch(api: Any, **body: Any) -> dict[str, Any]:
    return api.users().watch(userId="me", body={"topicName": TOPIC, **body}).execute()


def notification(push: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.b64decode(push["body"]["message"]["data"]))


def verify(sandbox: Sandbox, token: str, audience: str = AUDIENCE, certs: str = "/oauth2/v1/certs") -> Any:
    return id_token.verify_token(token, GoogleRequest(), audience=audience, certs_url=sandbox.google_url + certs)


# ------------------------------------------------------------------------------------------ watch/stop


def test_watch_needs_a_topic_gmail_may_publish_to(sandbox: Sandbox, api: Any) -> None:
    with pytest.raises(HttpError) as exc:
        watch(api)
    assert exc.value.resp.status == 403
    err = json.loads(exc.value.content)["error"]
    assert err["errors"][0]["reason"] == "forbidden"
    assert err["message"] == (
        f"Error sending test message to Cloud PubSub {TOPIC} : User not authorized to perform this action."
    )
    # registered without Gmail's publish permission: still 403; granting it (control API) fixes it
    ctl(sandbox, "POST", "pubsub/topics", json={"name": TOPIC, "gmail_publisher": False})
    with pytest.raises(HttpError) as exc:
        watch(api)
    assert exc.value.resp.status == 403
    ctl(sandbox, "POST", "pubsub/topics/gmail-publisher", json={"name": TOPIC, "granted": True})
    assert watch(api)["historyId"]

    for body, want in [
        ({"topicName": "gmail-push"}, "Invalid topicName does not match projects/SOME_PROJECT/topics/SOME_TOPIC"),
        ({}, "topicName required"),
        ({"topicName": TOPIC, "labelFilterBehavior": "sideways"}, "label_filter_behavior"),
        ({"topicName": TOPIC, "labelIds": "INBOX"}, "labelIds"),
    ]:
        with pytest.raises(HttpError) as exc:
            api.users().watch(userId="me", body=body).execute()
        assert exc.value.resp.status == 400 and want in json.loads(exc.value.content)["error"]["message"]


def test_watch_replace_stop_scopes_and_quota(sandbox: Sandbox, api: Any, google_token: Any) -> None:
    sandbox.pubsub.create_topic(TOPIC)
    other = "projects/coffeeping-dev/topics/other"
    ctl(sandbox, "POST", "pubsub/topics", json={"name": other})
    profile = api.users().getProfile(userId="me").execute()
    before = time.time() * 1000
    first = watch(api, labelIds=["INBOX"], labelFilterBehavior="INCLUDE")
    assert set(first) == {"historyId", "expiration"}
    assert isinstance(first["historyId"], str) and first["historyId"] == profile["historyId"]
    assert isinstance(first["expiration"], str)
    assert abs(int(first["expiration"]) - (before + 7 * 86400 * 1000)) < 5000  # epoch ms, seven days ahead
    w = ctl(sandbox, "GET", "gmail/watch", params={"user": ME})["watch"]
    assert (w["topicName"], w["labelIds"], w["labelFilterBehavior"], w["expired"]) == (TOPIC, ["INBOX"], "include", False)

    # one watch per mailbox: a new call replaces it (topic and filter included)
    api.users().watch(userId="me", body={"topicName": other, "labelIds": ["SENT"], "labelFilterAction": "exclude"}).execute()
    w = sandbox.gmail.watch_of(ME)
    assert (w["topicName"], w["labelIds"], w["labelFilterBehavior"]) == (other, ["SENT"], "exclude")
    # labelFilterBehavior wins over the deprecated labelFilterAction
    watch(api, labelIds=["SENT"], labelFilterAction="exclude", labelFilterBehavior="include")
    assert sandbox.gmail.watch_of(ME)["labelFilterBehavior"] == "include"

    # stop: POST .../stop → 204 with an empty body; idempotent
    token = google_token(email=ME, scopes=["gmail.metadata"])
    resp = requests.post(
        f"{sandbox.google_url}/gmail/v1/users/me/stop", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    assert resp.status_code == 204 and resp.content == b""
    assert sandbox.gmail.watch_of(ME) is None
    assert api.users().stop(userId="me").execute() in ("", {}, None)

    # scopes as Gmail documents them: metadata/readonly/modify/mail.google.com, not gmail.send
    send_only = gmail(sandbox, google_token(email=ME, scopes=["gmail.send"]))
    for call in (lambda: watch(send_only), lambda: send_only.users().stop(userId="me").execute()):
        with pytest.raises(HttpError) as exc:
            call()
        assert exc.value.resp.status == 403
    readonly = gmail(sandbox, google_token(email=ME, scopes=["gmail.readonly"]))
    assert watch(readonly)["historyId"]

    q = ctl(sandbox, "GET", "gmail/quota", params={"user": ME})
    assert q["by_method"]["watch"] == 100 * 4 and q["by_method"]["stop"] == 50 * 2
    assert q["calls"]["watch"] == 4 and q["calls"]["stop"] == 2


# ------------------------------------------------------------------------------------------ push delivery


def test_delivered_reply_is_pushed_with_a_verifiable_oidc_token(
    sandbox: Sandbox, api: Any, receiver: Receiver
) -> None:
    subscribe(sandbox, receiver)
    start = watch(api, labelIds=["INBOX"])
    receiver.delay_s = 1.0  # a slow endpoint must not slow the Gmail side: delivery is asynchronous
    t0 = time.monotonic()
    reply = ctl(sandbox, "POST", "gmail/deliver", json={"to": ME, "from": "ann@x.com", "body": "Sounds good"})
    assert time.monotonic() - t0 < 0.5
    push = receiver.wait(1)[0]

    assert push["path"] == "/v1/webhooks/gmail" and push["status"] == 204
    headers = push["headers"]
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("APIs-Google")
    body = push["body"]
    assert body["subscription"] == SUB
    msg = body["message"]
    assert set(msg) == {"data", "messageId", "message_id", "publishTime", "publish_time"}
    assert msg["messageId"] == msg["message_id"] and msg["messageId"].isdigit()
    assert msg["publishTime"] == msg["publish_time"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", msg["publishTime"])
    data = notification(push)
    assert data == {"emailAddress": ME, "historyId": int(reply["historyId"])}
    assert isinstance(data["historyId"], int) and data["historyId"] > int(start["historyId"])

    scheme, _, token = headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    claims = verify(sandbox, token)
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["aud"] == AUDIENCE
    assert claims["email"] == PUSH_SA and claims["email_verified"] is True
    assert claims["sub"] == claims["azp"] and claims["sub"].isdigit()
    assert claims["exp"] - claims["iat"] == 3600
    # the same key set is published as JWKs (v3) too
    assert verify(sandbox, token, certs="/oauth2/v3/certs")["email"] == PUSH_SA
    certs = requests.get(f"{sandbox.google_url}/oauth2/v1/certs", timeout=5).json()
    assert all(v.startswith("-----BEGIN CERTIFICATE-----") for v in certs.values())

    # the history the push announces is there to read with the metadata token
    history = api.users().history().list(userId="me", startHistoryId=start["historyId"]).execute()
    assert history["historyId"] == str(data["historyId"])
    assert [h["messagesAdded"][0]["message"]["id"] for h in history["history"]] == [reply["id"]]

    (entry,) = sandbox.pubsub.deliveries(SUB)
    assert entry["outcome"] == "ack" and entry["status"] == 204 and entry["attempt"] == 1
    assert entry["data"] == data and entry["duration_ms"] >= 900
    assert "Bearer" not in json.dumps(sandbox.pubsub.deliveries()) and token not in json.dumps(entry)
    (note,) = sandbox.gmail.notifications(ME)
    assert note["published"] and note["pubsub_message_id"] == msg["messageId"] and note["change"] == "messageAdded"


def test_every_kind_of_change_notifies_without_a_label_filter(sandbox: Sandbox, api: Any, receiver: Receiver) -> None:
    subscribe(sandbox, receiver)
    watch(api)
    reply = sandbox.gmail.deliver(ME, "ann@x.com", body="hi")
    sandbox.gmail.user_send(ME, thread_id=reply["threadId"], body="thanks")
    sandbox.gmail.modify_labels(ME, reply["id"], remove=["UNREAD"])
    pushes = receiver.wait(3)
    ids = [notification(p)["historyId"] for p in pushes]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [n["change"] for n in sandbox.gmail.notifications(ME)] == ["messageAdded", "messageAdded", "labelRemoved"]


def test_label_filter_include_and_exclude(sandbox: Sandbox, api: Any, receiver: Receiver) -> None:
    subscribe(sandbox, receiver)
    watch(api, labelIds=["INBOX"], labelFilterBehavior="include")
    sandbox.gmail.user_send(ME, to="ann@x.com", subject="Coffee?", body="hi")  # SENT only: filtered out
    reply = sandbox.gmail.deliver(ME, "ann@x.com", body="yes")  # INBOX: pushed
    sandbox.gmail.modify_labels(ME, reply["id"], remove=["UNREAD"])  # a change to an INBOX message: pushed
    assert sandbox.pubsub.wait_idle()
    notes = sandbox.gmail.notifications(ME)
    assert [(n["change"], n["published"], n["reason"]) for n in notes] == [
        ("messageAdded", False, "label filter"),
        ("messageAdded", True, None),
        ("labelRemoved", True, None),
    ]
    assert [notification(p)["historyId"] for p in receiver.wait(2)] == [n["historyId"] for n in notes[1:]]

    watch(api, labelIds=["SENT"], labelFilterBehavior="exclude")
    sandbox.gmail.user_send(ME, to="bob@x.com", subject="Hello", body="hi")  # excluded
    sandbox.gmail.deliver(ME, "bob@x.com", body="hey")  # not SENT: pushed
    assert sandbox.pubsub.wait_idle()
    assert [(n["published"], n["reason"]) for n in sandbox.gmail.notifications(ME)[3:]] == [
        (False, "label filter"),
        (True, None),
    ]
    assert len(receiver.wait(3)) == 3


def test_expired_or_stopped_watches_stop_notifying(sandbox: Sandbox, api: Any, receiver: Receiver) -> None:
    subscribe(sandbox, receiver)
    ctl(sandbox, "POST", "gmail/watch/lifetime", json={"seconds": 0.3})
    w = watch(api)
    assert 0 < int(w["expiration"]) - time.time() * 1000 <= 300
    time.sleep(0.4)
    sandbox.gmail.deliver(ME, "ann@x.com", body="late")
    assert sandbox.gmail.watch_of(ME)["expired"] is True
    assert sandbox.gmail.notifications(ME)[-1]["reason"] == "watch expired"

    sandbox.gmail.set_watch_lifetime(None)  # back to seven days; renewing resumes notifications
    watch(api)
    sandbox.gmail.deliver(ME, "ann@x.com", body="renewed")
    assert len(receiver.wait(1)) == 1

    ctl(sandbox, "POST", "gmail/watch/expire", json={"user": ME})
    sandbox.gmail.deliver(ME, "ann@x.com", body="expired again")
    watch(api)
    api.users().stop(userId="me").execute()
    sandbox.gmail.deliver(ME, "ann@x.com", body="after stop")
    assert sandbox.pubsub.wait_idle()
    assert [n["reason"] for n in sandbox.gmail.notifications(ME)] == ["watch expired", None, "watch expired"]
    assert len(receiver.requests) == 1  # nothing after stop (no watch, nothing recorded)


def test_revoked_publish_permission_and_rate_limit(sandbox: Sandbox, api: Any, receiver: Receiver) -> None:
    subscribe(sandbox, receiver)
    watch(api)
    sandbox.pubsub.set_gmail_publisher(TOPIC, False)
    sandbox.gmail.deliver(ME, "ann@x.com", body="1")
    sandbox.pubsub.set_gmail_publisher(TOPIC, True)
    ctl(sandbox, "POST", "gmail/notification-interval", json={"seconds": 1.0})  # Gmail's 1 event/s per user
    sandbox.gmail.deliver(ME, "ann@x.com", body="2")
    sandbox.gmail.deliver(ME, "ann@x.com", body="3")
    assert sandbox.pubsub.wait_idle()
    notes = ctl(sandbox, "GET", "gmail/notifications", params={"user": ME})["notifications"]
    assert [n["reason"] for n in notes] == [
        "gmail-api-push@system.gserviceaccount.com may not publish",
        None,
        "notification rate limit",
    ]
    assert len(receiver.requests) == 1


# ------------------------------------------------------------------------------------------ retries, faults


def test_non_2xx_is_retried_with_exponential_backoff(sandbox: Sandbox, receiver: Receiver) -> None:
    subscribe(sandbox, receiver, min_backoff_s=0.1, max_backoff_s=0.25)
    receiver.statuses.extend([500, 503, 429, 200])
    sandbox.pubsub.publish(TOPIC, {"emailAddress": ME, "historyId": 1})
    sandbox.pubsub.wait_for_deliveries(SUB, 1, "ack")
    entries = sandbox.pubsub.deliveries(SUB)
    assert [(e["attempt"], e["status"], e["outcome"]) for e in entries] == [
        (1, 500, "nack"),
        (2, 503, "nack"),
        (3, 429, "nack"),
        (4, 200, "ack"),
    ]
    assert [e["retry_in_s"] for e in entries] == [0.1, 0.2, 0.25, None]
    sent = [e["sent_at"] for e in entries]
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.24, gaps
    assert len({p["body"]["message"]["messageId"] for p in receiver.requests}) == 1
    assert {200, 204} <= ACK_STATUSES and 203 not in ACK_STATUSES


def test_unreachable_endpoint_and_max_attempts(sandbox: Sandbox) -> None:
    sandbox.pubsub.create_topic(TOPIC)
    sandbox.pubsub.create_push_subscription(
        SUB, TOPIC, "http://127.0.0.1:9/nothing?token=secret", min_backoff_s=0.01, max_backoff_s=0.02, max_attempts=3
    )
    sandbox.pubsub.publish(TOPIC, {"emailAddress": ME, "historyId": 1})
    entries = sandbox.pubsub.wait_for_deliveries(SUB, 3, None)
    assert [e["outcome"] for e in entries] == ["error", "error", "abandoned"]
    assert entries[0]["error"] and entries[0]["status"] is None
    assert entries[0]["endpoint"] == "http://127.0.0.1:9/nothing" and entries[0]["authenticated"] is False
    assert "secret" not in json.dumps(entries)


def test_faults_delay_duplicate_reorder_drop(sandbox: Sandbox, receiver: Receiver) -> None:
    subscribe(sandbox, receiver)

    def publish(n: int) -> str:
        return sandbox.pubsub.publish(TOPIC, {"emailAddress": ME, "historyId": n})

    sandbox.pubsub.set_faults(SUB, delay_s=0.3)
    publish(1)
    (entry,) = sandbox.pubsub.wait_for_deliveries(SUB, 1)
    assert entry["latency_ms"] >= 290

    ctl(sandbox, "POST", "pubsub/faults", json={"subscription": SUB, "duplicate": "every"})
    mid = publish(2)
    pushes = receiver.wait(3)[1:]
    assert [p["body"]["message"]["messageId"] for p in pushes] == [mid, mid]
    assert [e["duplicate"] for e in sandbox.pubsub.wait_for_deliveries(SUB, 3)[1:]] == [False, True]

    ctl(sandbox, "POST", "pubsub/faults", json={"subscription": SUB, "reorder": 3})
    for n in (10, 11, 12):
        publish(n)
    assert [notification(p)["historyId"] for p in receiver.wait(6)[3:]] == [12, 11, 10]

    ctl(sandbox, "POST", "pubsub/faults", json={"subscription": SUB, "reorder": 5, "reorder_window_s": 0.2})
    publish(20)
    publish(21)  # only two of five arrive: the window releases them, newest first
    assert [notification(p)["historyId"] for p in receiver.wait(8)[6:]] == [21, 20]

    ctl(sandbox, "POST", "pubsub/faults", json={"subscription": SUB, "drop_next": 1})
    dropped, kept = publish(30), publish(31)
    assert [p["body"]["message"]["messageId"] for p in receiver.wait(9)[8:]] == [kept]
    sandbox.pubsub.set_faults(SUB, drop="every")
    publish(32)
    assert sandbox.pubsub.wait_idle()
    drops = [e["message_id"] for e in sandbox.pubsub.deliveries(SUB) if e["outcome"] == "dropped"]
    assert drops[0] == dropped and len(drops) == 2
    ctl(sandbox, "DELETE", "pubsub/faults", params={"subscription": SUB})
    publish(33)
    assert notification(receiver.wait(10)[9])["historyId"] == 33

    for bad in ({"duplicate": 2}, {"drop": "often"}, {"reorder": -1}, {"bogus": 1}):
        ctl(sandbox, "POST", "pubsub/faults", want=400, json={"subscription": SUB, **bad})
    ctl(sandbox, "POST", "pubsub/faults", want=404, json={"subscription": "projects/p/subscriptions/none"})


def test_control_api_subscriptions_publish_and_wait(sandbox: Sandbox, receiver: Receiver) -> None:
    ctl(sandbox, "POST", "pubsub/topics", json={"name": TOPIC})
    sub = ctl(
        sandbox,
        "POST",
        "pubsub/subscriptions",
        json={"name": "push", "topic": TOPIC, "endpoint": receiver.url + "?token=abc", "service_account": PUSH_SA},
    )
    assert sub["name"] == SUB.replace("gmail-push", "push")
    assert sub["pushConfig"] == {
        "pushEndpoint": receiver.url,
        "oidcToken": {"serviceAccountEmail": PUSH_SA, "audience": receiver.url},  # query (a secret) not shown
    }
    ctl(sandbox, "POST", "pubsub/subscriptions", want=400, json={"name": "push", "topic": TOPIC, "endpoint": "x"})
    ctl(sandbox, "POST", "pubsub/subscriptions", want=404, json={"name": "s", "topic": "projects/p/topics/no", "endpoint": receiver.url})
    out = ctl(sandbox, "POST", "pubsub/publish", json={"topic": TOPIC, "data": "hello", "attributes": {"k": "v"}})
    waited = ctl(sandbox, "GET", "pubsub/deliveries", params={"subscription": sub["name"], "count": 1, "timeout_s": 5})
    assert waited["deliveries"][0]["message_id"] == out["messageIds"][0]
    push = receiver.requests[0]
    assert push["query"] == "token=abc"
    assert push["body"]["message"]["attributes"] == {"k": "v"}
    assert base64.b64decode(push["body"]["message"]["data"]) == b"hello"
    # the default audience is the endpoint URL, as in Pub/Sub
    token = push["headers"]["Authorization"].split()[1]
    assert verify(sandbox, token, audience=receiver.url + "?token=abc")["email"] == PUSH_SA
    assert ctl(sandbox, "GET", "pubsub/messages", params={"topic": TOPIC})["messages"][0]["data"] is None
    timeout = requests.get(
        f"{sandbox.google_url}/_sandbox/pubsub/deliveries",
        params={"subscription": sub["name"], "count": 5, "timeout_s": 0.2},
        timeout=5,
    )
    assert timeout.status_code == 408
    ctl(sandbox, "POST", "pubsub/subscriptions/delete", json={"name": sub["name"]})
    assert ctl(sandbox, "GET", "pubsub/subscriptions")["subscriptions"] == []
    ctl(sandbox, "POST", "pubsub/topics/delete", json={"name": TOPIC})
    ctl(sandbox, "POST", "pubsub/publish", want=404, json={"topic": TOPIC, "data": "x"})


# ------------------------------------------------------------------------------------------ OIDC helpers


def test_minted_tokens_for_forged_push_tests(sandbox: Sandbox) -> None:
    def mint(**kw: Any) -> str:
        return ctl(sandbox, "POST", "pubsub/oidc-token", json={"audience": AUDIENCE, "email": PUSH_SA, **kw})["token"]

    good = verify(sandbox, mint())
    assert (good["iss"], good["aud"], good["email"], good["email_verified"]) == (
        "https://accounts.google.com",
        AUDIENCE,
        PUSH_SA,
        True,
    )
    with pytest.raises(ValueError, match="audience"):
        verify(sandbox, mint(audience="https://elsewhere.example"))
    assert verify(sandbox, mint(email="intruder@evil.iam.gserviceaccount.com"))["email"] != PUSH_SA
    assert verify(sandbox, mint(email_verified=False))["email_verified"] is False
    assert verify(sandbox, mint(issuer="https://evil.example"))["iss"] == "https://evil.example"
    with pytest.raises(ValueError, match="expired"):
        verify(sandbox, mint(iat=int(time.time()) - 7200, lifetime_s=3600))
    with pytest.raises(ValueError, match="signature"):
        verify(sandbox, mint(forged=True))  # the real kid, a key not in the certificates
    with pytest.raises(ValueError, match="Certificate for key id"):
        verify(sandbox, sandbox.pubsub.mint_oidc_token(AUDIENCE, PUSH_SA, kid="0" * 40))
    assert "email" not in verify(sandbox, mint(omit=["email"]))
    assert verify(sandbox, mint(claims={"email": "x@y.z", "extra": 1}))["extra"] == 1


def test_key_rotation_keeps_old_tokens_verifiable_until_reset(sandbox: Sandbox) -> None:
    old = sandbox.pubsub.mint_oidc_token(AUDIENCE, PUSH_SA)
    first = list(requests.get(f"{sandbox.google_url}/oauth2/v1/certs", timeout=5).json())
    rotated = ctl(sandbox, "POST", "google-keys/rotate", json={})
    new = sandbox.pubsub.mint_oidc_token(AUDIENCE, PUSH_SA)
    certs = requests.get(f"{sandbox.google_url}/oauth2/v1/certs", timeout=5).json()
    assert set(certs) == {*first, rotated["kid"]}
    assert verify(sandbox, old)["email"] == verify(sandbox, new)["email"] == PUSH_SA
    ctl(sandbox, "POST", "google-keys/rotate", json={"keep_old": False})
    with pytest.raises(ValueError):
        verify(sandbox, old)
    sandbox.reset()
    assert list(requests.get(f"{sandbox.google_url}/oauth2/v1/certs", timeout=5).json()) == first
    assert verify(sandbox, old)["email"] == PUSH_SA


# ------------------------------------------------------------------------------------------ configuration


def test_push_subscription_configured_at_start(receiver: Receiver) -> None:
    spec = f"topic={TOPIC},endpoint={receiver.url},audience={AUDIENCE},service_account={PUSH_SA},min_backoff=0.05"
    cfg = parse_push(spec)
    assert cfg == PushConfig(TOPIC, receiver.url, AUDIENCE, PUSH_SA, min_backoff_s=0.05)
    for bad in ("endpoint=http://x", "topic=t,endpoint=http://x", f"topic={TOPIC},endpoint=http://x,colour=red"):
        with pytest.raises(Exception, match="topic|unknown|required"):
            parse_push(bad)
    assert PUSH_ENV == "COFFEEPING_SANDBOX_PUBSUB_PUSH"

    sb = start_sandbox(pubsub_push=[cfg], pubsub_topics=["projects/coffeeping-dev/topics/spare"])
    try:
        def check() -> None:
            (sub,) = sb.pubsub.subscriptions()
            assert sub["name"] == SUB and sub["topic"] == TOPIC
            assert sub["retryPolicy"]["minimumBackoff"] == "0.05s"
            assert {t["name"] for t in sb.pubsub.topics()} == {TOPIC, "projects/coffeeping-dev/topics/spare"}

        check()
        assert any(k.startswith("pubsub push") for k in sb.endpoints())
        sb.pubsub.set_faults(SUB, drop="every")
        sb.reset()  # configuration survives a reset; faults and logs do not
        check()
        tok = sb.oauth.issue_tokens(email=ME, scopes=["gmail.metadata"])["access_token"]
        sb.gmail.set_rate_limit(None)
        gmail(sb, tok).users().watch(userId="me", body={"topicName": TOPIC}).execute()
        sb.gmail.deliver(ME, "ann@x.com", body="hello")
        push = receiver.wait(1)[0]
        assert notification(push)["emailAddress"] == ME
        assert verify(sb, push["headers"]["Authorization"].split()[1])["aud"] == AUDIENCE
    finally:
        sb.stop()
