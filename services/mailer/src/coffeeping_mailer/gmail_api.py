"""The mailer's view of Gmail: the handful of calls it makes, with errors as our own types.

Clients come from ``coffeeping.common.gmail.GmailClients`` (one built client per thread, every call
run on that user's authorised HTTP object for the scopes it needs, tokens from the vault, each request
recorded in the access log). Sends are
executed with ``num_retries=0``: retrying a send is the scheduler's decision, made with the step's
recorded progress, never the HTTP library's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import google.auth.exceptions
import httplib2
from googleapiclient.errors import HttpError

from coffeeping.common.access_log import AccessLog
from coffeeping.common.gmail import (
    SCOPE_COMPOSE,
    GmailClients,
    NeedsReconnect,
    VaultTokenSource,
    VaultUnavailable,
)

# Gmail refuses message content to any token holding gmail.metadata, so a draft's body is read with a
# token holding gmail.compose only (which reads drafts, never received mail).
_CONTENT_SCOPES = (SCOPE_COMPOSE,)


class GmailError(Exception):
    """A Gmail call failed."""


class Disconnected(GmailError):
    """The grant no longer works (the vault says reconnect, or Gmail says 401 after a refresh)."""


class Transient(GmailError):
    """429, 5xx, a network error or the vault unavailable: try again later."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class NotFound(GmailError):
    """404: the draft, message or thread is not there."""


class Rejected(GmailError):
    """Another 4xx: Gmail refuses this request; retrying will not help."""

    def __init__(self, status: int) -> None:
        super().__init__(f"gmail {status}")
        self.status = status


def _retry_after(error: HttpError) -> float | None:
    value = error.resp.get("retry-after") if error.resp is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _run(request: Any, http: Any) -> Any:
    try:
        return request.execute(http=http, num_retries=0)
    except HttpError as error:
        status = int(error.resp.status) if error.resp is not None else 0
        if status == 401:
            raise Disconnected("gmail 401 after refresh") from None
        if status == 404:
            raise NotFound("gmail 404") from None
        if status == 429 or status >= 500 or (status == 403 and b"rateLimitExceeded" in (error.content or b"")):
            raise Transient(f"gmail {status}", _retry_after(error)) from None
        raise Rejected(status) from None
    except NeedsReconnect:
        raise Disconnected("vault: needs reconnect") from None
    except google.auth.exceptions.RefreshError:
        raise Disconnected("token refresh refused") from None
    except VaultUnavailable as exc:
        raise Transient(f"vault unavailable ({exc})") from None
    except (httplib2.HttpLib2Error, OSError, TimeoutError) as exc:
        raise Transient(f"network: {type(exc).__name__}") from None


def _plain_text(raw: str) -> str | None:
    """The text/plain body of a base64url RFC 822 message (the first such part), or None."""
    import base64
    import email
    import email.policy

    try:
        parsed = email.message_from_bytes(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)),
                                          policy=email.policy.default)
        part = parsed.get_body(preferencelist=("plain",))
        return str(part.get_content()) if part is not None else None  # type: ignore[attr-defined]
    except (ValueError, LookupError, UnicodeError):
        return None


@dataclass(frozen=True)
class ThreadMessage:
    id: str
    label_ids: tuple[str, ...]
    internal_date_ms: int
    sender: str  # the From header's address, lower-cased ("" when absent)


class Gmail:
    """Gmail for the mailer; thread safe (``GmailClients`` keeps the clients per thread)."""

    def __init__(self, endpoint: str, tokens: VaultTokenSource, cache_size: int = 256,
                 access_log: AccessLog | None = None) -> None:
        self.tokens = tokens
        self.clients = GmailClients(endpoint, tokens, timeout_s=30.0, cache_size=cache_size, access_log=access_log)

    def _client(self, user_id: str, scopes: tuple[str, ...] = ()) -> tuple[Any, Any]:
        """The thread's ``users`` resource and the user's authorised HTTP object to run its requests on."""
        try:
            client = self.clients.for_user(user_id, scopes)
        except NeedsReconnect:
            raise Disconnected("vault: needs reconnect") from None
        except VaultUnavailable as exc:
            raise Transient(f"vault unavailable ({exc})") from None
        return client.users, client.http

    def forget(self, user_id: str) -> None:
        self.clients.forget(user_id)

    def user_email(self, user_id: str) -> str:
        try:
            return self.tokens.get(user_id).email.lower()
        except NeedsReconnect:
            raise Disconnected("vault: needs reconnect") from None
        except VaultUnavailable as exc:
            raise Transient(f"vault unavailable ({exc})") from None

    def history_id(self, user_id: str) -> str:
        users, http = self._client(user_id)
        return str(_run(users.getProfile(userId="me"), http)["historyId"])

    def send(self, user_id: str, raw: str) -> dict[str, Any]:
        users, http = self._client(user_id)
        return _run(users.messages().send(userId="me", body={"raw": raw}), http)  # type: ignore[no-any-return]

    def own_header(self, user_id: str, message_id: str, header: str) -> str | None:
        """A header of a message the user sent (never used on a received message)."""
        users, http = self._client(user_id)
        request = users.messages().get(userId="me", id=message_id, format="metadata", metadataHeaders=[header])
        reply = _run(request, http)
        for item in reply.get("payload", {}).get("headers", []):
            if item.get("name", "").lower() == header.lower():
                return str(item.get("value", ""))
        return None

    def create_draft(self, user_id: str, raw: str, thread_id: str) -> dict[str, Any]:
        users, http = self._client(user_id)
        body = {"message": {"raw": raw, "threadId": thread_id}}
        return _run(users.drafts().create(userId="me", body=body), http)  # type: ignore[no-any-return]

    def draft_message_id(self, user_id: str, draft_id: str) -> str:
        """The id of the draft's current message (it changes when the user edits the draft)."""
        users, http = self._client(user_id)
        reply = _run(users.drafts().get(userId="me", id=draft_id, format="minimal"), http)
        return str(reply["message"]["id"])

    def draft_content(self, user_id: str, draft_id: str) -> tuple[str, str | None]:
        """The draft's current message id and its plain-text body (None when it has no text part).

        Read with a compose-only token: the user's own draft, as it will be sent.
        """
        users, http = self._client(user_id, _CONTENT_SCOPES)
        reply = _run(users.drafts().get(userId="me", id=draft_id, format="raw"), http)
        message = reply["message"]
        return str(message["id"]), _plain_text(str(message.get("raw", "")))

    def send_draft(self, user_id: str, draft_id: str) -> dict[str, Any]:
        users, http = self._client(user_id)
        return _run(users.drafts().send(userId="me", body={"id": draft_id}), http)  # type: ignore[no-any-return]

    def find_draft(self, user_id: str, thread_id: str, rfc_message_id: str) -> tuple[str, str] | None:
        """(draft id, message id) of our draft in ``thread_id`` whose Message-ID is ``rfc_message_id``.

        For a draft whose creation was interrupted before we recorded its id: we give every draft a
        Message-ID of our own before creating it, so it can be found again among the user's drafts.
        """
        users, http = self._client(user_id)
        token = None
        while True:
            reply = _run(users.drafts().list(userId="me", pageToken=token, maxResults=500), http)
            for draft in reply.get("drafts", []):
                message = draft.get("message", {})
                if message.get("threadId") != thread_id:
                    continue
                if self.own_header(user_id, str(message["id"]), "Message-ID") == rfc_message_id:
                    return str(draft["id"]), str(message["id"])
            token = reply.get("nextPageToken")
            if not token:
                return None

    def delete_draft(self, user_id: str, draft_id: str) -> None:
        users, http = self._client(user_id)
        _run(users.drafts().delete(userId="me", id=draft_id), http)

    def thread(self, user_id: str, thread_id: str) -> list[ThreadMessage]:
        """The thread's messages with the ``From`` header only (metadata; never content)."""
        from email.utils import parseaddr

        users, http = self._client(user_id)
        request = users.threads().get(userId="me", id=thread_id, format="metadata", metadataHeaders=["From"])
        reply = _run(request, http)
        out = []
        for msg in reply.get("messages", []):
            sender = ""
            for item in msg.get("payload", {}).get("headers", []):
                if item.get("name", "").lower() == "from":
                    sender = parseaddr(str(item.get("value", "")))[1].lower()
            out.append(ThreadMessage(str(msg["id"]), tuple(msg.get("labelIds", [])),
                                     int(msg.get("internalDate", 0)), sender))
        return out

    def sent_since(self, user_id: str, history_id: str) -> list[dict[str, Any]]:
        """Messages added with the SENT label since ``history_id`` (every page)."""
        users, http = self._client(user_id)
        found: list[dict[str, Any]] = []
        token = None
        while True:
            reply = _run(users.history().list(userId="me", startHistoryId=history_id, historyTypes=["messageAdded"],
                                              labelId="SENT", pageToken=token), http)
            for record in reply.get("history", []):
                for added in record.get("messagesAdded", []):
                    found.append(added["message"])
            token = reply.get("nextPageToken")
            if not token:
                return found
