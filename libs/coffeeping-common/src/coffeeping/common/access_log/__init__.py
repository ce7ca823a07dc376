"""Access transparency: every Gmail API call made on a user's behalf, recorded as ids and method (never
content, a subject, an address or a header value), shown to that user, exported, and deleted with the
account, with a contact and after the retention period.

- ``calls``: which Gmail method a request is, from its verb, path and query; Gmail's quota units.
- ``recording``: ``RecordingHttp``, the transport wrapper ``GmailClients`` gives each user, and ``about``.
- ``store``: ``AccessLog``, the batched writer of ``<schema>.gmail_access``; deletion and retention.
- ``queries``: pages, counts and the export; ``words``: each entry in plain words; ``answers``: how the
  services' RPCs answer a failure.
"""

from coffeeping.common.access_log.answers import answered
from coffeeping.common.access_log.calls import KINDS, QUOTA_UNITS, Call, call_of, kind_of, short_scope
from coffeeping.common.access_log.queries import (
    BadRequest,
    Filter,
    Page,
    WithSubject,
    day_of,
    entry_message,
    export_entries,
    export_json,
    list_entries,
    summarize,
)
from coffeeping.common.access_log.recording import About, RecordingHttp, Sent, about
from coffeeping.common.access_log.settings import AccessLogRetention, AccessLogSettings
from coffeeping.common.access_log.store import MARK_LIFETIME, AccessLog, forget_sequences, purge_user, sequence_mark
from coffeeping.common.access_log.tables import AccessTables, access_tables, schema_access_tables
from coffeeping.common.access_log.words import describe

__all__ = [
    "KINDS", "MARK_LIFETIME", "QUOTA_UNITS", "About", "AccessLog", "AccessLogRetention", "AccessLogSettings",
    "AccessTables", "BadRequest", "Call", "Filter", "Page", "RecordingHttp", "Sent", "WithSubject", "about",
    "access_tables", "answered", "call_of", "day_of", "describe", "entry_message", "export_entries", "export_json",
    "forget_sequences", "kind_of", "list_entries", "purge_user", "schema_access_tables", "sequence_mark",
    "short_scope", "summarize",
]
