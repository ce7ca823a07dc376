"""The mailer's access log, through its gRPC API and against the sandbox's own request log: every Gmail call
of a sequence recorded call for call, described with the user's own subject and step, counted per kind;
forgotten with a contact (the drafts removed afterwards logged without ids) and with the account; in the
export; and a bad filter refused as a field violation."""

from __future__ import annotations

import json

import grpc
import pytest

from coffeeping.common.rpc import TlsFiles, call_metadata, channel
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping.mailer.v1 import mailer_pb2_grpc
from coffeeping.types.v1 import access_pb2, export_pb2
from coffeeping_gateway.web import rpc_problem
from tests.integration.mailer.conftest import contact_email, publish_event, wait_for

PATH_ID = {"users.messages.get": "message_id", "users.threads.get": "thread_id", "users.drafts.get": "draft_id",
           "users.drafts.update": "draft_id", "users.drafts.delete": "draft_id"}


def _start(api, user_id, follow_ups):
    status, contact = api(user_id, "contacts.create", {"email": contact_email(), "first_name": "Ada"})
    assert status == 201, contact
    status, seq = api(user_id, "sequences.create", {"contact_id": contact["id"], "subject": "Coffee, {{first_name}}?",
                                                    "body": "Hi {{first_name}}", "follow_ups": follow_ups})
    assert status == 201, seq
    assert api(user_id, "sequences.send", sequence_id=seq["id"])[0] == 202
    return contact, seq


def _entries(api, user_id, **request) -> list[access_pb2.AccessEntry]:
    """The user's whole log, oldest first, read page by page."""
    found: list[access_pb2.AccessEntry] = []
    page = access_pb2.ListAccessEntriesRequest(page_size=7, **request)
    while True:
        entries = api.stub.ListAccessEntries(page, metadata=call_metadata(user_id), timeout=10).entries
        found.extend(entries)
        if len(entries) < 7:
            return found[::-1]
        page.before.CopyFrom(entries[-1].at)
        page.before_id = entries[-1].id


def _as_gmail_saw(entry: access_pb2.AccessEntry) -> tuple:
    field = PATH_ID.get(entry.method)
    return ("gmail." + entry.method.removeprefix("users."), getattr(entry, field) if field else None,
            entry.format or None, list(entry.metadata_headers) or None)


def _sandbox_log(sandbox, email: str) -> list[tuple]:
    return [(e["method"], e["id"], e["format"], e["metadataHeaders"] or None)
            for e in sandbox.control.log("gmail.") if e.get("user") == email]


def _settled(api, sandbox, user_id, email) -> list[access_pb2.AccessEntry]:
    """The log once it holds as many calls as Gmail saw (the writer flushes every 250 ms)."""
    wait_for(lambda: len(_entries(api, user_id)) >= len(_sandbox_log(sandbox, email)), timeout=10)
    return _entries(api, user_id)


def test_every_gmail_call_of_a_sequence_is_recorded_call_for_call_and_described_with_its_own_subject(
        api, sandbox, user):
    user_id, email = user
    _, seq = _start(api, user_id, [{"body": "Nudge", "delay": "PT2S"}])
    assert wait_for(lambda: api(user_id, "sequences.get", sequence_id=seq["id"])[1]["status"] == "completed",
                    timeout=30)
    entries = _settled(api, sandbox, user_id, email)
    assert [_as_gmail_saw(e) for e in entries] == _sandbox_log(sandbox, email)

    words = [e.description for e in entries]
    assert "Mailer sent the first email of 'Coffee, Ada?'" in words
    assert "Mailer created the draft of follow-up 1 of 'Coffee, Ada?'" in words
    assert "Mailer sent follow-up 1 of 'Coffee, Ada?' from its draft" in words
    check = next(e for e in entries if e.method == "users.threads.get")
    assert check.description.startswith("Mailer read the From header of the messages in thread ")
    assert check.description.endswith(", for follow-up 1 of 'Coffee, Ada?'")
    sent = next(e for e in entries if e.method == "users.messages.send")
    assert sent.kind == "message_sent" and sent.quota_units == 100 and sent.http_status == 200 and sent.step == 0
    assert sorted(sent.scopes) == ["gmail.compose", "gmail.metadata", "gmail.send", "userinfo.email"]
    assert sent.sequence_id == seq["id"]

    summary = api.stub.SummarizeAccess(access_pb2.SummarizeAccessRequest(), metadata=call_metadata(user_id),
                                       timeout=10)
    kinds: dict[str, int] = {}
    for count in summary.counts:
        kinds[count.kind] = kinds.get(count.kind, 0) + count.calls
    assert kinds["message_sent"] == 2 and kinds["draft_created"] == 1 and "content_read" not in kinds
    assert sum(kinds.values()) == len(entries)
    headers = {h.header: h.reads for h in summary.headers}
    assert headers["From"] >= 1 and set(headers) <= {"From", "Message-ID"}


def test_deleting_a_contact_takes_its_entries_and_its_drafts_removed_afterwards_are_logged_without_ids(
        api, sandbox, user, db):
    user_id, email = user
    contact, seq = _start(api, user_id, [{"body": "Later", "delay": "P3D"}, {"body": "Even later", "delay": "P5D"}])
    body = wait_for(lambda: (b := api(user_id, "sequences.get", sequence_id=seq["id"])[1])["steps"][2]["draft_id"]
                    and b)
    drafts = {s["draft_id"] for s in body["steps"][1:]}
    _, other = _start(api, user_id, [])
    wait_for(lambda: api(user_id, "sequences.get", sequence_id=other["id"])[1]["status"] == "completed")
    assert {e.sequence_id for e in _settled(api, sandbox, user_id, email)} >= {seq["id"], other["id"]}

    assert api(user_id, "contacts.delete", contact_id=contact["id"])[0] == 204
    assert wait_for(lambda: sandbox.gmail.mailbox(email)["drafts"] == [], timeout=20)
    entries = _settled(api, sandbox, user_id, email)
    assert seq["id"] not in {e.sequence_id for e in entries} and other["id"] in {e.sequence_id for e in entries}
    stripped = [e for e in entries if e.contact_deleted]
    # Every removal Gmail saw (a 429 and its retry are two), none with an id.
    removals = [x for x in sandbox.control.log("gmail.drafts.delete") if x.get("user") == email]
    assert [e.method for e in stripped] == ["users.drafts.delete"] * len(removals)
    assert sum(1 for e in stripped if e.http_status == 204) == len(drafts) == 2
    assert all(not e.draft_id and not e.thread_id and not e.HasField("step") for e in stripped)
    assert {e.description for e in stripped if e.http_status == 204} == {
        "Mailer deleted the draft of an email to a contact you deleted"}
    stored = str(db.execute("SELECT array_agg(g::text) FROM mailer.gmail_access g WHERE user_id = %s",
                            (user_id,)).fetchone())
    assert not [d for d in drafts if d in stored] and body["thread_id"] not in stored and seq["id"] not in stored


def test_the_log_is_in_the_export_and_goes_with_the_account(api, sandbox, user, mailer, certs, mailer_bus, db):
    user_id, email = user
    _, seq = _start(api, user_id, [])
    wait_for(lambda: api(user_id, "sequences.get", sequence_id=seq["id"])[1]["status"] == "completed")
    _settled(api, sandbox, user_id, email)
    accounts = TlsFiles(certs / "ca.pem", certs / "accounts.pem", certs / "accounts-key.pem")
    records = mailer_pb2_grpc.MailerStub(channel(f"127.0.0.1:{mailer.port}", accounts)).ExportData(
        export_pb2.ExportRequest(), metadata=call_metadata(user_id), timeout=10)
    logged = [json.loads(r.json) for r in records if r.section == "gmail_access_by_mailer"]
    assert [r["method"] for r in logged][-1] == "users.messages.get"
    assert {"at", "kind", "method", "scopes", "quota_units", "description"} <= set(logged[0])

    publish_event(mailer_bus, user_id, ev.AccountDeletionRequested(deletion_id="del-access-log"))
    assert wait_for(lambda: db.execute("SELECT count(*) FROM mailer.gmail_access WHERE user_id = %s",
                                       (user_id,)).fetchone()[0] == 0, timeout=20)


def test_a_filter_the_log_cannot_use_is_a_field_violation(api, user):
    user_id, _ = user
    with pytest.raises(grpc.RpcError) as refused:
        api.stub.ListAccessEntries(access_pb2.ListAccessEntriesRequest(filter=access_pb2.AccessFilter(kind="gossip")),
                                   metadata=call_metadata(user_id), timeout=10)
    problem = rpc_problem(refused.value)
    assert problem.status == 422 and problem.extra["errors"] == [{"field": "filter.kind", "message": "unknown kind"}]
