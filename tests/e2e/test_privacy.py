"""The privacy promise, proved: after a full journey (send, follow-ups, inbound mail, replies, an
out-of-office answer, a bounce, a history 404) nothing of a received message was read beyond its From
header, and no received subject or body is stored in any table or written to any log."""

from __future__ import annotations

import psycopg
import requests

from tests.e2e.test_replies import (
    active_thread,
    connect_gmail,
    deliver,
    mailbox,
    start_sequence,
    stopped,
    unique,
    wait_for,
)

RECEIVED = {
    "subjects": ["Re: my medical appointment", "Automatic reply: away", "Quarterly numbers, confidential"],
    "bodies": ["My diagnosis is private 7731", "I am on leave until 12 March 4410", "Revenue was 9.3M 5582"],
    "names": ["Priya Confidential", "Oscar Outofoffice", "Newsletter Sender"],
}


def test_a_full_journey_reads_only_from_headers_of_received_mail_and_stores_none_of_their_content(stack):
    user, email = unique("user_privacy"), f"{unique('owner')}@example.com"
    session = stack.session(user)
    connect_gmail(stack, session, email)
    contacts = [f"{unique(n)}@contact.example" for n in ("priya", "oscar", "nobody", "quinn")]
    sequences = [start_sequence(session, c, [{"body": "Following up", "delay": "PT3S"},
                                             {"body": "Last note", "delay": "PT600S"}])[1] for c in contacts]
    threads = [active_thread(session, s) for s in sequences]
    wait_for(lambda: sum(1 for t in mailbox(stack, email)["threads"] for m in t["messages"]
                         if "SENT" in m["labelIds"]) >= 8, what="first follow-ups to go out")

    deliver(stack, to=email, **{"from": f"{RECEIVED['names'][2]} <news@else.example>"},
            subject=RECEIVED["subjects"][2], body=RECEIVED["bodies"][2])
    deliver(stack, to=email, **{"from": f"{RECEIVED['names'][0]} <{contacts[0]}>"}, thread_id=threads[0],
            subject=RECEIVED["subjects"][0], body=RECEIVED["bodies"][0])
    deliver(stack, to=email, **{"from": f"{RECEIVED['names'][1]} <{contacts[1]}>"}, thread_id=threads[1],
            subject=RECEIVED["subjects"][1], body=RECEIVED["bodies"][1], kind="auto_reply")
    deliver(stack, to=email, **{"from": "Mail Delivery Subsystem <mailer-daemon@googlemail.com>"},
            thread_id=threads[2], kind="bounce")
    assert [stopped(session, s)["stop_reason"] for s in sequences[:3]] == ["replied", "replied", "bounced"]

    requests.post(f"{stack.google}/_sandbox/gmail/history/expire", json={"user": email}, timeout=10).raise_for_status()
    deliver(stack, to=email, **{"from": contacts[3]}, thread_id=threads[3], body="Yes after the 404")
    assert stopped(session, sequences[3])["stop_reason"] == "replied"

    audit = requests.get(f"{stack.google}/_sandbox/gmail/privacy-audit", params={"user": email}, timeout=10).json()
    assert audit["count"] == 0, audit["content_reads"]
    assert audit["snippet_exposures"] == []
    log = requests.get(f"{stack.google}/_sandbox/requests", params={"prefix": "gmail."}, timeout=10).json()
    entries = log["requests"] if isinstance(log, dict) else log
    mine = [e for e in entries if e.get("user") == email]
    assert not [e for e in mine if e["method"] in ("gmail.messages.get", "gmail.threads.get")
                and e.get("format") in ("full", "raw")]
    assert not [e for e in mine if e["method"] == "gmail.messages.attachments.get"]
    assert any(e["method"] == "gmail.threads.get" for e in mine)  # the 404 path ran

    secrets = [*RECEIVED["subjects"], *RECEIVED["bodies"], *RECEIVED["names"], "Delivery Status Notification"]
    found = _database_hits(stack.database.admin_url, secrets)
    assert found == [], found
    for path in (stack.config.var_dir / "logs").glob("*.log"):
        text = path.read_text(errors="replace")
        assert not [s for s in secrets if s in text], path.name


def _database_hits(admin_url: str, needles: list[str]) -> list[tuple[str, str]]:
    """Every row of every table of every service schema, as text, searched for the needles."""
    hits = []
    with psycopg.connect(admin_url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('accounts', 'vault', 'mailer', 'watcher') AND table_type = 'BASE TABLE'"
        ).fetchall()
        for schema, table in tables:
            for (row,) in conn.execute(f'SELECT t::text FROM "{schema}"."{table}" t'):
                hits.extend((f"{schema}.{table}", n) for n in needles if n in row)
    return hits
