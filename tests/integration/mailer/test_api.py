"""The outreach API as the mailer answers it: contacts, CSV import, sequences, and every refusal."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest

from coffeeping.common.rpc import TlsFiles, call_metadata, channel
from coffeeping.mailer.v1 import mailer_pb2_grpc
from coffeeping.types.v1 import export_pb2
from tests.integration.mailer.conftest import contact_email, wait_for


def _contact(api, user_id, **fields):
    status, body = api(user_id, "contacts.create", {"email": contact_email(), "first_name": "Grace", **fields})
    assert status == 201, body
    return body


def _fields(problem):
    return {e["field"] for e in problem.get("errors", [])}


# ------------------------------------------------------------------------------------------ contacts
def test_contact_is_created_read_updated_and_listed(api, user):
    user_id, _ = user
    contact = _contact(api, user_id, company="Navy", role="Admiral", time_zone="America/New_York", notes="n")
    assert contact["company"] == "Navy" and contact["time_zone"] == "America/New_York"
    assert api(user_id, "contacts.get", contact_id=contact["id"]) == (200, contact)
    status, changed = api(user_id, "contacts.update", {"company": "Harvard", "notes": None}, contact_id=contact["id"])
    assert status == 200 and changed["company"] == "Harvard" and changed["notes"] is None
    status, page = api(user_id, "contacts.list")
    assert status == 200 and [c["id"] for c in page["items"]] == [contact["id"]]


def test_duplicate_email_is_409_with_the_existing_id_case_insensitively(api, user):
    user_id, _ = user
    contact = _contact(api, user_id)
    status, problem = api(user_id, "contacts.create", {"email": contact["email"].upper()})
    assert status == 409
    assert problem["existing_id"] == contact["id"]
    other = _contact(api, user_id)
    status, problem = api(user_id, "contacts.update", {"email": contact["email"]}, contact_id=other["id"])
    assert status == 409 and problem["existing_id"] == contact["id"]


def test_the_same_email_at_another_user_is_not_a_duplicate_and_reveals_nothing(api, user, vault):
    user_id, _ = user
    contact = _contact(api, user_id)
    status, body = api("user_other_" + uuid.uuid4().hex[:8], "contacts.create", {"email": contact["email"]})
    assert status == 201 and body["id"] != contact["id"]


@pytest.mark.parametrize("body, field", [
    ({}, "email"),
    ({"email": "not-an-address"}, "email"),
    ({"email": "a@example.com\r\nBcc: victim@example.com"}, "email"),
    ({"email": "a@example.com", "name": "Eve\r\nBcc: victim@example.com"}, "name"),
    ({"email": "a@example.com", "name": "Eve\nX: y"}, "name"),
    ({"email": "a@example.com", "first_name": "=?utf-8?q?Eve=0D=0ABcc:_v@example.com?="}, "first_name"),
    ({"email": "a@example.com", "company": "=?utf-8?b?QWNtZQ0KQmNjOiB2QGV4YW1wbGUuY29t?="}, "company"),
    ({"email": "a@example.com", "name": "x" * 201}, "name"),
    ({"email": "a@example.com", "time_zone": "Mars/Olympus"}, "time_zone"),
    ({"email": "a@example.com", "time_zone": "../../etc/passwd"}, "time_zone"),
    ({"email": "a@example.com", "notes": "n" * 5001}, "notes"),
    ({"email": "a@example.com", "admin": True}, "admin"),
    ({"email": 42}, "email"),
])
def test_invalid_contact_is_422_naming_the_field(api, user, body, field):
    status, problem = api(user[0], "contacts.create", body)
    assert status == 422, problem
    assert field in _fields(problem)
    assert problem["status"] == 422 and "Traceback" not in json.dumps(problem)


def test_malformed_json_is_400(api, user):
    status, problem = api(user[0], "contacts.create", raw=b"{not json")
    assert status == 400 and problem["title"] == "Bad Request"


def test_another_users_contact_is_404_like_a_missing_one(api, user):
    contact = _contact(api, user[0])
    intruder = "user_intruder_" + uuid.uuid4().hex[:8]
    for operation, body in (("contacts.get", None), ("contacts.update", {"company": "x"}), ("contacts.delete", None)):
        status, problem = api(intruder, operation, body, contact_id=contact["id"])
        assert status == 404, operation
        missing = api(intruder, operation, body, contact_id=str(uuid.uuid4()))
        assert missing == (status, problem)
    assert api(intruder, "contacts.get", contact_id="not-a-uuid")[0] == 404
    assert api(user[0], "contacts.get", contact_id=contact["id"])[0] == 200


def test_contacts_are_paginated_with_limit_and_cursor(api, user):
    ids = [_contact(api, user[0])["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        status, page = api(user[0], "contacts.list", query=query)
        assert status == 200 and len(page["items"]) <= 2
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids
    assert api(user[0], "contacts.list", query={"limit": "0"})[0] == 422
    assert api(user[0], "contacts.list", query={"limit": "1000"})[0] == 422
    assert api(user[0], "contacts.list", query={"cursor": "garbage!"})[0] == 422


# ------------------------------------------------------------------------------------------- import
def test_csv_import_creates_good_lines_counts_duplicates_and_reports_bad_lines(api, user):
    existing = _contact(api, user[0])
    csv_text = (
        "Email,First Name,Company\n"
        f"new1@example.com,Ann,A Co\n"
        f"{existing['email'].upper()},Dup,B\n"
        "bad-address,X,Y\n"
        "new2@example.com,\"Line\nBreak\",C\n"
        "NEW1@example.com,Again,A\n"
        "new3@example.com,Zed,\"Z, Inc\"\n"
    )
    status, result = api(user[0], "contacts.import", raw=csv_text.encode())
    assert status == 200, result
    assert result["created"] == 2
    assert result["duplicates"] == 2
    assert [e["line"] for e in result["errors"]] == [4, 6]
    assert "email" in result["errors"][0]["reason"]
    status, page = api(user[0], "contacts.list")
    assert {c["email"] for c in page["items"]} >= {"new1@example.com", "new3@example.com"}
    assert next(c for c in page["items"] if c["email"] == "new3@example.com")["company"] == "Z, Inc"


@pytest.mark.parametrize("raw, detail", [
    (b"email\n" + b"x" * (1024 * 1024), "too large"),
    (b"email\n" + "".join(f"p{i}@example.com\n" for i in range(5001)).encode(), "too many rows"),
    (b"email\n\xff\xfe@example.com\n", "not UTF-8"),
    (b"name,company\nAnn,A\n", "no email column"),
    (b"", "empty"),
])
def test_csv_import_refuses_oversized_non_utf8_or_headerless_files(api, user, raw, detail):
    status, problem = api(user[0], "contacts.import", raw=raw)
    assert status == 422, problem
    assert detail in problem["detail"]


# ----------------------------------------------------------------------------------------- sequences
def _sequence(api, user_id, contact_id, **fields):
    body = {"contact_id": contact_id, "subject": "Hello {{first_name}}", "body": "Hi {{first_name}}",
            "follow_ups": [{"body": "again", "delay": "P3D"}], **fields}
    return api(user_id, "sequences.create", body)


def test_sequence_is_created_with_merge_fields_filled_and_steps_listed(api, user):
    contact = _contact(api, user[0], company="Navy", role="Admiral", last_name="Hopper",
                       time_zone="Europe/Paris")
    status, seq = _sequence(api, user[0], contact["id"], body="{{name}} of {{company}}, {{ role }}",
                            follow_ups=[{"body": "b", "delay": "P2D"},
                                        {"body": "c", "send_at": "2030-01-01T09:00:00Z"}],
                            business_days=True, send_window={"start": "09:00", "end": "17:00"})
    assert status == 201, seq
    assert seq["subject"] == "Hello Grace" and seq["status"] == "draft" and seq["time_zone"] == "Europe/Paris"
    assert [s["body"] for s in seq["steps"]] == ["Grace Hopper of Navy, Admiral", "b", "c"]
    assert [s["status"] for s in seq["steps"]] == ["scheduled"] * 3
    assert seq["steps"][2]["send_at"] == "2030-01-01T09:00:00Z"
    assert api(user[0], "sequences.get", sequence_id=seq["id"]) == (200, seq)
    status, page = api(user[0], "sequences.list", query={"contact_id": contact["id"]})
    assert [s["id"] for s in page["items"]] == [seq["id"]]


@pytest.mark.parametrize("fields, field", [
    ({"subject": "Hi\r\nBcc: victim@example.com"}, "subject"),
    ({"subject": "Hi\nthere"}, "subject"),
    ({"subject": "=?utf-8?q?Hi=0ABcc:_victim@example.com?="}, "subject"),
    ({"subject": "=?utf-8?b?SGkNCkJjYzogdmljdGltQGV4YW1wbGUuY29t?="}, "subject"),
    ({"subject": "tab\there"}, "subject"),
    ({"subject": "s" * 251}, "subject"),
    ({"subject": ""}, "subject"),
    ({"body": "b" * 20001}, "body"),
    ({"body": "Hi {{nickname}}"}, "body"),
    ({"body": "Hi {{company}}"}, "body"),
    ({"subject": "About {{role}}"}, "subject"),
    ({"body": "Hi {{first_name}"}, "body"),
    ({"follow_ups": [{"body": "x", "delay": "P3D"}] * 11}, "follow_ups"),
    ({"follow_ups": [{"body": "x", "delay": "3 days"}]}, "follow_ups[0].delay"),
    ({"follow_ups": [{"body": "x", "delay": "P1M"}]}, "follow_ups[0].delay"),
    ({"follow_ups": [{"body": "x", "delay": "PT0S"}]}, "follow_ups[0].delay"),
    ({"follow_ups": [{"body": "x"}]}, "follow_ups[0]"),
    ({"follow_ups": [{"body": "x", "delay": "P1D", "send_at": "2030-01-01T00:00:00Z"}]}, "follow_ups[0]"),
    ({"follow_ups": [{"body": "x", "send_at": "2030-01-01T00:00:00"}]}, "follow_ups[0].send_at"),
    ({"follow_ups": [{"body": "{{unknown}}", "delay": "P1D"}]}, "follow_ups[0].body"),
    ({"follow_ups": [{"body": "y" * 20001, "delay": "P1D"}]}, "follow_ups[0].body"),
    ({"send_window": {"start": "17:00", "end": "09:00"}}, "send_window"),
    ({"send_window": {"start": "25:00", "end": "26:00"}}, "send_window"),
    ({"time_zone": "Nowhere/City"}, "time_zone"),
    ({"business_days": "yes"}, "business_days"),
    ({"bcc": "x@example.com"}, "bcc"),
])
def test_invalid_sequence_is_422_naming_the_field(api, user, fields, field):
    contact = _contact(api, user[0])
    status, problem = _sequence(api, user[0], contact["id"], **fields)
    assert status == 422, problem
    assert field in _fields(problem), problem


def test_a_contact_name_that_would_inject_headers_cannot_reach_a_sequence(api, user, database):
    import psycopg

    contact = _contact(api, user[0])
    # Written past the API's checks, as an old row or a bug might: the sequence is still refused.
    with psycopg.connect(database.admin_url, autocommit=True) as conn:
        conn.execute("UPDATE mailer.contacts SET name = %s WHERE id = %s",
                     ("Eve\r\nBcc: victim@example.com", contact["id"]))
    status, problem = _sequence(api, user[0], contact["id"], body="Hi {{name}}")
    assert status == 422 and problem["errors"]


def test_sequence_for_another_users_contact_or_sequence_is_404(api, user):
    contact = _contact(api, user[0])
    intruder = "user_intruder_" + uuid.uuid4().hex[:8]
    assert _sequence(api, intruder, contact["id"])[0] == 404
    status, seq = _sequence(api, user[0], contact["id"])
    assert status == 201
    for operation in ("sequences.get", "sequences.send", "sequences.pause", "sequences.resume", "sequences.cancel"):
        assert api(intruder, operation, sequence_id=seq["id"])[0] == 404, operation
    assert api(intruder, "sequences.list")[1]["items"] == []


def test_send_twice_is_409_and_pause_resume_cancel_follow_the_states(api, user):
    contact = _contact(api, user[0])
    status, seq = _sequence(api, user[0], contact["id"])
    assert api(user[0], "sequences.pause", sequence_id=seq["id"])[0] == 409
    status, sent = api(user[0], "sequences.send", {"send_at": "2099-01-01T00:00:00Z"}, sequence_id=seq["id"])
    assert status == 202 and sent["status"] == "scheduled"
    assert sent["steps"][0]["due_at"] == "2099-01-01T00:00:00Z"
    assert api(user[0], "sequences.send", sequence_id=seq["id"])[0] == 409
    assert api(user[0], "sequences.resume", sequence_id=seq["id"])[0] == 409
    status, paused = api(user[0], "sequences.pause", sequence_id=seq["id"])
    assert status == 200 and paused["status"] == "paused" and paused["pause_reason"] == "user"
    status, resumed = api(user[0], "sequences.resume", sequence_id=seq["id"])
    assert status == 200 and resumed["status"] == "scheduled"
    status, cancelled = api(user[0], "sequences.cancel", sequence_id=seq["id"])
    assert status == 200 and cancelled["status"] == "stopped" and cancelled["stop_reason"] == "cancelled"
    assert {s["status"] for s in cancelled["steps"]} == {"cancelled"}
    assert api(user[0], "sequences.cancel", sequence_id=seq["id"])[0] == 409
    assert api(user[0], "sequences.send", {"send_at": "tomorrow"}, sequence_id=seq["id"])[0] == 422


def test_deleting_a_contact_removes_its_sequences_and_its_gmail_drafts(api, user, sandbox, db):
    user_id, email = user
    contact = _contact(api, user_id)
    status, seq = _sequence(api, user_id, contact["id"])
    api(user_id, "sequences.send", sequence_id=seq["id"])
    assert wait_for(lambda: len(sandbox.gmail.mailbox(email)["drafts"]) == 1)
    assert api(user_id, "contacts.delete", contact_id=contact["id"]) == (204, None)
    assert api(user_id, "sequences.get", sequence_id=seq["id"])[0] == 404
    assert api(user_id, "contacts.get", contact_id=contact["id"])[0] == 404
    for table in ("sequences", "steps", "jobs"):
        count = db.execute(f"SELECT count(*) FROM mailer.{table} WHERE user_id = %s", (user_id,)).fetchone()[0]
        assert count == 0, table
    assert wait_for(lambda: sandbox.gmail.mailbox(email)["drafts"] == [])


def test_export_streams_contacts_and_sequences_with_every_step(api, user, mailer, certs):
    user_id, _ = user
    contact = _contact(api, user_id)
    _, seq = _sequence(api, user_id, contact["id"])
    tls = TlsFiles(certs / "ca.pem", certs / "accounts.pem", certs / "accounts-key.pem")
    stub = mailer_pb2_grpc.MailerStub(channel(f"127.0.0.1:{mailer.port}", tls))
    records = list(stub.ExportData(export_pb2.ExportRequest(), metadata=call_metadata(user_id), timeout=10))
    sections = [(r.section, json.loads(r.json)) for r in records]
    assert [s for s, _ in sections] == ["contacts", "sequences"]
    assert sections[0][1]["id"] == contact["id"]
    exported = sections[1][1]
    assert exported["id"] == seq["id"] and len(exported["steps"]) == 2
    assert {"body", "sent_body", "status", "sent_at", "gmail_message_id", "thread_id"} <= set(exported["steps"][0])
    # Only the accounts service may export, and only the gateway may call the public API.
    gateway = TlsFiles(certs / "ca.pem", certs / "auth-gateway.pem", certs / "auth-gateway-key.pem")
    with pytest.raises(grpc.RpcError) as refused:
        list(mailer_pb2_grpc.MailerStub(channel(f"127.0.0.1:{mailer.port}", gateway)).ExportData(
            export_pb2.ExportRequest(), metadata=call_metadata(user_id), timeout=10))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
