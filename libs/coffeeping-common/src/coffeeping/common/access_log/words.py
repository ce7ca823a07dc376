"""Each access-log entry in plain words, built where the facts are: the method, format and headers of
the call, its ids, and (for the mailer) the subject and step of the user's own sequence. A subject only
ever comes from the user's sequence, never from Gmail."""

from __future__ import annotations

from coffeeping.types.v1 import access_pb2

SERVICE_NAMES = {"mailer": "Mailer", "reply-watcher": "Reply watcher", "token-vault": "Token vault"}
_CALLERS = {"mailer": "the mailer", "reply-watcher": "the reply watcher"}
_LISTS = {"users.history.list": "listed the messages added to your mailbox since its last look (ids and labels only)",
          "users.drafts.list": "listed your drafts (ids only)",
          "users.messages.list": "listed messages (ids only)",
          "users.threads.list": "listed threads (ids only)"}
_OUTCOMES = {401: "Gmail refused the token (401)", 403: "Gmail refused the call (403)",
             404: "not found (404)", 429: "Gmail asked us to slow down (429)"}


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def short_id(value: str) -> str:
    """A Gmail id short enough for a sentence (the entry carries it whole)."""
    return value if len(value) <= 10 else value[:8] + "…"


def _of(entry: access_pb2.AccessEntry, subject: str | None) -> str:
    """Which email of which sequence the call served: "follow-up 2 of 'Coffee?'" (empty when unknown)."""
    if entry.contact_deleted:
        return "an email to a contact you deleted"
    if not entry.HasField("step"):
        return ""
    which = "the first email" if entry.step == 0 else f"follow-up {entry.step}"
    return f"{which} of '{subject}'" if subject is not None else f"{which} of a sequence"


def _where(entry: access_pb2.AccessEntry) -> str:
    if entry.method == "users.threads.get":
        return f"the messages in thread {short_id(entry.thread_id)}" if entry.thread_id else "the messages of a thread"
    thread = f" in thread {short_id(entry.thread_id)}" if entry.HasField("thread_id") else ""
    return f"1 message{thread}"


def _outcome(entry: access_pb2.AccessEntry) -> str:
    if entry.kind == "token_issued":
        return ""
    if not entry.HasField("http_status"):
        return " (no answer from Gmail)"
    status = entry.http_status
    if status < 400:
        return ""
    return f" ({_OUTCOMES.get(status, f'Gmail answered {status}')})"


def _token(who: str, entry: access_pb2.AccessEntry) -> str:
    caller = _CALLERS.get(entry.caller, entry.caller or "a service")
    scopes = _and(list(entry.scopes)) if entry.scopes else "your whole grant"
    until = entry.expires_at.ToDatetime().strftime("%Y-%m-%d %H:%M UTC") if entry.HasField("expires_at") else ""
    return f"{who} gave {caller} an access token for {scopes}" + (f", valid until {until}" if until else "")


def _sentence(who: str, entry: access_pb2.AccessEntry, of: str) -> str:
    kind, method = entry.kind, entry.method
    target = of or "a follow-up"
    if kind == "message_sent":
        return f"{who} sent {of or 'an email'}" + (" from its draft" if method == "users.drafts.send" else "")
    if kind in ("draft_created", "draft_updated", "draft_deleted"):
        verb = kind.removeprefix("draft_")
        return f"{who} {verb} the draft of {target}"
    if kind == "draft_read":
        if entry.format in ("full", "raw"):
            return f"{who} read the text of its own draft of {target}, to send it as you left it in Gmail"
        return f"{who} looked up the draft of {target} (ids only)"
    if kind == "metadata_read":
        headers = list(entry.metadata_headers)
        read = f"the {_and(headers)} header{'s' if len(headers) > 1 else ''}" if headers else "the labels"
        return f"{who} read {read} of {_where(entry)}" + (f", for {of}" if of else "")
    if kind == "content_read":
        return f"{who} read the content of {_where(entry)}"
    if kind == "ids_listed":
        return f"{who} {_LISTS.get(method, 'listed ids')}" + (f", for {of}" if of else "")
    if kind == "profile_read":
        return f"{who} read your mailbox's history position (no messages)" + (f", for {of}" if of else "")
    if kind == "watch_started":
        return f"{who} asked Gmail to tell it when your mailbox changes (no content)"
    if kind == "watch_stopped":
        return f"{who} told Gmail to stop telling it about your mailbox"
    return f"{who} called Gmail's {method}"


def describe(service: str, entry: access_pb2.AccessEntry, subject: str | None = None) -> str:
    """The entry in plain words, e.g. "Mailer created the draft of follow-up 2 of 'Coffee next week?'"."""
    who = SERVICE_NAMES.get(service, service)
    if entry.kind == "token_issued":
        return _token(who, entry)
    return _sentence(who, entry, _of(entry, subject)) + _outcome(entry)


__all__ = ["SERVICE_NAMES", "describe", "short_id"]
