"""The access log's settings: the retention (every service that keeps part of the log: mailer, reply
watcher, token vault) and the recording switch (the services that call Gmail)."""

from __future__ import annotations

from dataclasses import dataclass

from coffeeping.common.config import boolean, integer, setting


@dataclass(frozen=True)
class AccessLogRetention:
    # Entries older than this many days are deleted (hourly), as the privacy page says.
    access_log_retention_days: int = setting("ACCESS_LOG_RETENTION_DAYS", integer(1, 36_500), default=400)


@dataclass(frozen=True)
class AccessLogSettings(AccessLogRetention):
    # Recording Gmail calls (on/off, true/false): on. Only the mailer benchmark turns it off, to measure
    # what it costs; a deployment must never run with it off (the log would be silently incomplete).
    gmail_access_log: bool = setting("GMAIL_ACCESS_LOG", boolean, default=True)


__all__ = ["AccessLogRetention", "AccessLogSettings"]
