"""The public API's documents: every request and response body the gateway reads or writes.

Field names of contacts and sequences are the mailer's protobuf JSON names
(``protos/coffeeping/mailer/v1/mailer.proto``), so a document moves to and from a message without a
mapping table. The models check shapes and types; the mailer checks meaning (addresses, time zones,
durations, merge fields) and answers field violations that the gateway turns into the same 422 document.
A field declared with :func:`omitted` is left out of the document when it has no value, rather than
written as null.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import AwareDatetime, ConfigDict, Field, field_validator

from coffeeping_gateway.api import Input, Output, Query

Text = Annotated[str, Field(max_length=1000)]
Body = Annotated[str, Field(max_length=20_000)]
Id = Annotated[str, Field(json_schema_extra={"format": "uuid"})]
# The longest IANA name is about 32 characters; the bound keeps a made-up name off the mailer's zone files.
TimeZone = Annotated[str, Field(max_length=64)]

StepStatus = Literal["scheduled", "sending", "sent", "cancelled", "failed"]
SequenceStatus = Literal["draft", "scheduled", "active", "paused", "stopped", "completed"]
# The mailer's models.STOP_REASONS; a test holds the two equal.
StopReason = Literal["replied", "bounced", "cancelled", "user_took_over", "draft_deleted", "gmail_disconnected",
                     "gmail_account_changed", "thread_deleted", "contact_deleted", "failed"]


def omitted(**kwargs: Any) -> Any:
    """A field left out of the serialised document while it is None."""
    return Field(None, exclude_if=lambda value: value is None, **kwargs)


# ------------------------------------------------------------------------------------------- problems
class FieldError(Output):
    field: str
    message: str


class Problem(Output):
    """RFC 9457 problem details; every error the API answers."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = omitted()
    errors: list[FieldError] | None = omitted(description="one entry per invalid field")
    existing_id: str | None = omitted(description="the resource that already exists (409)")
    links: dict[str, str] | None = omitted(description="`status`: where to follow a deletion (410)")
    retry_after: int | None = omitted(description="seconds to wait (429)")


# --------------------------------------------------------------------------------- user and Gmail
class GmailConnection(Output):
    connected: bool
    email: str | None = omitted()
    scopes: list[str] | None = omitted()
    status: Literal["connected", "needs_reconnect"] | None = omitted()


class Me(Output):
    user_id: str
    created_at: dt.datetime
    gmail: GmailConnection


class GmailConnect(Output):
    authorization_url: Annotated[str, Field(json_schema_extra={"format": "uri"})]


# ----------------------------------------------------------------------------- export and deletion
Confirmation = Literal["delete my account"]
CONFIRMATION: str = get_args(Confirmation)[0]


class DeleteAccountInput(Input):
    confirm: Confirmation


class DeletionStep(Output):
    service: str
    step: str
    state: Literal["pending", "running", "done", "failed"]
    attempts: int
    updated_at: dt.datetime | None = None
    error: str | None = omitted()
    note: str | None = omitted(description="what a done step could not do, e.g. Gmail drafts that could not "
                                            "be removed")

    @field_validator("error", "note", mode="before")
    @classmethod
    def _empty_is_absent(cls, value: Any) -> Any:
        return value or None


class DeletionLinks(Output):
    status: str


class DeletionStatus(Output):
    deletion_id: Id
    state: Literal["in_progress", "completed", "failed"]
    requested_at: dt.datetime
    completed_at: dt.datetime | None = None
    steps: list[DeletionStep]
    links: DeletionLinks


class DeletionAccepted(Output):
    """The Clerk webhook's answer to ``user.deleted``."""

    deletion_id: str
    state: str


class ExportSection(Output):
    description: str | None = None
    source: str | None = None
    records: list[dict[str, Any]] = []


class Export(Output):
    """The export document (streamed; ends with ``"complete": true`` when whole)."""

    schema_version: Literal[1]
    exported_at: dt.datetime
    user_id: str
    about: str | None = omitted()
    sections: dict[str, ExportSection]
    complete: bool


class PushMessage(Input):
    model_config = ConfigDict(extra="ignore", strict=True)

    data: str = Field(min_length=1, max_length=4096, description="base64 of the Gmail notification JSON "
                      "{emailAddress, historyId}")
    messageId: str | None = None  # noqa: N815 - Pub/Sub's name
    publishTime: str | None = None  # noqa: N815 - Pub/Sub's name


class PushEnvelope(Input):
    """A Cloud Pub/Sub push request (other fields Pub/Sub adds are ignored)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    message: PushMessage
    subscription: str | None = None


class Health(Output):
    status: Literal["ok"]


class PageQuery(Query):
    limit: int = Field(50, ge=1, le=100)
    cursor: str = Field("", max_length=512, pattern=r"^[A-Za-z0-9_-]*$", description="next_cursor of the last page")


class SequenceQuery(PageQuery):
    contact_id: str = Field("", max_length=64, description="only this contact's sequences")
    status: str = Field("", max_length=32, description="only sequences in this status")


# ------------------------------------------------------------------------------------------- contacts
class ContactInput(Input):
    """A contact's fields. Creating needs `email`; a change names only the fields it changes (null clears)."""

    email: Annotated[str, Field(max_length=320, json_schema_extra={"format": "email"})] | None = None
    name: Text | None = None
    first_name: Text | None = None
    last_name: Text | None = None
    company: Text | None = None
    role: Text | None = None
    time_zone: TimeZone | None = Field(None, description="IANA name, e.g. Europe/Paris")
    notes: Annotated[str, Field(max_length=5000)] | None = None


class Contact(Output):
    id: Id
    email: str
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    role: str | None = None
    time_zone: str | None = None
    notes: str | None = None
    created_at: dt.datetime
    updated_at: dt.datetime


class ContactPage(Output):
    items: list[Contact]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; null on the last")


class ImportLineError(Output):
    line: int
    reason: str


class ImportResult(Output):
    created: int = 0
    duplicates: int = 0
    errors: list[ImportLineError] = []


# ------------------------------------------------------------------------------------------ sequences
class SendWindow(Input):
    start: str = Field(examples=["09:00"], description="HH:MM in the sequence's time zone")
    end: str = Field(examples=["17:00"], description="HH:MM in the sequence's time zone")


class FollowUpInput(Input):
    """A follow-up in the same thread: `delay` after the previous email, or at `send_at`."""

    body: Body
    delay: str | None = Field(None, description="ISO 8601 duration, e.g. P3D, PT10S")
    send_at: AwareDatetime | None = None


class SequenceInput(Input):
    contact_id: Id
    subject: str = Field(max_length=250, description="merge fields {{first_name}}, {{name}}, {{company}}, {{role}}")
    body: Body
    follow_ups: list[FollowUpInput] = Field([], max_length=10)
    business_days: bool = False
    send_window: SendWindow | None = None
    time_zone: TimeZone | None = Field(None, description="IANA name; the contact's, else UTC, when absent")


class SendInput(Input):
    send_at: AwareDatetime | None = Field(None, description="now when absent")


class Step(Output):
    id: Id
    position: int
    kind: Literal["first", "follow_up"]
    body: str
    sent_body: str | None = None
    edited_in_gmail: bool = False
    delay: str | None = None
    send_at: dt.datetime | None = None
    due_at: dt.datetime | None = None
    status: StepStatus
    cancel_reason: str | None = None
    sent_at: dt.datetime | None = None
    draft_id: str | None = None
    gmail_message_id: str | None = None
    thread_id: str | None = None
    rfc_message_id: str | None = None
    attempts: int = 0
    last_error: str | None = None


class SendWindowOutput(Output):
    start: str
    end: str


class Sequence(Output):
    id: Id
    contact_id: Id
    subject: str
    status: SequenceStatus
    stop_reason: StopReason | None = None
    stopped_at: dt.datetime | None = None
    pause_reason: str | None = None
    business_days: bool = False
    send_window: SendWindowOutput | None = None
    time_zone: str
    to: str
    thread_id: str | None = None
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    updated_at: dt.datetime
    steps: list[Step]


class SequencePage(Output):
    items: list[Sequence]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; null on the last")


# ------------------------------------------------------------------------------------- the access log
# ``coffeeping.common.access_log.KINDS``; a test holds the two equal.
AccessKind = Literal["message_sent", "draft_created", "draft_updated", "draft_deleted", "draft_read", "metadata_read",
                     "content_read", "ids_listed", "profile_read", "watch_started", "watch_stopped", "token_issued",
                     "other"]
AccessService = Literal["mailer", "reply-watcher", "token-vault"]
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


class AccessLogQuery(PageQuery):
    service: AccessService | None = Field(None, description="only this service's entries")
    kind: AccessKind | None = Field(None, description="only this kind of access")
    method: str = Field("", max_length=64, pattern=r"^[A-Za-z.]*$",
                        description="only this method, e.g. users.threads.get or TokenVault.GetAccessToken")
    since: AwareDatetime | None = Field(None, description="only entries at or after this time (RFC 3339)")
    until: AwareDatetime | None = Field(None, description="only entries before this time (RFC 3339)")

    @field_validator("since", "until", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        # A query string is lax by nature; a time must still be written as one (pydantic reads "0.5" as
        # half a second after 1970).
        if value is not None and not (isinstance(value, str) and _RFC3339.match(value)):
            raise ValueError("must be an RFC 3339 date-time with its offset, e.g. 2026-12-01T09:00:00Z")
        return value


class AccessEntry(Output):
    """One Gmail API call made on your behalf, or one access token issued for your Google grant: ids,
    method and outcome, never content, a subject, an address or a header value."""

    id: str = Field(description="unique in the log: the service and its entry number")
    service: AccessService
    at: dt.datetime = Field(description="when the call was sent (the token handed out)")
    kind: AccessKind
    method: str = Field(description="Gmail's method name, e.g. users.threads.get; TokenVault.GetAccessToken")
    description: str = Field(description="the entry in plain words")
    scopes: list[str] = Field(description="the scopes of the token the call used (or the token issued)")
    thread_id: str | None = omitted()
    message_id: str | None = omitted()
    draft_id: str | None = omitted()
    format: str | None = omitted(description="the format asked of Gmail: metadata, minimal, raw or full")
    metadata_headers: list[str] = Field(description="the header names a metadata read asked for (names only)")
    http_status: int | None = omitted(description="Gmail's answer; absent when none came")
    quota_units: int = Field(description="the method's cost in Gmail's quota table")
    sequence_id: str | None = omitted(description="your sequence the call served")
    step: int | None = omitted(description="0: the sequence's first email, n: its follow-up n")
    contact_deleted: bool = Field(description="about a contact you deleted since: its ids are not kept")
    caller: str | None = omitted(description="token issues: the service that got the token")
    expires_at: dt.datetime | None = omitted(description="token issues: when the token stops working")


class AccessCount(Output):
    day: dt.date = Field(description="the day, in UTC")
    kind: AccessKind
    calls: int
    quota_units: int
    failed: int = Field(description="calls Gmail refused or never answered")


class AccessLogPage(Output):
    items: list[AccessEntry] = Field(description="newest first")
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; null on the last")
    since: dt.datetime = Field(description="the start of the period `days` counts")
    until: dt.datetime = Field(description="the end of the period `days` counts")
    days: list[AccessCount] = Field(description="the entries matching the filters per day and kind, from `since` "
                                                "(default: 30 days before `until`) to `until` (default: now)")


class PrivacySummary(Output):
    """What CoffeePing did with your Gmail over the last 30 days, counted from the access log."""

    since: dt.datetime
    until: dt.datetime
    messages_sent: int
    drafts_created: int
    drafts_updated: int
    drafts_deleted: int
    drafts_read: int = Field(description="reads of CoffeePing's own drafts in your mailbox")
    metadata_reads: int = Field(description="reads of ids, labels and the headers named in `metadata_headers`")
    metadata_headers: dict[str, int] = Field(description="how many metadata reads asked for each header")
    content_reads: int = Field(description="reads that could return the content of a message: always 0")
    gmail_calls: int
    failed_calls: int
    quota_units: int
    tokens_issued: int
    by_kind: dict[AccessKind, int]
    by_service: dict[AccessService, int]


MODELS = (Problem, Me, PushEnvelope, GmailConnect, DeleteAccountInput, DeletionStatus, DeletionAccepted, Export, Health,
          ContactInput, Contact, ContactPage, ImportResult, SequenceInput, SendInput, Sequence, SequencePage,
          AccessLogPage, PrivacySummary)
