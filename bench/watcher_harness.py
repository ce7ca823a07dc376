"""Test support for the reply watcher: a token-vault double and the mailer's side of a sequence.

The vault double implements the token vault's gRPC contract (``TokenVault.GetAccessToken``) over the
same mutually authenticated ``serve`` as every service, handing out access tokens that the sandbox's
Google issued. It stands in for another service, never for the watcher's own code.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from coffeeping.common.rpc import RunningServer, TlsFiles, allow, current_user, serve
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping.vault.v1 import vault_pb2, vault_pb2_grpc

SCOPES = ["gmail.send", "gmail.compose", "gmail.metadata", "userinfo.email"]


def tls_for(certs: Path, service: str) -> TlsFiles:
    return TlsFiles(certs / "ca.pem", certs / f"{service}.pem", certs / f"{service}-key.pem")


@dataclass
class VaultDouble(vault_pb2_grpc.TokenVaultServicer):
    sandbox: object
    emails: dict[str, str] = field(default_factory=dict)  # user id -> Google account
    disconnected: set[str] = field(default_factory=set)
    calls: int = 0
    asked: dict[str, set[tuple[str, ...]]] = field(default_factory=dict)  # user id -> scope sets asked for
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _tokens: dict[str, tuple[str, dt.datetime]] = field(default_factory=dict)

    def connect(self, user_id: str, email: str) -> None:
        """A (new) grant for the user: the token issued for an earlier one is not handed out again."""
        with self._lock:
            self.emails[user_id] = email
            self.disconnected.discard(user_id)
            self._tokens.pop(user_id, None)

    def GetAccessToken(self, request, context):  # noqa: N802 - the gRPC method name
        user_id = current_user()
        with self._lock:
            self.calls += 1
            self.asked.setdefault(user_id, set()).add(tuple(request.scopes))
            email = self.emails.get(user_id)
            if email is None or user_id in self.disconnected:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "needs_reconnect")
            cached = self._tokens.get(user_id)
        if cached is None:
            body = self.sandbox.oauth.issue_tokens(email=email, scopes=SCOPES, offline=False)
            cached = (body["access_token"], dt.datetime.now(dt.UTC) + dt.timedelta(seconds=body["expires_in"]))
            with self._lock:
                self._tokens[user_id] = cached
        expires = Timestamp()
        expires.FromDatetime(cached[1])
        return vault_pb2.AccessToken(access_token=cached[0], expires_at=expires, email=email, scopes=SCOPES)


def start_vault_double(sandbox: object, certs: Path) -> tuple[VaultDouble, RunningServer]:
    double = VaultDouble(sandbox)
    policy = {"/coffeeping.vault.v1.TokenVault/GetAccessToken":
              allow("reply-watcher", "mailer", user_from=["reply-watcher", "mailer"])}
    server = serve("token-vault", [(vault_pb2_grpc.add_TokenVaultServicer_to_server, double,
                                    "coffeeping.vault.v1.TokenVault")],
                   policy, 0, tls_for(certs, "token-vault"), host="127.0.0.1", grace=1.0, max_workers=64)
    return double, server


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@dataclass
class Sequence:
    user_id: str
    user_email: str
    sequence_id: str
    contact_id: str
    contact_email: str
    thread_id: str
    message_id: str
    history_id: int

    def started(self) -> ev.SequenceStarted:
        return ev.SequenceStarted(sequence_id=self.sequence_id, contact_id=self.contact_id,
                                  contact_email=self.contact_email, thread_id=self.thread_id,
                                  message_id=self.message_id, history_id=self.history_id, user_email=self.user_email)

    def sent(self, message_id: str | None = None) -> ev.SequenceMessageSent:
        return ev.SequenceMessageSent(sequence_id=self.sequence_id, thread_id=self.thread_id,
                                      message_id=message_id or self.message_id)


def first_message_id_header(gmail: object, email: str, thread_id: str) -> str:
    for thread in gmail.mailbox(email)["threads"]:
        if thread["id"] == thread_id:
            return str(thread["messages"][0]["message_id"])
    raise LookupError(thread_id)


def send_first_email(gmail: object, user_id: str, user_email: str, contact_email: str,
                     contact_id: str | None = None, subject: str = "Coffee next week?") -> Sequence:
    """What the mailer does for a sequence's first email: profile historyId just before, then send."""
    history_id = int(gmail.mailbox(user_email)["historyId"])
    sent = gmail.user_send(user_email, to=contact_email, subject=subject, body="Would you have 20 minutes?")
    return Sequence(user_id, user_email, new_id("seq"), contact_id or new_id("contact"), contact_email,
                    sent["threadId"], sent["id"], history_id)


def mailer_token(sandbox: object, email: str) -> str:
    return sandbox.oauth.issue_tokens(email=email, scopes=["gmail.compose", "gmail.send"], offline=False)[
        "access_token"]


def create_follow_up_draft(google_url: str, token: str, seq: Sequence, body: str = "Just bumping this",
                           in_reply_to: str = "") -> str:
    """The mailer mirrors a follow-up as a draft in the thread (threaded by References and subject, as
    Gmail requires); returns the draft id."""
    import base64
    from email.message import EmailMessage

    import requests

    mime = EmailMessage()
    mime["To"] = seq.contact_email
    mime["Subject"] = "Re: Coffee next week?"
    if in_reply_to:
        mime["In-Reply-To"] = in_reply_to
        mime["References"] = in_reply_to
    mime.set_content(body)
    raw = base64.urlsafe_b64encode(mime.as_bytes()).decode()
    reply = requests.post(f"{google_url}/gmail/v1/users/me/drafts", headers={"Authorization": f"Bearer {token}"},
                          json={"message": {"raw": raw, "threadId": seq.thread_id}}, timeout=10)
    reply.raise_for_status()
    return str(reply.json()["id"])


def send_draft(google_url: str, token: str, draft_id: str) -> str:
    """The mailer sends a due follow-up; returns the sent message's id."""
    import requests

    reply = requests.post(f"{google_url}/gmail/v1/users/me/drafts/send", headers={"Authorization": f"Bearer {token}"},
                          json={"id": draft_id}, timeout=10)
    reply.raise_for_status()
    return str(reply.json()["id"])
