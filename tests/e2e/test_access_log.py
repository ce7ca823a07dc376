"""Access transparency through the public API: after a full journey (connect, sends with follow-ups, a
reply, a bounce, a history 404, a takeover, a contact's deletion) the access log equals the sandbox's own
request log for that user, call for call (nothing missing, nothing invented); its pages, filters and
counts agree; the summary counts 0 content reads; the log is in the export; and no table of the log holds
an address, a subject or a header value."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import psycopg
import requests

from tests.e2e.journey import export_of
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

PATH_ID = {"users.messages.get": "message_id", "users.threads.get": "thread_id", "users.drafts.get": "draft_id",
           "users.drafts.update": "draft_id", "users.drafts.delete": "draft_id"}
RECEIVED = {"subject": "Re: my private appointment 5521", "body": "Private body 5521", "name": "Priya Private"}
LOG_TABLES = ("mailer.gmail_access", "mailer.forgotten_sequences", "watcher.gmail_access",
              "watcher.forgotten_sequences", "vault.audit")


def access_log(session, **query) -> list[dict]:
    """Every entry of the signed-in user, newest first, read page by page."""
    entries: list[dict] = []
    params = {"limit": "25", **query}
    while True:
        reply = session.get("/v1/privacy/access-log", params=params)
        assert reply.status_code == 200, reply.text
        page = reply.json()
        entries += page["items"]
        if not page["next_cursor"]:
            return entries
        params["cursor"] = page["next_cursor"]


def as_gmail_saw(entry: dict) -> tuple:
    field = PATH_ID.get(entry["method"])
    return ("gmail." + entry["method"].removeprefix("users."), entry.get(field) if field else None,
            entry.get("format"), tuple(entry["metadata_headers"]) or None)


def sandbox_calls(stack, email: str) -> list[tuple]:
    log = requests.get(f"{stack.google}/_sandbox/requests", params={"prefix": "gmail."}, timeout=10).json()
    return [(e["method"], e["id"], e["format"], tuple(e["metadataHeaders"] or ()) or None)
            for e in log["requests"] if e.get("user") == email]


def gmail_entries(session) -> list[dict]:
    return [e for e in access_log(session) if e["service"] != "token-vault"]


def assert_log_is_what_gmail_saw(stack, session, email: str, expected=lambda calls: calls) -> list[dict]:
    """Every call Gmail saw so far is in the log, and the log holds nothing Gmail did not see: Gmail's calls
    before the wait (``seen``) are all there, and what the log holds is among Gmail's calls after it (the
    watcher keeps polling meanwhile). ``expected`` maps Gmail's calls to what the log should hold."""
    seen = Counter(expected(sandbox_calls(stack, email)))
    wait_for(lambda: not (seen - Counter(as_gmail_saw(e) for e in gmail_entries(session))), timeout=20,
             what="the access log to catch up with Gmail")
    entries = gmail_entries(session)
    logged = Counter(as_gmail_saw(e) for e in entries)
    later = Counter(expected(sandbox_calls(stack, email)))
    assert not (seen - logged), f"missing from the log: {seen - logged}"
    assert not (logged - later), f"in the log but never seen by Gmail: {logged - later}"
    return entries


def test_the_access_log_is_gmails_own_record_of_the_journey_and_keeps_no_content(stack):
    user, email = unique("user_access"), f"{unique('owner')}@example.com"
    session = stack.session(user)
    connect_gmail(stack, session, email)
    fay = f"{unique('fay')}@contact.example"
    fay_contact, fay_sequence = start_sequence(session, fay, [{"body": "Much later", "delay": "P3D"}])
    fay_thread = active_thread(session, fay_sequence)
    wait_for(lambda: len(mailbox(stack, email)["drafts"]) == 1, what="Fay's follow-up as a draft")
    contacts = {name: f"{unique(name)}@contact.example" for name in ("ann", "bob", "cat", "dan")}
    follow_ups = [{"body": "Following up", "delay": "PT3S"}, {"body": "Last note", "delay": "PT600S"}]
    sequences = {name: start_sequence(session, address, follow_ups)[1] for name, address in contacts.items()}
    threads = {name: active_thread(session, seq) for name, seq in sequences.items()}
    wait_for(lambda: sum("SENT" in m["labelIds"] for t in mailbox(stack, email)["threads"] for m in t["messages"])
             >= 9, what="the first follow-ups to go out")

    deliver(stack, to=email, **{"from": f"{RECEIVED['name']} <{contacts['ann']}>"}, thread_id=threads["ann"],
            subject=RECEIVED["subject"], body=RECEIVED["body"])
    deliver(stack, to=email, **{"from": "Mail Delivery Subsystem <mailer-daemon@googlemail.com>"},
            thread_id=threads["bob"], kind="bounce")
    requests.post(f"{stack.google}/_sandbox/gmail/user-send", json={
        "user": email, "thread_id": threads["dan"], "body": "I'll take it from here"}, timeout=10).raise_for_status()
    assert stopped(session, sequences["ann"])["stop_reason"] == "replied"
    assert stopped(session, sequences["bob"])["stop_reason"] == "bounced"
    assert stopped(session, sequences["dan"])["stop_reason"] == "user_took_over"
    # The mailbox moves on where no push tells the watcher (a draft), then Google forgets the history: the
    # watcher's next read is a 404, and it reads each watched thread instead.
    fay_draft = session.get(f"/v1/sequences/{fay_sequence}").json()["steps"][1]["draft_id"]
    requests.post(f"{stack.google}/_sandbox/gmail/drafts/edit", json={"user": email, "draft_id": fay_draft,
                                                                        "body": "Edited"}, timeout=10).raise_for_status()
    requests.post(f"{stack.google}/_sandbox/gmail/history/expire", json={"user": email}, timeout=10).raise_for_status()
    deliver(stack, to=email, **{"from": contacts["cat"]}, thread_id=threads["cat"], body="Yes, after the 404")
    assert stopped(session, sequences["cat"])["stop_reason"] == "replied"
    wait_for(lambda: len(mailbox(stack, email)["drafts"]) == 1, what="the stopped sequences' drafts to go")
    assert mailbox(stack, email)["drafts"][0]["id"] == fay_draft

    entries = assert_log_is_what_gmail_saw(stack, session, email)
    assert ("gmail.history.list", None, None, None) in Counter(as_gmail_saw(e) for e in entries)
    assert any(e["method"] == "users.history.list" and e.get("http_status") == 404 for e in entries)
    assert any(e["method"] == "users.threads.get" and e["service"] == "reply-watcher"
               and e.get("thread_id") == fay_thread for e in entries)
    fay_calls = Counter(as_gmail_saw(e) for e in entries if e.get("sequence_id") == fay_sequence)
    fay_drafts = {d["id"] for d in mailbox(stack, email)["drafts"]}
    assert fay_calls

    # Fay's contact goes: her entries go, and the removal of her draft is logged without an id.
    assert session.delete(f"/v1/contacts/{fay_contact}").status_code == 204
    wait_for(lambda: mailbox(stack, email)["drafts"] == [], what="Fay's draft to go")

    def without_fay(calls: list[tuple]) -> list[tuple]:
        kept = list((Counter(calls) - fay_calls).elements())
        return [(m, None if i in fay_drafts else i, f, h) for m, i, f, h in kept]

    entries = assert_log_is_what_gmail_saw(stack, session, email, without_fay)
    assert not [e for e in entries if e.get("sequence_id") == fay_sequence or e.get("thread_id") == fay_thread]
    removed = [e for e in entries if e["contact_deleted"]]
    assert [e["method"] for e in removed] == ["users.drafts.delete"] * len(removed) and removed

    summary = session.get("/v1/privacy/summary")
    assert summary.status_code == 200, summary.text
    counts = summary.json()
    assert counts["content_reads"] == 0
    assert set(counts["metadata_headers"]) <= {"From", "Message-ID"} and counts["metadata_headers"]["From"] > 0
    assert counts["messages_sent"] == sum(1 for e in entries if e["kind"] == "message_sent")
    assert counts["tokens_issued"] > 0 and counts["gmail_calls"] >= len(entries)

    assert_pages_filters_and_counts_agree(session)
    export = export_of(session)
    assert export["sections"]["gmail_access_by_mailer"]["records"]
    assert export["sections"]["gmail_access_by_reply_watcher"]["records"]
    assert any("expires_at" in r for r in export["sections"]["vault_audit"]["records"])

    needles = [email, fay, *contacts.values(), "Coffee next week?", *RECEIVED.values(), "Mail Delivery Subsystem",
               "mailer-daemon", "take it from here"]
    assert log_tables_naming(stack.database.admin_url, needles) == []


def assert_pages_filters_and_counts_agree(session) -> None:
    cut = dt.datetime.now(dt.UTC).isoformat()  # the log up to now: the watcher may still stop its Gmail watch
    everything = access_log(session, limit="100", until=cut)
    assert [e["id"] for e in access_log(session, limit="7", until=cut)] == [e["id"] for e in everything]
    times = [dt.datetime.fromisoformat(e["at"]) for e in everything]
    assert times == sorted(times, reverse=True)
    watcher = access_log(session, service="reply-watcher", until=cut)
    assert watcher and watcher == [e for e in everything if e["service"] == "reply-watcher"]
    reads = access_log(session, kind="metadata_read", method="users.threads.get", until=cut)
    assert reads == [e for e in everything if e["kind"] == "metadata_read" and e["method"] == "users.threads.get"]
    middle = times[len(times) // 2]
    assert access_log(session, until=middle.isoformat()) == [e for e, at in zip(everything, times, strict=True)
                                                             if at < middle]
    page = session.get("/v1/privacy/access-log", params={"until": cut}).json()
    counted: Counter[str] = Counter()
    for day in page["days"]:
        counted[day["kind"]] += day["calls"]
    assert counted == Counter(e["kind"] for e in everything)
    assert all(e["description"] for e in everything)
    bad = session.get("/v1/privacy/access-log", params={"cursor": "bm90LWEtY3Vyc29y"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "cursor"


def log_tables_naming(admin_url: str, needles: list[str]) -> list[tuple[str, str]]:
    hits = []
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for table in LOG_TABLES:
            for (row,) in conn.execute(f"SELECT t::text FROM {table} t"):
                hits.extend((table, n) for n in needles if n.lower() in row.lower())
    return hits
