"""What the watcher learns from events (docs/EVENTS.md): which threads to watch, which messages are
ours, when to stop, pause or resume, and when to purge a user."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Connection, Engine

from coffeeping.common.gmail import VaultTokenSource
from coffeeping.common.messaging import Consumer, Event, Handler, consumed_by
from coffeeping.common.messaging.registry import SenderCheck
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping_reply_watcher import SERVICE, services

log = logging.getLogger(__name__)

ROUTING_KEYS = consumed_by(SERVICE)


def make_handler(tombstone_key: bytes, tokens: VaultTokenSource | None = None,
                 on_due: Callable[[], None] | None = None) -> Handler:
    """The consumer's handler; ``tombstone_key`` names purged users, ``tokens`` drops a cached access
    token when the grant goes away and ``on_due`` wakes the poller when a mailbox became due, or a
    Gmail watch must be made or stopped, at once."""

    def handle(conn: Connection, event: Event) -> None:
        user_id = event.user_id
        match event.message:
            case ev.SequenceStarted() as started:
                services.watch_sequence(conn, user_id, started)
                if on_due:
                    on_due()
            case ev.SequenceMessageSent() as sent:
                services.record_sent(conn, user_id, sent)
            case ev.SequenceStopped() as stopped:
                services.unwatch_sequence(conn, user_id, stopped, tombstone_key)
            case ev.GmailDisconnected():
                if services.pause(conn, user_id) and on_due:
                    on_due()  # the watch's stop is queued
                if tokens:
                    tokens.forget(user_id)
            case ev.GmailConnected() as connected:
                services.resume(conn, user_id, connected)
                if tokens:
                    tokens.forget(user_id)
                if on_due:
                    on_due()  # polled and watched again at once
            case ev.AccountDeletionRequested() as requested:
                if services.purge_user(conn, user_id, requested, tombstone_key) and on_due:
                    on_due()  # the watch's stop is queued (it fetches a token of its own)
                if tokens:
                    tokens.forget(user_id)
            case _:
                log.info("event ignored", extra={"event_type": event.type, "event_id": event.id})

    return handle


def make_consumer(amqp_url: str, prefix: str, engine: Engine, tombstone_key: bytes,
                  senders: SenderCheck | None = None) -> Consumer:
    return Consumer(amqp_url, prefix, SERVICE, ROUTING_KEYS, engine, services.SCHEMA,
                    make_handler(tombstone_key), tombstone_key=tombstone_key, senders=senders)
