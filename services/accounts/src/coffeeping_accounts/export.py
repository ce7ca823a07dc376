"""The data export: one JSON document assembled from the services that own the data.

The accounts service writes the profile section and fans in over gRPC from the vault (Gmail
connection, audit entries with every token issued), the mailer (contacts, sequences with every email
step, its Gmail access log) and the reply watcher (detected replies and bounces, its Gmail access log),
each streaming ``ExportRecord``s. Records are written to the
caller as they arrive, in chunks of about ``CHUNK_BYTES``, so memory stays flat whatever the size of
the account. A document that ends without ``"complete": true`` was cut short by a failure.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from coffeeping.common.rpc import TlsFiles, call_metadata, channel
from coffeeping.mailer.v1 import mailer_pb2, mailer_pb2_grpc
from coffeeping.types.v1 import export_pb2
from coffeeping.vault.v1 import vault_pb2_grpc
from coffeeping.watcher.v1 import watcher_pb2_grpc

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CHUNK_BYTES = 64 * 1024
ABOUT = (
    "Everything CoffeePing holds about your account, exported on request. Each section has a short "
    "description and a list of records. OAuth tokens and keys are never exported, and we never hold the "
    "content of mail you receive."
)
_ACCESS_LOG = (
    "Your access log: every Gmail API call the {service} made for you, in plain words, with when, the method "
    "and its scopes, the Gmail ids it named, the headers a metadata read asked for, Gmail's answer and the "
    "quota it cost. Never the content, subject or addresses of a message, nor the value of any header."
)
# The sections every export has (empty when there is nothing), with their descriptions and owners.
SECTIONS: dict[str, tuple[str, str]] = {
    "profile": ("accounts", "Your CoffeePing account: your user id and when it was created."),
    "gmail_connection": (
        "token-vault",
        "The Gmail account you connected: its address, the scopes you granted, when it was connected and "
        "last refreshed, and its status. Tokens are never exported.",
    ),
    "vault_audit": (
        "token-vault",
        "The token vault's audit log for your account: when your Google grant was stored, used (each "
        "access token handed out: to which service, for which scopes, until when), refreshed or revoked.",
    ),
    "contacts": ("mailer", "Every contact you added."),
    "sequences": (
        "mailer",
        "Every sequence with every email step: subject, body as stored and as sent, status, times, Gmail "
        "ids and why it stopped.",
    ),
    "replies": (
        "reply-watcher",
        "Replies and bounces detected in your threads: when, and in which thread. The content of mail you "
        "receive is never read or stored.",
    ),
    "gmail_access_by_mailer": ("mailer", _ACCESS_LOG.format(service="mailer")),
    "gmail_access_by_reply_watcher": ("reply-watcher", _ACCESS_LOG.format(service="reply watcher")),
}


class ExportFailed(Exception):
    """A service could not provide its part of the export (the message names the service only)."""


@dataclass(frozen=True)
class Source:
    """A service that streams ``ExportRecord``s for the user."""

    service: str
    call: Callable[[str], Iterable[Any]]


class Sources:
    """Lazily created, mutually authenticated channels to the services that own the user's data."""

    def __init__(self, tls: TlsFiles, vault_addr: str, mailer_addr: str, watcher_addr: str,
                 timeout_s: float = 300.0) -> None:
        self._tls = tls
        self._addrs = {"token-vault": vault_addr, "mailer": mailer_addr, "reply-watcher": watcher_addr}
        self._factories = {"token-vault": vault_pb2_grpc.TokenVaultStub, "mailer": mailer_pb2_grpc.MailerStub,
                           "reply-watcher": watcher_pb2_grpc.ReplyWatcherStub}
        self._stubs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.timeout_s = timeout_s

    def _stub(self, service: str) -> Any:
        with self._lock:
            if service not in self._stubs:
                self._stubs[service] = self._factories[service](channel(self._addrs[service], self._tls))
            return self._stubs[service]

    def all(self) -> list[Source]:
        def caller(service: str) -> Callable[[str], Iterable[Any]]:
            def call(user_id: str) -> Iterable[Any]:
                return self._stub(service).ExportData(
                    export_pb2.ExportRequest(), metadata=call_metadata(user_id), timeout=self.timeout_s
                )

            return call

        return [Source(name, caller(name)) for name in ("token-vault", "mailer", "reply-watcher")]

    def fence(self, user_id: str, timeout_s: float = 5.0) -> None:
        """The deletion's fence at the mailer (raises ``grpc.RpcError`` when it could not be set)."""
        # wait_for_ready: a channel still backing off from an earlier outage waits (within the deadline)
        # for the mailer instead of failing at once.
        self._stub("mailer").FenceUser(mailer_pb2.FenceUserRequest(), metadata=call_metadata(user_id),
                                       timeout=timeout_s, wait_for_ready=True)


def stamp(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value else None


def _records(source: Source, user_id: str) -> Iterator[tuple[str, str]]:
    try:
        for record in source.call(user_id):
            yield record.section, record.json
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        log.warning("export source failed", extra={"service": source.service, "code": str(code)})
        raise ExportFailed(source.service) from None


def document(user_id: str, profile: dict[str, Any], sources: Iterable[Source]) -> Iterator[bytes]:
    """The export as UTF-8 chunks: written while the sources stream, never held whole."""
    out: list[str] = []
    size = 0

    def write(text: str) -> Iterator[bytes]:
        nonlocal size
        out.append(text)
        size += len(text)
        if size >= CHUNK_BYTES:
            chunk = "".join(out).encode()
            out.clear()
            size = 0
            yield chunk

    names_used: set[str] = set()
    current: str | None = None
    first_record = True

    def open_section(name: str, service: str) -> str:
        nonlocal current, first_record
        key = name
        part = 2
        # A source that returns to a section it already left continues it under a numbered key.
        while key in names_used:
            key = f"{name} (part {part})"
            part += 1
        names_used.add(key)
        description = SECTIONS.get(name, (service, f"Records held by the {service} service."))[1]
        head = "," if current is not None else ""
        current = key
        first_record = True
        return (f'{head}\n  {json.dumps(key)}: {{"description": {json.dumps(description)}, '
                f'"source": {json.dumps(service)}, "records": [')

    header = {
        "schema_version": SCHEMA_VERSION,
        "exported_at": stamp(dt.datetime.now(dt.UTC)),
        "user_id": user_id,
        "about": ABOUT,
    }
    yield from write(json.dumps(header, ensure_ascii=False)[:-1] + ',\n "sections": {')
    yield from write(open_section("profile", "accounts"))
    yield from write("\n    " + json.dumps(profile, ensure_ascii=False))
    for source in sources:
        section: str | None = None
        for name, record in _records(source, user_id):
            try:
                parsed = json.loads(record)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                log.warning("export record dropped: not a JSON object", extra={"service": source.service})
                continue
            if name != section:
                if current is not None:
                    yield from write("\n  ]}")
                yield from write(open_section(name, source.service))
                section = name
            yield from write(("\n    " if first_record else ",\n    ") + record)
            first_record = False
    yield from write("\n  ]}")
    for name, (service, _) in SECTIONS.items():
        if name not in names_used:
            yield from write(open_section(name, service) + "]}")
    yield from write('\n },\n "complete": true\n}\n')
    if out:
        yield "".join(out).encode()
