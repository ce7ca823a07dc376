"""Access-log entries in plain words (no process, no network)."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from coffeeping.common.access_log import describe
from coffeeping.types.v1 import access_pb2


def entry(**fields) -> access_pb2.AccessEntry:
    return access_pb2.AccessEntry(http_status=fields.pop("http_status", 200), **fields)


@pytest.mark.parametrize("fields, subject, words", [
    ({"kind": "message_sent", "method": "users.messages.send", "step": 0}, "Coffee next week?",
     "Mailer sent the first email of 'Coffee next week?'"),
    ({"kind": "draft_created", "method": "users.drafts.create", "step": 2}, "Coffee next week?",
     "Mailer created the draft of follow-up 2 of 'Coffee next week?'"),
    ({"kind": "message_sent", "method": "users.drafts.send", "step": 1}, "Hi",
     "Mailer sent follow-up 1 of 'Hi' from its draft"),
    ({"kind": "draft_read", "method": "users.drafts.get", "format": "raw", "step": 1}, "Hi",
     "Mailer read the text of its own draft of follow-up 1 of 'Hi', to send it as you left it in Gmail"),
    ({"kind": "metadata_read", "method": "users.threads.get", "thread_id": "18c4f2a1b2c3", "format": "metadata",
      "metadata_headers": ["From"], "step": 1}, "Hi",
     "Mailer read the From header of the messages in thread 18c4f2a1…, for follow-up 1 of 'Hi'"),
    ({"kind": "draft_deleted", "method": "users.drafts.delete", "contact_deleted": True, "http_status": 404}, None,
     "Mailer deleted the draft of an email to a contact you deleted (not found (404))"),
])
def test_the_mailer_names_the_email_of_the_users_own_sequence(fields, subject, words):
    assert describe("mailer", entry(**fields), subject) == words


def test_the_watcher_names_the_header_and_the_thread_and_never_a_subject():
    read = entry(kind="metadata_read", method="users.messages.get", message_id="m1", thread_id="t1", format="metadata",
                 metadata_headers=["From"], sequence_id="s1")
    assert describe("reply-watcher", read) == "Reply watcher read the From header of 1 message in thread t1"
    listed = entry(kind="ids_listed", method="users.history.list")
    assert describe("reply-watcher", listed) == ("Reply watcher listed the messages added to your mailbox since its "
                                                 "last look (ids and labels only)")
    unanswered = access_pb2.AccessEntry(kind="profile_read", method="users.getProfile")
    assert describe("reply-watcher", unanswered) == ("Reply watcher read your mailbox's history position (no "
                                                     "messages) (no answer from Gmail)")


def test_a_token_issue_says_who_got_which_scopes_until_when():
    until = Timestamp()
    until.FromDatetime(dt.datetime(2026, 12, 2, 14, 5, tzinfo=dt.UTC))
    issued = access_pb2.AccessEntry(kind="token_issued", method="TokenVault.GetAccessToken", caller="mailer",
                                    scopes=["gmail.send", "gmail.compose"], expires_at=until)
    assert describe("token-vault", issued) == ("Token vault gave the mailer an access token for gmail.send and "
                                               "gmail.compose, valid until 2026-12-02 14:05 UTC")
