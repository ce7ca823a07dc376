"""Assembling the export document from the services' record streams."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator

import grpc
import pytest

from coffeeping.types.v1.export_pb2 import ExportRecord
from coffeeping_accounts.export import SECTIONS, ExportFailed, Source, document

USER = "user_export1"
PROFILE = {"user_id": USER, "created_at": "2026-11-30T10:00:00Z"}


def source(service: str, records: list[tuple[str, dict | str]]) -> Source:
    def call(user_id: str) -> Iterator[ExportRecord]:
        assert user_id == USER
        for section, record in records:
            yield ExportRecord(section=section, json=record if isinstance(record, str) else json.dumps(record))

    return Source(service, call)


def assemble(*sources: Source) -> dict:
    return json.loads(b"".join(document(USER, PROFILE, sources)))


def test_every_section_is_present_with_a_description_even_when_empty():
    doc = assemble()
    assert doc["schema_version"] == 1
    assert doc["complete"] is True
    assert doc["user_id"] == USER
    assert list(doc["sections"]) == list(SECTIONS)
    for name, section in doc["sections"].items():
        assert section["description"], name
    assert doc["sections"]["profile"]["records"] == [PROFILE]
    assert doc["sections"]["contacts"]["records"] == []


def test_records_of_each_service_land_in_their_sections_in_order():
    doc = assemble(
        source("token-vault", [("gmail_connection", {"email": "a@example.com"}),
                               ("vault_audit", {"action": "stored"}), ("vault_audit", {"action": "refreshed"})]),
        source("mailer", [("contacts", {"email": "c1@example.com"}), ("contacts", {"email": "c2@example.com"}),
                          ("sequences", {"id": "s1", "steps": [{"subject": "Hi", "body": "é ✓"}]})]),
        source("reply-watcher", [("replies", {"thread_id": "t1"})]),
    )
    sections = doc["sections"]
    assert [r["action"] for r in sections["vault_audit"]["records"]] == ["stored", "refreshed"]
    assert [r["email"] for r in sections["contacts"]["records"]] == ["c1@example.com", "c2@example.com"]
    assert sections["sequences"]["records"][0]["steps"][0]["body"] == "é ✓"
    assert sections["replies"]["source"] == "reply-watcher"
    assert doc["complete"] is True


def test_a_section_a_source_returns_to_continues_under_a_part_key_and_the_document_stays_valid():
    doc = assemble(source("mailer", [("contacts", {"n": 1}), ("sequences", {"n": 2}), ("contacts", {"n": 3})]))
    assert doc["sections"]["contacts"]["records"] == [{"n": 1}]
    assert doc["sections"]["contacts (part 2)"]["records"] == [{"n": 3}]


def test_a_record_that_is_not_a_json_object_is_dropped_not_spliced_into_the_document():
    doc = assemble(source("mailer", [("contacts", '{"n": 1}], "evil": [{'), ("contacts", "[1]"),
                                     ("contacts", {"n": 2})]))
    assert doc["sections"]["contacts"]["records"] == [{"n": 2}]
    assert "evil" not in doc


def test_a_source_failing_midway_stops_the_document_before_it_claims_completeness():
    class Down(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

    def failing(user_id: str) -> Iterator[ExportRecord]:
        yield ExportRecord(section="contacts", json='{"n": 1}')
        raise Down()

    written = bytearray()
    with pytest.raises(ExportFailed, match="mailer"):
        for chunk in document(USER, PROFILE, [Source("mailer", failing)]):
            written += chunk
    assert b'"complete": true' not in written


def test_memory_stays_flat_while_a_large_account_streams():
    body = "x" * 2000
    count = 20_000  # about 40 MB of export

    def big(user_id: str) -> Iterator[ExportRecord]:
        for n in range(count):
            yield ExportRecord(section="sequences", json=json.dumps({"n": n, "body": body}))

    tracemalloc.start()
    total = 0
    try:
        for chunk in document(USER, PROFILE, [Source("mailer", big)]):
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > count * len(body)
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes while streaming {total} bytes"
