"""Gmail clients for the services that talk to Gmail (mailer, reply watcher): ``GmailClients``.

Access tokens come from the token vault over gRPC: a service never holds a refresh token. The
google-api-python-client is built from the discovery document that ships with it (offline), pointed
at ``GMAIL_API_ENDPOINT``, and its credentials fetch a fresh token from the vault when needed.

A caller may ask for a token holding only some of the grant's scopes. Gmail refuses content
(``format=full|raw``) to any token that holds ``gmail.metadata``, so reading a draft's body needs a
``gmail.compose``-only token, and a reader that must never see content asks for ``gmail.metadata`` only.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import google_auth_httplib2
import googleapiclient
import grpc
import httplib2
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build_from_document

from coffeeping.common.access_log import AccessLog, RecordingHttp, short_scope
from coffeeping.common.metrics.gmail import GmailRequests
from coffeeping.common.rpc import call_metadata
from coffeeping.vault.v1 import vault_pb2, vault_pb2_grpc

# Refresh a cached token this long before Google would refuse it.
_EARLY = dt.timedelta(seconds=60)

SCOPE_COMPOSE = "https://www.googleapis.com/auth/gmail.compose"
SCOPE_METADATA = "https://www.googleapis.com/auth/gmail.metadata"
SCOPE_SEND = "https://www.googleapis.com/auth/gmail.send"
SCOPE_USERINFO_EMAIL = "https://www.googleapis.com/auth/userinfo.email"
# Exactly what the consent asks for and the vault accepts: no more, no fewer.
CONSENT_SCOPES = (SCOPE_SEND, SCOPE_COMPOSE, SCOPE_METADATA, SCOPE_USERINFO_EMAIL)

# Local parts of the addresses that send delivery failures.
BOUNCE_SENDERS = ("mailer-daemon", "postmaster")


def sender_address(from_value: str | None) -> str:
    """The bare, lower-cased address of a From header value ('' when there is none)."""
    return email.utils.parseaddr(from_value or "")[1].strip().lower()


def classify_received(from_value: str | None, own_email: str) -> str:
    """reply, bounce or self for a message the user did not send, from its From header alone."""
    address = sender_address(from_value)
    if address and own_email and address == own_email.lower():
        return "self"
    if address.partition("@")[0] in BOUNCE_SENDERS:
        return "bounce"
    return "reply"


class NeedsReconnect(Exception):
    """The vault says the user's grant is gone or revoked: the user must reconnect Gmail."""


class ScopeNotGranted(NeedsReconnect):
    """The grant lacks a scope that was asked for: only a new consent can add it."""


class VaultUnavailable(Exception):
    """The vault (or Google behind it) could not give a token right now; retry later."""


class ScopesRefused(RuntimeError):
    """The vault does not give this caller these scopes (PERMISSION_DENIED): a bug, never retried as an
    outage."""


@dataclass(frozen=True)
class AccessToken:
    token: str
    expires_at: dt.datetime
    email: str
    scopes: tuple[str, ...]


class VaultTokenSource:
    """Short-lived access tokens from the vault, cached per (user, scope set) until shortly before expiry.

    ``scopes=()`` asks for the whole grant; otherwise the token holds exactly those scopes.
    """

    def __init__(self, stub: vault_pb2_grpc.TokenVaultStub, timeout_s: float = 15.0) -> None:
        self.stub = stub
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, tuple[str, ...]], AccessToken] = {}

    def get(self, user_id: str, force: bool = False, scopes: Iterable[str] = ()) -> AccessToken:
        wanted = tuple(sorted(set(scopes)))
        key = (user_id, wanted)
        now = dt.datetime.now(dt.UTC)
        cached = self._cache.get(key)
        if cached and not force and cached.expires_at - _EARLY > now:
            return cached
        try:
            # The generated *_pb2_grpc stubs are untyped; the rpc returns an AccessToken message.
            reply: vault_pb2.AccessToken = self.stub.GetAccessToken(
                vault_pb2.GetAccessTokenRequest(scopes=list(wanted)), metadata=call_metadata(user_id),
                timeout=self.timeout_s,
            )
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                self.forget(user_id)
                details = exc.details() or ""
                if details.startswith("scope_not_granted"):
                    raise ScopeNotGranted(details) from None
                raise NeedsReconnect(user_id) from None
            if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise ScopesRefused(exc.details() or "permission denied") from None
            raise VaultUnavailable(exc.code().name) from None
        token = AccessToken(
            reply.access_token,
            reply.expires_at.ToDatetime(tzinfo=dt.UTC),
            reply.email,
            tuple(reply.scopes),
        )
        with self._lock:
            self._cache[key] = token
        return token

    def forget(self, user_id: str) -> None:
        """Drop every cached token of the user, whatever its scopes."""
        with self._lock:
            for key in [k for k in self._cache if k[0] == user_id]:
                del self._cache[key]


@lru_cache(maxsize=1)
def discovery_document() -> dict[str, Any]:
    """Gmail's discovery document as shipped with google-api-python-client (no network)."""
    path = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "gmail.v1.json"
    document: dict[str, Any] = json.loads(path.read_text())
    return document


class _Users:
    """A ``users`` resource whose sub-resources (``drafts()``, ``threads()``, ...) are built once: the
    client builds every method of a resource anew on each ``users.drafts()``, which costs more CPU than
    the rest of a call. Per thread, like the resource itself."""

    def __init__(self, users: Any) -> None:
        self._users = users
        self._built: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._users, name)
        if name not in ("drafts", "messages", "threads", "history"):
            return attr

        def sub() -> Any:
            built = self._built.get(name)
            if built is None:
                built = self._built[name] = attr()
            return built

        return sub


class _Authorised:
    """One thread's authorised HTTP objects per (user, scope set), least recently used first."""

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple[str, tuple[str, ...]], Any] = OrderedDict()


@dataclass(frozen=True)
class UserGmail:
    """One user's Gmail on the calling thread: build requests on ``users``, run them with ``execute``
    (or ``request.execute(http=http, ...)``). Belongs to the thread that got it."""

    users: Any
    http: Any = field(repr=False)

    def execute(self, request: Any, num_retries: int = 0) -> Any:
        """Run ``request`` as this user. No retries unless asked: retrying is the caller's decision."""
        return request.execute(http=self.http, num_retries=num_retries)


class GmailClients:
    """Gmail API clients for every user of a service; thread safe.

    Building a client from the discovery document costs tens of milliseconds of CPU, so each thread
    builds one (pointed at ``endpoint``) and keeps its ``users`` resource. Each thread also keeps one HTTP
    connection pool (``timeout_s``), shared by every user: one keep-alive connection to Gmail whatever the
    number of users. Requests run on a per-(user, scope set) authorised wrapper around that pool whose
    credentials take their token from ``tokens`` and fetch a fresh one from the vault when it expires or
    Gmail answers 401; each thread keeps at most ``cache_size`` of them (least recently used dropped).

    Getting a wrapper that is not cached asks the vault for a token: ``NeedsReconnect``,
    ``VaultUnavailable`` or ``ScopesRefused`` may be raised by ``http``/``for_user``, and by a request's
    execution when its token is refreshed.

    Each wrapper sends through a ``RecordingHttp`` of the user: every request that goes on the wire is
    counted (``coffeeping.common.metrics.gmail``) and, with ``access_log``, recorded in the service's
    access log (``coffeeping.common.access_log``).
    """

    def __init__(self, endpoint: str, tokens: VaultTokenSource, timeout_s: float = 30.0,
                 cache_size: int = 256, access_log: AccessLog | None = None) -> None:
        self.endpoint = endpoint
        self.tokens = tokens
        self.timeout_s = timeout_s
        self.cache_size = cache_size
        self.access_log = access_log
        self._requests = GmailRequests(access_log)
        self._local = threading.local()
        # Every live thread's wrappers, so that ``forget`` reaches them all (a thread's go with it).
        self._lock = threading.Lock()
        self._caches: weakref.WeakSet[_Authorised] = weakref.WeakSet()
        self._forgets = 0  # a wrapper built while a forget ran is used once, never cached

    def users(self) -> Any:
        """The calling thread's ``users`` resource (its requests must run on a user's ``http``)."""
        users = getattr(self._local, "users", None)
        if users is None:
            service = build_from_document(discovery_document(), http=self._transport(),
                                          client_options={"api_endpoint": self.endpoint})
            users = self._local.users = _Users(service.users())
        return users

    def _transport(self) -> httplib2.Http:
        transport: httplib2.Http | None = getattr(self._local, "transport", None)
        if transport is None:
            transport = self._local.transport = httplib2.Http(timeout=self.timeout_s)
        return transport

    def _cache(self) -> OrderedDict[tuple[str, tuple[str, ...]], Any]:
        held: _Authorised | None = getattr(self._local, "authorised", None)
        if held is None:
            held = self._local.authorised = _Authorised()
            with self._lock:
                self._caches.add(held)
        return held.entries

    def http(self, user_id: str, scopes: Iterable[str] = ()) -> Any:
        """The calling thread's authorised HTTP object for the user, its tokens holding ``scopes`` only
        (``()``: the whole grant)."""
        wanted = tuple(sorted(set(scopes)))
        key = (user_id, wanted)
        cache = self._cache()
        with self._lock:
            http = cache.get(key)
            if http is not None:
                cache.move_to_end(key)
                return http
            forgets = self._forgets
        token = self.tokens.get(user_id, scopes=wanted)

        def refresh(_request: Any, scopes: Any = None) -> tuple[str, dt.datetime]:
            # google-auth passes its own idea of the scopes, by keyword (``scopes=``; None here): refresh
            # the same scope set whatever it says.
            fresh = self.tokens.get(user_id, force=True, scopes=wanted)
            return fresh.token, fresh.expires_at.replace(tzinfo=None)

        credentials = Credentials(token=token.token, expiry=token.expires_at.replace(tzinfo=None),
                                  refresh_handler=refresh)
        transport: Any = self._transport()
        granted = tuple(sorted(short_scope(s) for s in token.scopes))
        transport = RecordingHttp(transport, self._requests, user_id, granted)
        http = google_auth_httplib2.AuthorizedHttp(credentials, http=transport)
        with self._lock:
            if forgets == self._forgets:
                cache[key] = http
                if len(cache) > self.cache_size:
                    cache.popitem(last=False)
        return http

    def for_user(self, user_id: str, scopes: Iterable[str] = ()) -> UserGmail:
        """The user's Gmail on the calling thread, its tokens holding ``scopes`` only (``()``: the whole
        grant)."""
        return UserGmail(self.users(), self.http(user_id, scopes))

    def forget(self, user_id: str) -> None:
        """Drop the user's authorised HTTP objects on every thread, and the user's cached tokens."""
        self.tokens.forget(user_id)  # first: a wrapper built from a token it held is then never kept
        with self._lock:
            self._forgets += 1
            for held in list(self._caches):
                for key in [k for k in held.entries if k[0] == user_id]:
                    del held.entries[key]
