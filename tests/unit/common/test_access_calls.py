"""Which Gmail method a request is, from its verb, path and query alone (no process, no network)."""

from __future__ import annotations

import pytest

from coffeeping.common.access_log import KINDS, QUOTA_UNITS, call_of

BASE = "https://gmail.googleapis.com/gmail/v1/users/me"


@pytest.mark.parametrize("verb, path, method, kind, units", [
    ("GET", "/profile?alt=json", "users.getProfile", "profile_read", 1),
    ("POST", "/watch?alt=json", "users.watch", "watch_started", 100),
    ("POST", "/stop?alt=json", "users.stop", "watch_stopped", 50),
    ("GET", "/history?startHistoryId=7&historyTypes=messageAdded&alt=json", "users.history.list", "ids_listed", 2),
    ("POST", "/messages/send?alt=json", "users.messages.send", "message_sent", 100),
    ("POST", "/drafts?alt=json", "users.drafts.create", "draft_created", 10),
    ("PUT", "/drafts/r123?alt=json", "users.drafts.update", "draft_updated", 15),
    ("DELETE", "/drafts/r123?alt=json", "users.drafts.delete", "draft_deleted", 10),
    ("POST", "/drafts/send?alt=json", "users.drafts.send", "message_sent", 100),
    ("GET", "/drafts?maxResults=500&alt=json", "users.drafts.list", "ids_listed", 5),
    ("GET", "/drafts/r123?format=raw&alt=json", "users.drafts.get", "draft_read", 5),
    ("GET", "/threads/t1?format=metadata&metadataHeaders=From&alt=json", "users.threads.get", "metadata_read", 10),
    ("GET", "/messages/m1/attachments/a1?alt=json", "users.messages.attachments.get", "content_read", 5),
])
def test_each_method_is_named_with_its_kind_and_gmails_quota_units(verb, path, method, kind, units):
    call = call_of(verb, BASE + path)
    assert (call.method, call.kind, call.quota_units) == (method, kind, units)
    assert kind in KINDS and QUOTA_UNITS[method] == units


def test_a_metadata_read_keeps_the_header_names_and_the_ids_in_its_path():
    call = call_of("GET", BASE + "/messages/18c4f2a1?format=metadata&metadataHeaders=From&metadataHeaders=Subject"
                               "&alt=json")
    assert (call.message_id, call.thread_id, call.format) == ("18c4f2a1", None, "metadata")
    assert call.metadata_headers == ("From", "Subject")


@pytest.mark.parametrize("query", ["?format=full", "?format=raw", "", "?format=FULL"])
def test_a_message_read_in_any_format_but_metadata_or_minimal_is_a_content_read(query):
    assert call_of("GET", BASE + "/messages/m1" + query).kind == "content_read"
    assert call_of("GET", BASE + "/threads/t1" + query).kind == "content_read"
    assert call_of("GET", BASE + "/messages/m1?format=minimal").kind == "metadata_read"


def test_headers_are_kept_only_for_a_metadata_read():
    assert call_of("GET", BASE + "/messages/m1?format=raw&metadataHeaders=From").metadata_headers == ()


@pytest.mark.parametrize("verb, uri", [
    ("GET", BASE + "/labels"), ("PATCH", BASE + "/drafts/r1"), ("GET", "https://gmail.googleapis.com/batch/gmail/v1"),
    ("GET", "https://example.com/elsewhere"), ("GET", BASE),
])
def test_a_request_we_cannot_name_is_other_and_costs_nothing_we_know(verb, uri):
    call = call_of(verb, uri)
    assert (call.method, call.kind, call.quota_units, call.thread_id, call.message_id) == ("other", "other", 0, None,
                                                                                          None)


def test_the_endpoint_may_have_a_path_of_its_own():
    assert call_of("GET", "http://127.0.0.1:8702/gmail/v1/users/me/threads/t9?format=metadata").thread_id == "t9"
