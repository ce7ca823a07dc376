"""The event registry is docs/EVENTS.md as code: the same message, producers and consumers for every type."""

from __future__ import annotations

import re
from pathlib import Path

from coffeeping.common.messaging import BACKENDS, EVENTS, registered_producers

DOC = Path(__file__).resolve().parents[3] / "docs" / "EVENTS.md"


def _services(cell: str) -> tuple[str, ...]:
    return tuple(name for name in re.findall(r"[a-z][a-z-]+", cell) if name in BACKENDS)


def test_the_registry_and_docs_events_md_name_the_same_message_producers_and_consumers():
    documented = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"^\| `([a-z_.]+)` \| ([^|]+) \| ([^|]+) \| `([A-Za-z]+)`", line)
        if match:
            documented[match.group(1)] = (match.group(4), _services(match.group(2)), _services(match.group(3)))
    assert {k: (m, sorted(p), sorted(c)) for k, (m, p, c) in documented.items()} == {
        k: (spec.message.DESCRIPTOR.name, sorted(spec.producers), sorted(spec.consumers))
        for k, spec in EVENTS.items()}


def test_only_a_registered_producer_signing_for_itself_is_accepted():
    allowed = registered_producers("cp")
    assert allowed("account.revoke_requested", "cp-accounts", None)
    assert not allowed("account.revoke_requested", "cp-mailer", None)
    assert not allowed("account.revoke_requested", None, None)
    assert allowed("account.purged", "cp-reply-watcher", "reply-watcher")
    assert not allowed("account.purged", "cp-reply-watcher", "token-vault")
    assert not allowed("no.such.type", "cp-accounts", None)
