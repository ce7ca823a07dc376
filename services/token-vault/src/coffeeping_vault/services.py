"""What the token vault does, independent of how it is called.

Secrets only ever exist in plain form in this process's memory: tokens are sealed under the grant's
data key before they reach the database, the data key is wrapped by KMS (or the local key), and no
method returns a refresh token. Every grant stored, token issued, refresh, failure and revocation
is written to ``vault.audit`` (caller, user, time, outcome), never the token itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Select, and_, delete, exists, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from coffeeping.common.db import system_tx, user_tx
from coffeeping.common.gmail import CONSENT_SCOPES, SCOPE_COMPOSE, SCOPE_METADATA, SCOPE_USERINFO_EMAIL
from coffeeping.common.messaging import forget_user, publish_in_tx
from coffeeping.common.notified_cache import notify
from coffeeping.common.tombstones import bury, is_buried, subject
from coffeeping.events.v1 import events_pb2 as ev
from coffeeping_vault import crypto
from coffeeping_vault.audit import AuditWriter, short_scopes, user_lock_key
from coffeeping_vault.google_oauth import GoogleOAuth, GoogleUnavailable, InvalidGrant, OAuthRefused, TokenResponse
from coffeeping_vault.kms import KeyIntegrityError, Keyring, KeyUnavailable
from coffeeping_vault.models import audit, data_keys, grants, revocations, scoped_tokens, state_nonces, tombstones
from coffeeping_vault.token_cache import CHANNEL, GRANT_VIEW, CachedToken, TokenCache

log = logging.getLogger(__name__)

SCHEMA = "vault"
SCOPE_BASE = "https://www.googleapis.com/auth/"

# Google reports the short ``email`` under its long name (userinfo.email), so no alias is accepted for it.
# It has been seen to add ``openid`` on its own to a consent for userinfo.email (oauthlib's "Scope has
# changed" reports); ``openid`` reaches nothing userinfo.email does not (the account's id), so beside
# userinfo.email it is not a fifth scope. It never stands in for userinfo.email.
IDENTITY_EXTRAS = frozenset({"openid"})

MAILER, WATCHER, ACCOUNTS = "mailer", "reply-watcher", "accounts"
# The exact scope sets each service's code asks for, and nothing wider; () is the whole grant. The reply
# watcher reads thread metadata only; the mailer sends with the grant and reads its own drafts with a
# compose-only token (Gmail refuses content to any token that holds gmail.metadata).
CALLER_SCOPES: dict[str, frozenset[tuple[str, ...]]] = {
    MAILER: frozenset({(), (SCOPE_COMPOSE,)}),
    WATCHER: frozenset({(SCOPE_METADATA,)}),
}
# Serve the stored access token while it has more than this left; refresh otherwise.
FRESH_FOR = dt.timedelta(minutes=5)
_LOCK_STRIPES = 256


def short_scope(scope: str) -> str:
    return scope[len(SCOPE_BASE):] if scope.startswith(SCOPE_BASE) else scope


class VaultError(Exception):
    """A refusal with a reason code that is safe to show (never a secret)."""

    reason = "error"

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason or self.reason)
        if reason:
            self.reason = reason


class NotConnected(VaultError):
    reason = "not_connected"


class NeedsReconnect(VaultError):
    reason = "needs_reconnect"


class Unavailable(VaultError):
    """A dependency is down (``kms_unavailable``, ``google_unavailable``): nothing changed, try again later."""

    reason = "unavailable"


KMS_UNAVAILABLE = "kms_unavailable"
GOOGLE_UNAVAILABLE = "google_unavailable"


class Refused(VaultError):
    """The connection was refused: ``missing_scope:...``, ``different_account``, ``exchange_failed``."""

    def __init__(self, reason: str, precondition: bool = True) -> None:
        super().__init__(reason)
        self.precondition = precondition


class IntegrityFailure(VaultError):
    reason = "integrity"


class ScopeNotAllowed(VaultError):
    """The caller asked for a scope set its service never needs: refused whatever the user's grant holds."""

    reason = "scope_not_allowed"


class ExcessScopes(Refused):
    """A consent granted more than the four scopes: refused, and the new grant revoked at Google."""

    def __init__(self, names: str, account_sub: str = "") -> None:
        super().__init__("excess_scope:" + names)
        self.revoke_new = True
        self.account_sub = account_sub  # the consent's Google account, when we already hold a grant


class AccountDeleted(Refused):
    """The user's account was deleted: the vault never holds anything for them again."""

    def __init__(self) -> None:
        super().__init__("account_deleted")


@dataclass(frozen=True)
class GrantView:
    connected: bool
    email: str = ""
    scopes: tuple[str, ...] = ()
    status: str = ""
    connected_at: dt.datetime | None = None
    refreshed_at: dt.datetime | None = None
    has_refresh_token: bool = False


@dataclass(frozen=True)
class IssuedToken:
    access_token: str = field(repr=False)
    expires_at: dt.datetime
    email: str
    scopes: tuple[str, ...]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _view(row: object) -> GrantView:
    return GrantView(
        connected=True,
        email=row.email,  # type: ignore[attr-defined]
        scopes=tuple(row.scopes),  # type: ignore[attr-defined]
        status=row.status,  # type: ignore[attr-defined]
        connected_at=row.connected_at,  # type: ignore[attr-defined]
        refreshed_at=row.refreshed_at,  # type: ignore[attr-defined]
        has_refresh_token=row.refresh_ct is not None and row.status == "connected",  # type: ignore[attr-defined]
    )


def _read_token(user_id: str, scope_key: str, buried_as: bytes) -> Select[Any]:
    """The grant, its token stored for ``scope_key`` and whether the user is buried (tombstone ``buried_as``)."""
    return (
        select(grants.c.user_id, grants.c.grant_id, grants.c.key_id, grants.c.email, grants.c.scopes, grants.c.status,
               grants.c.access_ct, grants.c.access_expires_at,
               scoped_tokens.c.access_ct.label("scoped_ct"),
               scoped_tokens.c.access_expires_at.label("scoped_expires_at"),
               exists().where(tombstones.c.subject == buried_as).label("buried"))
        .select_from(grants.outerjoin(scoped_tokens, and_(scoped_tokens.c.user_id == grants.c.user_id,
                                                          scoped_tokens.c.scope_key == scope_key)))
        .where(grants.c.user_id == user_id)
    )


_MAX_SCOPES = 16


def requested_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The requested scope set, sorted and without duplicates; malformed requests are refused."""
    wanted = sorted({s.strip() for s in scopes})
    if len(wanted) > _MAX_SCOPES or any(not s or len(s) > 256 or not s.isprintable() or " " in s for s in wanted):
        raise Refused("invalid_scopes", precondition=False)
    return tuple(wanted)


def check_caller_scopes(caller: str, wanted: tuple[str, ...]) -> None:
    """Refuse a scope set the calling service does not use (``requested_scopes`` output, sorted).

    Checked before anything is read: a compromised service learns nothing about the user by asking for
    more, and its attempts are logged (caller and scope names, never a token).
    """
    if wanted not in CALLER_SCOPES.get(caller, frozenset()):
        log.warning("token refused: scope set not allowed for this caller",
                    extra={"caller": caller, "scopes": _scope_detail(wanted) or "whole grant"})
        raise ScopeNotAllowed()


def scope_names(scopes: Iterable[str]) -> str:
    """Scope names for a reason code: ``gmail.readonly``, ``mail.google.com``, ``openid`` (letters and dots)."""
    names = (short_scope(s).removeprefix("https://").removeprefix("http://").rstrip("/") for s in scopes)
    return ",".join(sorted(names))


def excess_scopes(granted: set[str]) -> list[str]:
    """What a consent granted beyond the four scopes (see ``IDENTITY_EXTRAS``)."""
    extra = granted - set(CONSENT_SCOPES)
    if SCOPE_USERINFO_EMAIL in granted:
        extra -= IDENTITY_EXTRAS
    return sorted(extra)


def _field(which: str, scope_key: str) -> str:
    """The field named in a ciphertext's associated data: a scoped token is bound to its scope set."""
    return f"{which}:{scope_key}" if scope_key else which


def _scope_detail(wanted: tuple[str, ...]) -> str:
    return "scopes=" + ",".join(short_scope(s) for s in wanted) if wanted else ""


def _lock_user(conn: Connection, user_id: str) -> None:
    """Hold the user's grant lock until commit: grant changes, purges and audit flushes take turns."""
    conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(user_lock_key(user_id)))))


def _audit(conn: Connection, user_id: str, caller: str, action: str, outcome: str, detail: str = "",
           issued: IssuedToken | None = None) -> None:
    """One audit record in the caller's transaction; ``issued``: the token handed out (its scopes and expiry)."""
    extra = {"scopes": short_scopes(issued.scopes), "expires_at": issued.expires_at} if issued is not None else {}
    conn.execute(insert(audit).values(user_id=user_id, caller=caller or "unknown", action=action, outcome=outcome,
                                      detail=detail[:200], **extra))


class Vault:
    def __init__(self, engine: Engine, keyring: Keyring, google: GoogleOAuth, cache: TokenCache | None = None,
                 audit_writer: AuditWriter | None = None, *, tombstone_key: bytes) -> None:
        self.engine = engine
        self.keyring = keyring
        self.google = google
        self.tombstone_key = tombstone_key
        # Without a listener thread running (``cache.run``) the cache never serves, and without a writer
        # thread (``audit_writer.run``) issue records are written at once: both are safe by default.
        self.cache = cache or TokenCache(None, FRESH_FOR)
        self.audit = audit_writer or AuditWriter(engine)
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    def _buried(self, conn: Connection, user_id: str) -> bool:
        """Whether the user's account was deleted (checked in the transaction that would serve or write)."""
        return is_buried(conn, SCHEMA, self.tombstone_key, user_id)

    # -- keys and ciphertexts -------------------------------------------------------------------------
    def _data_key(self, conn: Connection, row: object) -> bytes:
        key_id = str(row.key_id)  # type: ignore[attr-defined]
        cached = self.keyring.cache.get(key_id)
        if cached is not None:
            return cached
        key_row = conn.execute(select(data_keys).where(data_keys.c.key_id == key_id)).first()
        if key_row is None or key_row.user_id != row.user_id or str(key_row.grant_id) != str(row.grant_id):  # type: ignore[attr-defined]
            raise IntegrityFailure()
        try:
            return self.keyring.unwrap(key_id, key_row.wrapping, key_row.wrapped,
                                       crypto.key_aad(key_row.user_id, str(key_row.grant_id)))
        except KeyUnavailable:
            raise Unavailable(KMS_UNAVAILABLE) from None
        except KeyIntegrityError:
            raise IntegrityFailure() from None

    def _open(self, key: bytes, row: object, which: str, scope_key: str = "", sealed: bytes | None = None) -> str:
        """Open the grant's ``which`` token, or with ``scope_key`` the scoped token (``row.scoped_ct``)."""
        if sealed is None:
            sealed = getattr(row, "scoped_ct" if scope_key else f"{which}_ct")
        sealed = bytes(sealed)  # type: ignore[arg-type]
        aad = crypto.token_aad(row.user_id, str(row.grant_id), _field(which, scope_key),  # type: ignore[attr-defined]
                               crypto.sealed_version(sealed))
        try:
            return crypto.open_sealed(key, sealed, aad).decode()
        except crypto.DecryptionFailed:
            log.error("grant ciphertext failed to authenticate", extra={"field": which, "scoped": bool(scope_key)})
            raise IntegrityFailure() from None

    @staticmethod
    def _seal(key: bytes, user_id: str, grant_id: str, which: str, token: str) -> bytes:
        return crypto.seal(key, token.encode(), crypto.token_aad(user_id, grant_id, which))

    # -- connection -----------------------------------------------------------------------------------
    def complete_connection(self, user_id: str, caller: str, code: str, verifier: str,
                            redirect_uri: str) -> GrantView:
        """Exchange the code, check scopes and account, and store the grant encrypted."""
        if not code or len(code) > 2048 or not verifier or len(verifier) > 128 or not redirect_uri:
            raise Refused("exchange_failed", precondition=False)
        with user_tx(self.engine, user_id) as conn:
            if self._buried(conn, user_id):
                # Refused before the exchange, so that Google issues no tokens for a deleted account.
                raise AccountDeleted()
        try:
            tokens = self.google.exchange_code(code, verifier, redirect_uri)
        except GoogleUnavailable:
            self._audit_tx(user_id, caller, "connect", "failed", "google_unavailable")
            raise Unavailable(GOOGLE_UNAVAILABLE) from None
        except (InvalidGrant, OAuthRefused):
            self._audit_tx(user_id, caller, "connect", "failed", "exchange_failed")
            raise Refused("exchange_failed", precondition=False) from None
        try:
            return self._store_connection(user_id, caller, tokens)
        except (Refused, Unavailable, IntegrityFailure) as exc:
            self._audit_tx(user_id, caller, "connect", "failed", exc.reason)
            if getattr(exc, "revoke_new", False):
                self._revoke_quietly(tokens)
            if isinstance(exc, ExcessScopes):
                self._after_excess_revoked(user_id, caller, exc.account_sub)
            raise

    def _store_connection(self, user_id: str, caller: str, tokens: TokenResponse) -> GrantView:
        granted = set(tokens.scopes)
        excess = excess_scopes(granted)
        if excess:
            # Never more than the four: the new grant is revoked at Google even when it costs a grant we
            # hold (Google ends every token of the account's grant; see ``_after_excess_revoked``).
            raise ExcessScopes(scope_names(excess), self._account_sub(tokens) if self._has_grant(user_id) else "")
        missing = [s for s in CONSENT_SCOPES if s not in granted]
        if missing:
            exc: VaultError = Refused("missing_scope:" + ",".join(short_scope(s) for s in missing))
            exc.revoke_new = not self._has_grant(user_id)  # type: ignore[attr-defined]
            raise exc
        try:
            info = self.google.userinfo(tokens.access_token)
        except GoogleUnavailable:
            raise Unavailable(GOOGLE_UNAVAILABLE) from None
        except OAuthRefused:
            raise Refused("exchange_failed", precondition=False) from None
        now = _now()
        expires_at = now + dt.timedelta(seconds=max(tokens.expires_in, 0))
        scopes = sorted(granted)
        with user_tx(self.engine, user_id, system=True) as conn:
            _lock_user(conn, user_id)
            if self._buried(conn, user_id):
                # Deleted while we talked to Google: the deletion took the same lock, so this is final.
                exc = AccountDeleted()
                exc.revoke_new = True  # type: ignore[attr-defined]
                raise exc
            row = conn.execute(select(grants).where(grants.c.user_id == user_id).with_for_update()).first()
            if row is not None:
                same = (row.google_sub == info.sub) if (row.google_sub and info.sub) else (
                    row.email.lower() == info.email.lower())
                if not same:
                    exc = Refused("different_account")
                    exc.revoke_new = True  # type: ignore[attr-defined]
                    raise exc
                key = self._data_key(conn, row)
                grant_id = str(row.grant_id)
                values = {
                    "email": info.email,
                    "google_sub": info.sub or row.google_sub,
                    "scopes": scopes,
                    "status": "connected",
                    "access_ct": self._seal(key, user_id, grant_id, "access", tokens.access_token),
                    "access_expires_at": expires_at,
                    "updated_at": now,
                }
                if tokens.refresh_token:
                    values["refresh_ct"] = self._seal(key, user_id, grant_id, "refresh", tokens.refresh_token)
                conn.execute(update(grants).where(grants.c.user_id == user_id).values(**values))
                detail = "reconsent" + ("" if tokens.refresh_token else ", kept refresh token")
            else:
                grant_id, key_id = str(uuid.uuid4()), str(uuid.uuid4())
                key = crypto.new_data_key()
                try:
                    wrapped = self.keyring.wrap(key_id, key, crypto.key_aad(user_id, grant_id))
                except (KeyUnavailable, KeyIntegrityError):
                    exc = Unavailable(KMS_UNAVAILABLE)
                    exc.revoke_new = True  # type: ignore[attr-defined]
                    raise exc from None
                conn.execute(insert(data_keys).values(
                    key_id=key_id, user_id=user_id, grant_id=grant_id, wrapping=wrapped.wrapping,
                    kms_key_version=wrapped.kms_key_version, wrapped=wrapped.wrapped))
                conn.execute(insert(grants).values(
                    user_id=user_id, grant_id=grant_id, key_id=key_id, format_version=crypto.FORMAT_VERSION,
                    google_sub=info.sub or None, email=info.email, scopes=scopes, status="connected",
                    refresh_ct=(self._seal(key, user_id, grant_id, "refresh", tokens.refresh_token)
                                if tokens.refresh_token else None),
                    access_ct=self._seal(key, user_id, grant_id, "access", tokens.access_token),
                    access_expires_at=expires_at, connected_at=now, updated_at=now))
                detail = "new grant"
            _audit(conn, user_id, caller, "grant_stored", "ok", detail)
            publish_in_tx(conn, SCHEMA, user_id, ev.GmailConnected(email=info.email))
            row = conn.execute(select(grants).where(grants.c.user_id == user_id)).one()
        self.cache.invalidate(user_id)
        log.info("grant stored", extra={"detail": detail})
        return _view(row)

    def _account_sub(self, tokens: TokenResponse) -> str:
        """The Google account behind ``tokens`` ("" when Google does not say): whether a refused consent's
        revocation also ends the grant we hold."""
        try:
            return self.google.userinfo(tokens.access_token).sub
        except (GoogleUnavailable, OAuthRefused):
            return ""

    def _after_excess_revoked(self, user_id: str, caller: str, account_sub: str) -> None:
        """Revoking a refused consent ended the held grant too when both are the same Google account's:
        say so at once (needs reconnect) rather than at the next refresh."""
        if not account_sub:
            return
        with user_tx(self.engine, user_id, system=True) as conn:
            _lock_user(conn, user_id)
            row = conn.execute(select(grants.c.google_sub, grants.c.status).where(grants.c.user_id == user_id)
                               .with_for_update()).first()
            if row is None or row.google_sub != account_sub or row.status != "connected" or self._buried(conn, user_id):
                return
            self._mark_needs_reconnect(conn, user_id, caller, "revoked with a refused consent")
        self.cache.invalidate(user_id)

    def _has_grant(self, user_id: str) -> bool:
        with user_tx(self.engine, user_id) as conn:
            return conn.execute(select(grants.c.user_id).where(grants.c.user_id == user_id)).first() is not None

    def _revoke_quietly(self, tokens: TokenResponse) -> None:
        """Best effort: leave no dangling grant at Google for a connection we refused."""
        try:
            self.google.revoke(tokens.refresh_token or tokens.access_token)
        except Exception as exc:  # noqa: BLE001 - the refusal stands either way
            log.warning("could not revoke a refused grant", extra={"error": type(exc).__name__})

    def _audit_tx(self, user_id: str, caller: str, action: str, outcome: str, detail: str = "") -> None:
        with user_tx(self.engine, user_id) as conn:
            if not self._buried(conn, user_id):  # a deleted account gets no trail back
                _audit(conn, user_id, caller, action, outcome, detail)

    # -- information ----------------------------------------------------------------------------------
    def grant_info(self, user_id: str) -> GrantView:
        """The grant's view, from memory while no process has changed the grant (``token_cache``)."""
        cached: GrantView | None = self.cache.get(user_id, GRANT_VIEW)
        if cached is not None:
            return cached
        generation = self.cache.generation()
        with user_tx(self.engine, user_id) as conn:
            # A deleted account's grant may wait here for Google to confirm its revocation: it is not theirs.
            if self._buried(conn, user_id):
                view = GrantView(connected=False)
            else:
                row = conn.execute(select(grants).where(grants.c.user_id == user_id)).first()
                view = _view(row) if row is not None else GrantView(connected=False)
        self.cache.put(user_id, GRANT_VIEW, view, generation)
        return view

    # -- access tokens --------------------------------------------------------------------------------
    def get_access_token(self, user_id: str, caller: str, scopes: Iterable[str] = ()) -> IssuedToken:
        """An access token for the whole grant, or for exactly ``scopes`` (a subset of it), when the
        calling service may have that scope set (``CALLER_SCOPES``; ``ScopeNotAllowed`` otherwise).

        Served from memory while it has more than 5 minutes left (see ``token_cache``), else the
        stored one while it does, else a refreshed one. Concurrent requests for one (user, scope set)
        cause one refresh: threads of this process queue on a striped lock, processes on the grant's
        row lock, and each re-checks freshness once it holds it. Every hand-out is recorded.
        """
        wanted = requested_scopes(scopes)
        check_caller_scopes(caller, wanted)
        cache_key = " ".join(wanted)
        generation = self.cache.generation()
        hit = self.cache.get(user_id, cache_key)
        if hit is not None:
            self.audit.issued(user_id, caller, _scope_detail(wanted), hit.scopes, hit.expires_at)
            return IssuedToken(hit.access_token, hit.expires_at, hit.email, hit.scopes)
        issued = self._issue_if_fresh(user_id, caller, wanted)
        if issued is None:
            with self._locks[hash(user_id) % _LOCK_STRIPES]:
                issued = self._refresh(user_id, caller, wanted)
        else:
            self.audit.issued(user_id, caller, _scope_detail(wanted), issued.scopes, issued.expires_at)
        self.cache.put_token(user_id, cache_key, CachedToken(issued.access_token, issued.expires_at, issued.email,
                                                       issued.scopes), generation)
        return issued

    @staticmethod
    def _scope_key(row: object, wanted: tuple[str, ...]) -> str:
        """Where the token for ``wanted`` is stored: "" for the whole grant, else the scope set."""
        granted = set(row.scopes)  # type: ignore[attr-defined]
        missing = [s for s in wanted if s not in granted]
        if missing:
            raise Refused("scope_not_granted:" + ",".join(short_scope(s) for s in missing))
        return "" if not wanted or set(wanted) == granted else " ".join(wanted)

    def _issue_if_fresh(self, user_id: str, caller: str, wanted: tuple[str, ...]) -> IssuedToken | None:
        with user_tx(self.engine, user_id) as conn:
            row = conn.execute(_read_token(user_id, " ".join(wanted), subject(self.tombstone_key, user_id))).first()
            if row is None or row.buried:
                # Nothing is recorded for a user the vault holds nothing for (a deleted account stays gone,
                # even while its grant waits for Google to confirm the revocation).
                outcome: VaultError = NotConnected()
            elif row.status != "connected":
                _audit(conn, user_id, caller, "token_issued", "refused", "needs_reconnect")
                outcome = NeedsReconnect()
            else:
                try:
                    scope_key = self._scope_key(row, wanted)
                except Refused as exc:
                    _audit(conn, user_id, caller, "token_issued", "refused", exc.reason)
                    outcome = exc
                else:
                    if scope_key:
                        if row.scoped_ct is None or row.scoped_expires_at - FRESH_FOR <= _now():
                            return None
                        token = self._open(self._data_key(conn, row), row, "access", scope_key)
                        return IssuedToken(token, row.scoped_expires_at, row.email, wanted)
                    if row.access_ct is None or row.access_expires_at - FRESH_FOR <= _now():
                        return None
                    token = self._open(self._data_key(conn, row), row, "access")
                    return IssuedToken(token, row.access_expires_at, row.email, tuple(row.scopes))
        raise outcome

    def _refresh(self, user_id: str, caller: str, wanted: tuple[str, ...]) -> IssuedToken:
        failure: VaultError | None = None
        with user_tx(self.engine, user_id, system=True) as conn:
            row = conn.execute(select(grants).where(grants.c.user_id == user_id).with_for_update()).first()
            if row is None or self._buried(conn, user_id):
                raise NotConnected()
            if row.status != "connected":
                raise NeedsReconnect()
            scope_key = self._scope_key(row, wanted)
            detail = _scope_detail(wanted) if scope_key else ""
            key = self._data_key(conn, row)
            if scope_key:
                held = conn.execute(select(scoped_tokens).where(
                    scoped_tokens.c.user_id == user_id, scoped_tokens.c.scope_key == scope_key)).first()
                if held is not None and held.access_expires_at - FRESH_FOR > _now():
                    issued = IssuedToken(self._open(key, row, "access", scope_key, sealed=held.access_ct),
                                         held.access_expires_at, row.email, wanted)
                    _audit(conn, user_id, caller, "token_issued", "ok", detail, issued)
                    return issued
            elif row.access_ct is not None and row.access_expires_at - FRESH_FOR > _now():
                # Someone refreshed while we waited for the lock.
                issued = IssuedToken(self._open(key, row, "access"), row.access_expires_at, row.email,
                                     tuple(row.scopes))
                _audit(conn, user_id, caller, "token_issued", "ok", issued=issued)
                return issued
            if row.refresh_ct is None:
                failure = self._mark_needs_reconnect(conn, user_id, caller, "no refresh token")
            else:
                refresh_token = self._open(key, row, "refresh")
                try:
                    tokens = self.google.refresh(refresh_token, wanted if scope_key else ())
                    if scope_key and not set(tokens.scopes) <= set(wanted):
                        # Never hand out more than was asked for: a metadata-only token must stay one.
                        raise OAuthRefused("scope_mismatch")
                except InvalidGrant:
                    failure = self._mark_needs_reconnect(conn, user_id, caller, "invalid_grant")
                except (GoogleUnavailable, OAuthRefused) as exc:
                    reason = "google_unavailable" if isinstance(exc, GoogleUnavailable) else exc.error
                    _audit(conn, user_id, caller, "token_refreshed", "failed", f"{reason} {detail}".strip())
                    failure = (Refused("scope_not_granted:" + ",".join(short_scope(s) for s in wanted))
                               if reason == "invalid_scope" else Unavailable())
                else:
                    now = _now()
                    expires_at = now + dt.timedelta(seconds=max(tokens.expires_in, 0))
                    grant_id = str(row.grant_id)
                    sealed = self._seal(key, user_id, grant_id, _field("access", scope_key), tokens.access_token)
                    values: dict[str, object] = {"refreshed_at": now, "updated_at": now}
                    if scope_key:
                        conn.execute(pg_insert(scoped_tokens).values(
                            user_id=user_id, grant_id=grant_id, scope_key=scope_key, scopes=list(wanted),
                            access_ct=sealed, access_expires_at=expires_at, refreshed_at=now,
                        ).on_conflict_do_update(
                            index_elements=["user_id", "scope_key"],
                            set_={"grant_id": grant_id, "access_ct": sealed, "access_expires_at": expires_at,
                                  "refreshed_at": now}))
                    else:
                        values.update(access_ct=sealed, access_expires_at=expires_at)
                    if tokens.refresh_token:
                        values["refresh_ct"] = self._seal(key, user_id, grant_id, "refresh", tokens.refresh_token)
                    if scope_key and not tokens.refresh_token:
                        values = {}  # the grant row is unchanged: its other cached tokens stay valid
                    if values:
                        conn.execute(update(grants).where(grants.c.user_id == user_id).values(**values))
                    _audit(conn, user_id, caller, "token_refreshed", "ok",
                           ", ".join(x for x in (detail, "new refresh token" if tokens.refresh_token else "") if x))
                    issued = IssuedToken(tokens.access_token, expires_at, row.email,
                                         wanted if scope_key else tuple(row.scopes))
                    _audit(conn, user_id, caller, "token_issued", "ok", detail, issued)
                    log.info("access token refreshed", extra={"scoped": bool(scope_key)})
                    return issued
        # Reached only with a failure whose record has been committed.
        assert failure is not None
        if isinstance(failure, NeedsReconnect):
            self.cache.invalidate(user_id)
        raise failure

    def _mark_needs_reconnect(self, conn: Connection, user_id: str, caller: str, why: str) -> VaultError:
        conn.execute(update(grants).where(grants.c.user_id == user_id).values(
            status="needs_reconnect", access_ct=None, access_expires_at=None, updated_at=_now()))
        _audit(conn, user_id, caller, "token_refreshed", "needs_reconnect", why)
        publish_in_tx(conn, SCHEMA, user_id, ev.GmailDisconnected(reason="needs_reconnect"))
        log.info("grant needs reconnecting", extra={"reason": why})
        return NeedsReconnect()

    # -- revocation -----------------------------------------------------------------------------------
    def revoke(self, user_id: str, caller: str, reason: str) -> bool:
        """Revoke at Google, record it, then delete the grant and its key. False when nothing was held.

        A deleted account holds nothing as far as callers can tell: its grant belongs to the deletion's
        revocation (``revocations``), which purges it once Google has confirmed.
        """
        with user_tx(self.engine, user_id) as conn:
            row = conn.execute(select(grants).where(grants.c.user_id == user_id)).first()
            if row is None or self._buried(conn, user_id):
                return False
            token = self._revocable_token(conn, row)
        try:
            fresh = self.google.revoke(token) if token else False
        except (GoogleUnavailable, OAuthRefused):
            self._audit_tx(user_id, caller, "revoked", "failed", "google_unavailable")
            raise Unavailable(GOOGLE_UNAVAILABLE) from None
        with user_tx(self.engine, user_id, system=True) as conn:
            _lock_user(conn, user_id)
            if self._buried(conn, user_id):
                # Deleted meanwhile: the deletion's purge removes the grant, and writes no trail or event.
                return True
            self._record_and_delete(conn, user_id, caller, str(row.grant_id), fresh, reason)
            if reason == "user_disconnected":
                publish_in_tx(conn, SCHEMA, user_id, ev.GmailDisconnected(reason="user_disconnected"))
        self.cache.invalidate(user_id)
        return True

    def _revocable_token(self, conn: Connection, row: object) -> str | None:
        key = self._data_key(conn, row)
        if row.refresh_ct is not None:  # type: ignore[attr-defined]
            return self._open(key, row, "refresh")
        if row.access_ct is not None:  # type: ignore[attr-defined]
            return self._open(key, row, "access")
        return None

    def _record_and_delete(self, conn: Connection, user_id: str, caller: str, grant_id: str, fresh: bool,
                           reason: str) -> None:
        # The revocation is recorded before the encrypted row goes, in the same transaction.
        _audit(conn, user_id, caller, "revoked", "ok", f"{reason}; " + ("revoked" if fresh else "already revoked"))
        gone = conn.execute(delete(grants).where(grants.c.user_id == user_id, grants.c.grant_id == grant_id)
                            .returning(grants.c.key_id)).first()
        if gone is not None:
            conn.execute(delete(data_keys).where(data_keys.c.key_id == gone.key_id))
            self.keyring.cache.forget(str(gone.key_id))
        log.info("grant revoked", extra={"already_revoked": not fresh})

    # -- account deletion -----------------------------------------------------------------------------
    def purge_for_deletion(self, conn: Connection, user_id: str, request: ev.AccountRevokeRequested) -> None:
        """``account.revoke_requested``: bury the user and queue the revocation of their grant.

        Runs inside the consumer's transaction and calls nobody: the revocation worker (``revocations``)
        asks Google, retrying until Google confirms, and only then purges and reports. A Google outage
        therefore never fails this handler, so it cannot exhaust the queue's delivery limit and send
        the request to the dead letters. Idempotent: a redelivery after the purge queues a revocation
        that finds no grant, and the worker reports ``account.purged`` again.
        """
        deletion_id = request.deletion_id
        # The grant lock orders this with a connection being stored: that either committed first (its
        # grant is what the worker revokes) or finds the tombstone once it holds the lock.
        _lock_user(conn, user_id)
        bury(conn, SCHEMA, self.tombstone_key, user_id)
        conn.execute(pg_insert(revocations).values(user_id=user_id, deletion_id=deletion_id)
                     .on_conflict_do_nothing(index_elements=["user_id"]))
        # No vault process serves the user from memory after the commit (the cache trigger fires only
        # on grant changes, and the grant stays until Google confirms); this one stops at once.
        conn.execute(notify(CHANNEL, user_id))
        self.cache.invalidate(user_id)
        # The dedupe record of this very event names the user: it goes too (the handler is idempotent).
        forget_user(conn, SCHEMA, user_id)
        log.info("account deletion: revocation queued", extra={"deletion_id": deletion_id})

    def revocation_target(self, conn: Connection, user_id: str) -> tuple[str | None, str | None]:
        """What a deletion's revocation revokes: (grant id, the token that revokes the grant at Google),
        (grant id, None) for a grant without a token, (None, None) when none is held.

        Raises ``Unavailable`` (KMS) or ``IntegrityFailure`` when the token cannot be opened.
        """
        row = conn.execute(select(grants).where(grants.c.user_id == user_id)).first()
        if row is None:
            return None, None
        return str(row.grant_id), self._revocable_token(conn, row)

    def purge_revoked(self, conn: Connection, user_id: str, grant_id: str | None, deletion_id: str) -> bool:
        """Once Google has confirmed that grant ``grant_id`` is revoked (None: none was held): purge every
        vault row of the deleted account, drop its revocation and report ``account.purged``, all in the
        caller's transaction (the revocation worker's, which holds the revocation row).

        False, with nothing changed, when the grant held now is not the one revoked (the worker then
        revokes again).
        """
        # Stop serving from memory here at once (other processes hear of it from the trigger), write out
        # this process's queued issue records so the delete below takes them, and hold the user's lock
        # until commit so that no audit flush can bring the trail back (see ``audit``).
        self.cache.invalidate(user_id)
        self.audit.flush()
        _lock_user(conn, user_id)
        held = conn.execute(select(grants.c.grant_id).where(grants.c.user_id == user_id).with_for_update()).scalar()
        if (str(held) if held is not None else None) != grant_id:
            return False
        self._purge_rows(conn, user_id)
        conn.execute(delete(revocations).where(revocations.c.user_id == user_id))
        publish_in_tx(conn, SCHEMA, user_id, ev.AccountPurged(deletion_id=deletion_id, service="token-vault"))
        log.info("vault purged for deletion", extra={"deletion_id": deletion_id})
        return True

    def _purge_rows(self, conn: Connection, user_id: str) -> None:
        key_ids = conn.execute(select(data_keys.c.key_id).where(data_keys.c.user_id == user_id)).scalars().all()
        conn.execute(delete(scoped_tokens).where(scoped_tokens.c.user_id == user_id))
        conn.execute(delete(grants).where(grants.c.user_id == user_id))
        conn.execute(delete(data_keys).where(data_keys.c.user_id == user_id))
        conn.execute(delete(audit).where(audit.c.user_id == user_id))
        conn.execute(delete(state_nonces).where(state_nonces.c.user_id == user_id))
        for key_id in key_ids:
            self.keyring.cache.forget(str(key_id))
        forget_user(conn, SCHEMA, user_id)

    # -- OAuth state nonces ---------------------------------------------------------------------------
    def consume_state_nonce(self, user_id: str, nonce: str, expires_at: dt.datetime) -> bool:
        if not nonce or len(nonce) > 128:
            return False
        digest = hashlib.sha256(nonce.encode()).hexdigest()
        with user_tx(self.engine, user_id) as conn:
            if self._buried(conn, user_id):
                return False  # no connection can start for a deleted account, and nothing is written for it
            conn.execute(delete(state_nonces).where(state_nonces.c.user_id == user_id,
                                                    state_nonces.c.expires_at < _now() - dt.timedelta(hours=1)))
            fresh = conn.execute(
                pg_insert(state_nonces).values(nonce_hash=digest, user_id=user_id, expires_at=expires_at)
                .on_conflict_do_nothing(index_elements=["nonce_hash"]).returning(state_nonces.c.nonce_hash)
            ).first()
        return fresh is not None

    # -- export ---------------------------------------------------------------------------------------
    def export(self, user_id: str) -> Iterator[tuple[str, dict]]:
        # This process's queued issue records first; other processes write theirs within ~100 ms.
        self.audit.flush()
        with user_tx(self.engine, user_id) as conn:
            if self._buried(conn, user_id):
                yield "gmail_connection", {"connected": False}  # what remains until Google confirms is not theirs
                return
            row = conn.execute(select(grants).where(grants.c.user_id == user_id)).first()
            if row is None:
                yield "gmail_connection", {"connected": False}
            else:
                yield "gmail_connection", {
                    "connected": True,
                    "email": row.email,
                    "scopes": list(row.scopes),
                    "status": row.status,
                    "connected_at": _iso(row.connected_at),
                    "refreshed_at": _iso(row.refreshed_at),
                }
            result = conn.execution_options(yield_per=500).execute(
                select(audit.c.at, audit.c.caller, audit.c.action, audit.c.outcome, audit.c.detail, audit.c.scopes,
                       audit.c.expires_at)
                .where(audit.c.user_id == user_id).order_by(audit.c.at, audit.c.id))
            for entry in result:
                record = {"at": _iso(entry.at), "caller": entry.caller, "action": entry.action,
                          "outcome": entry.outcome, "detail": entry.detail}
                if entry.scopes is not None:  # a token issued: its scopes and expiry
                    record.update(scopes=list(entry.scopes), expires_at=_iso(entry.expires_at))
                yield "vault_audit", record

    # -- re-wrap --------------------------------------------------------------------------------------
    def rewrap(self, batch: int = 200) -> dict[str, int]:
        """Re-wrap every data key under the current KMS key version (and local-wrapped keys into KMS).

        Safe while the vault serves: the data keys themselves do not change, only their wrapping, and
        each row is updated only if nobody re-wrapped it meanwhile.
        """
        kms = self.keyring.kms
        report = {"seen": 0, "rewrapped": 0, "current": 0, "failed": 0}
        if kms is None:
            return report
        primary = kms.primary_version()
        last = "00000000-0000-0000-0000-000000000000"
        while True:
            with system_tx(self.engine) as conn:
                rows = conn.execute(select(data_keys).where(data_keys.c.key_id > last)
                                    .order_by(data_keys.c.key_id).limit(batch)).all()
            if not rows:
                return report
            for row in rows:
                last = str(row.key_id)
                report["seen"] += 1
                if row.wrapping == "kms" and row.kms_key_version == primary:
                    report["current"] += 1
                    continue
                aad = crypto.key_aad(row.user_id, str(row.grant_id))
                try:
                    key = self.keyring.unwrap_uncached(row.wrapping, bytes(row.wrapped), aad)
                    wrapped = kms.wrap(key, aad)
                except (KeyUnavailable, KeyIntegrityError) as exc:
                    log.warning("data key not re-wrapped", extra={"key_id": last, "error": type(exc).__name__})
                    report["failed"] += 1
                    continue
                with system_tx(self.engine) as conn:
                    done = conn.execute(update(data_keys).where(
                        data_keys.c.key_id == row.key_id, data_keys.c.wrapped == row.wrapped).values(
                        wrapping=wrapped.wrapping, kms_key_version=wrapped.kms_key_version,
                        wrapped=wrapped.wrapped, rewrapped_at=_now())).rowcount
                report["rewrapped" if done else "current"] += 1


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None
