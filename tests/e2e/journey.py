"""The user's journey through the public API, as the end-to-end and fault tests play it: connect Gmail,
add contacts, start sequences, read what Gmail holds, follow a deletion, and prove nothing is left."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import psycopg
import requests
from kombu import Connection, Exchange, Producer

CONFIRM = {"confirm": "delete my account"}


def wait_until(predicate: Callable[[], object], timeout: float = 60.0, step: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def new_user(tag: str) -> str:
    return f"user_{tag}{uuid.uuid4().hex[:10]}"


def google_email(tag: str) -> str:
    return f"{tag}.{uuid.uuid4().hex[:8]}@gmail.com"


# -- helpers: the user's journey through the public API ------------------------------------------------


def connect_gmail(stack, http: requests.Session, email: str) -> None:
    """The consent flow: connect → Google's consent (automatic in the sandbox) → callback."""
    requests.post(f"{stack.google}/_sandbox/consent", json={"email": email}, timeout=10).raise_for_status()
    started = http.post("/v1/gmail/connect")
    assert started.status_code == 200, started.text
    consent = requests.get(started.json()["authorization_url"], allow_redirects=False, timeout=10)
    assert consent.status_code in (302, 303), consent.text
    callback = consent.headers["Location"]
    assert "code" in parse_qs(urlsplit(callback).query)
    # The state cookie is Secure; over the test's plain HTTP it is passed by hand, as a browser would send it.
    cookies = {c.name: c.value for c in started.cookies}
    done = http.get(callback, cookies=cookies, allow_redirects=False)
    assert done.status_code in (302, 303), done.text
    assert "gmail=connected" in done.headers["Location"], done.headers["Location"]


def add_contact(http: requests.Session, email: str, first_name: str = "Ada") -> str:
    reply = http.post("/v1/contacts", json={"email": email, "first_name": first_name, "company": "Analytical Ltd"})
    assert reply.status_code in (200, 201), reply.text
    return str(reply.json()["id"])


def start_sequence(http: requests.Session, contact_id: str) -> str:
    reply = http.post("/v1/sequences", json={
        "contact_id": contact_id,
        "subject": "Coffee next week, {{first_name}}?",
        "body": "Hi {{first_name}}, would you have 15 minutes for a coffee?",
        "follow_ups": [{"body": "Just bumping this up.", "delay": "P3D"},
                       {"body": "Last note from me.", "delay": "P5D"}],
    })
    assert reply.status_code in (200, 201), reply.text
    sequence_id = str(reply.json()["id"])
    sent = http.post(f"/v1/sequences/{sequence_id}/send")
    assert sent.status_code in (200, 202), sent.text
    return sequence_id


def mailbox(stack, email: str) -> dict:
    reply = requests.get(f"{stack.google}/_sandbox/gmail/mailbox", params={"user": email}, timeout=10)
    reply.raise_for_status()
    return reply.json()


def drafts_in(stack, email: str) -> list[dict]:
    return mailbox(stack, email)["drafts"]


def seed(stack, http: requests.Session, tag: str, contacts: int = 2, with_drafts: bool = True) -> dict:
    """A user with Gmail connected, contacts, and a sequence whose follow-ups sit as drafts in Gmail."""
    email = google_email(tag)
    connect_gmail(stack, http, email)
    contact_emails = [f"{tag}.contact{i}.{uuid.uuid4().hex[:6]}@example.com" for i in range(contacts)]
    contact_ids = [add_contact(http, address) for address in contact_emails]
    if with_drafts:
        start_sequence(http, contact_ids[0])
        assert wait_until(lambda: len(drafts_in(stack, email)) >= 2, timeout=30), "follow-up drafts not created"
    return {"email": email, "contacts": contact_emails, "contact_ids": contact_ids}


def deletion(http: requests.Session) -> dict:
    reply = http.get("/v1/account/deletion")
    assert reply.status_code == 200, reply.text
    return reply.json()


def wait_completed(http: requests.Session, timeout: float = 90.0) -> dict:
    final = wait_until(lambda: (d := deletion(http))["state"] == "completed" and d, timeout=timeout)
    assert final, f"deletion did not complete: {deletion(http)}"
    return final  # type: ignore[return-value]


def rows_naming(database, needles: list[str]) -> list[str]:
    """Every table of every schema, read as the superuser: the tables with a row mentioning a needle."""
    found = []
    with psycopg.connect(database.admin_url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        assert {schema for schema, _ in tables} >= {"accounts", "vault", "mailer", "watcher"}
        for schema, table in tables:
            for needle in needles:
                (count,) = conn.execute(
                    f'SELECT count(*) FROM "{schema}"."{table}" t WHERE t::text ILIKE %s', (f"%{needle}%",)
                ).fetchone()
                if count:
                    found.append(f"{schema}.{table} ({count} rows mention {needle!r})")
    return found


def assert_nothing_left(stack, needles: list[str]) -> None:
    found = rows_naming(stack.database, needles)
    assert not found, "rows still refer to the user:\n" + "\n".join(found)


def refresh_token_of(stack, email: str) -> str:
    grants = requests.get(f"{stack.google}/_sandbox/grants", timeout=10).json()["grants"]
    tokens = [t["token"] for g in grants if g["email"] == email for t in g["refresh_tokens"]]
    assert tokens, "the sandbox holds no refresh token for the account"
    return tokens[-1]


def refresh_answer(stack, refresh_token: str) -> requests.Response:
    env = stack.config.env("token-vault")
    return requests.post(f"{stack.google}/token", data={
        "grant_type": "refresh_token", "refresh_token": refresh_token,
        "client_id": env["GOOGLE_CLIENT_ID"], "client_secret": env["GOOGLE_CLIENT_SECRET"]}, timeout=10)


def export_of(http: requests.Session) -> dict:
    reply = http.get("/v1/export")
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Disposition"] == 'attachment; filename="coffeeping-export.json"'
    return reply.json()


def publish_as(stack, login: str, envelopes: list[dict], exchange: str = "events", routing_key: str = "",
               user_id: str | None = "own") -> None:
    """Publish envelopes on the stack's broker with ``login``'s own credentials. ``user_id`` "own" signs
    them with that login as its relay does, None leaves them unsigned, anything else claims another
    sender. ``events`` routes by type, ``dlx`` to ``routing_key``'s dead queue, "" is the default
    exchange (straight into the queue named ``routing_key``)."""
    prefix = stack.config.messaging_prefix
    with Connection(stack.config.broker_url(login), transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.channel(), auto_declare=False,
                            exchange=Exchange(f"{prefix}.{exchange}" if exchange else "",
                                              type="topic" if exchange == "events" else "direct", durable=True))
        signed = {} if user_id is None else {"user_id": conn.userid if user_id == "own" else user_id}
        for envelope in envelopes:
            producer.publish(json.dumps(envelope).encode(), routing_key=routing_key or envelope["type"], mandatory=True,
                             content_type="application/json", message_id=envelope["id"], retry=False, **signed)
