from __future__ import annotations

import re
from dataclasses import dataclass

from coffeeping.common.access_log import AccessLogSettings
from coffeeping.common.config import host_port, integer, number, setting, url
from coffeeping.common.runtime import ServiceSettings

# The shape Gmail's users.watch accepts (its own error: "Invalid topicName does not match
# projects/SOME_PROJECT/topics/SOME_TOPIC").
_TOPIC = re.compile(r"^projects/[^/\s]+/topics/[^/\s]+$")


def push_topic(raw: str) -> str:
    """A Cloud Pub/Sub topic name, ``projects/<project>/topics/<topic>`` (empty: push off)."""
    if raw and not _TOPIC.match(raw):
        raise ValueError("must be projects/<project>/topics/<topic>")
    return raw


@dataclass(frozen=True)
class Settings(ServiceSettings, AccessLogSettings):
    vault_addr: str = setting("TOKEN_VAULT_GRPC_ADDR", host_port, default="127.0.0.1:50052")
    gmail_api_endpoint: str = setting("GMAIL_API_ENDPOINT", url, default="https://gmail.googleapis.com")
    # Each user with active watches is polled this often (one history.list when nothing is new).
    poll_interval_s: float = setting("REPLY_WATCHER_POLL_INTERVAL_S", number(0.1), default=60.0)
    # Users polled at the same time by this process (each poll is I/O bound).
    concurrency: int = setting("REPLY_WATCHER_CONCURRENCY", integer(1, 512), default=16)
    # A SENT message in a watched thread that the mailer has not (yet) reported as its own is called a
    # takeover only after this long, so the mailer's ``sequence.message_sent`` event can arrive first.
    takeover_grace_s: float = setting("REPLY_WATCHER_TAKEOVER_GRACE_S", number(0.0), default=15.0)
    # Ceiling of the per-user backoff after 429/5xx answers.
    max_backoff_s: float = setting("REPLY_WATCHER_MAX_BACKOFF_S", number(1.0), default=1800.0)
    # Gmail push (docs/PUSH.md): the topic users.watch names, shared with the deployment's Pub/Sub set-up.
    # Unset, push is off: nothing is watched and every mailbox is polled on REPLY_WATCHER_POLL_INTERVAL_S.
    gmail_push_topic: str = setting("GMAIL_PUSH_TOPIC", push_topic, default="")
    # With push on, a mailbox whose watch holds is still polled this often: the safety net for lost pushes.
    fallback_interval_s: float = setting("REPLY_WATCHER_FALLBACK_INTERVAL_S", number(1.0), default=900.0)
