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
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, delete, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from coffeeping.common.db import system_tx, user_tx
from coffeeping.common.messaging import forget_user, publish_in_tx
from coffeeping_vault import crypto
from coffeeping_vault.google_oauth import GoogleOAuth, GoogleUnavailable, InvalidGrant, OAuthRefused, TokenResponse
from coffeeping_vault.kms import KeyIntegrityError, Keyring, KeyUnavailable
from coffeeping_vault.models import audit, data_keys, grants, state_nonces

log = logging.getLogger(__name__)

SCHEMA = "vault"
SCOPE_BASE = "https://www.googleapis.com/auth/"
REQUIRED_SCOPES = tuple(SCOPE_BASE + s for s in ("gmail.send", "gmail.compose", "gmail.metadata", "userinfo.email"))
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
    reason = "unavailable"


class Refused(VaultError):
    """The connection was refused: ``missing_scope:...``, ``different_account``, ``exchange_failed``."""

    def __init__(self, reason: str, precondition: bool = True) -> None:
        super().__init__(reason)
        self.precondition = precondition


class IntegrityFailure(VaultError):
    reason = "integrity"


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


_FAST_PATH = text(
    """
    WITH g AS (
        SELECT user_id, grant_id, key_id, email, scopes, status, access_ct, access_expires_at,
               status = 'connected' AND access_ct IS NOT NULL
               AND access_expires_at > now() + CAST(:fresh_for AS interval) AS fresh
        FROM vault.grants WHERE user_id = :u
    ), a AS (
        INSERT INTO vault.audit (user_id, caller, action, outcome)
        SELECT user_id, :caller, 'token_issued', 'ok' FROM g WHERE fresh
        RETURNING 1
    )
    SELECT g.*, EXISTS (SELECT 1 FROM a) AS audited, set_config('synchronous_commit', 'off', true) AS sc FROM g
    """
)


def _audit(conn: Connection, user_id: str, caller: str, action: str, outcome: str, detail: str = "") -> None:
    conn.execute(insert(audit).values(user_id=user_id, caller=caller or "unknown", action=action, outcome=outcome,
                                      detail=detail[:200]))


class Vault:
    def __init__(self, engine: Engine, keyring: Keyring, google: GoogleOAuth) -> None:
        self.engine = engine
        self.keyring = keyring
        self.google = google
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

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
            raise Unavailable() from None
        except KeyIntegrityError:
            raise IntegrityFailure() from None

    def _open(self, key: bytes, row: object, which: str) -> str:
        sealed = bytes(getattr(row, f"{which}_ct"))
        aad = crypto.token_aad(row.user_id, str(row.grant_id), which, crypto.sealed_version(sealed))  # type: ignore[attr-defined]
        try:
            return crypto.open_sealed(key, sealed, aad).decode()
        except crypto.DecryptionFailed:
            log.error("grant ciphertext failed to authenticate", extra={"user_id": row.user_id, "field": which})  # type: ignore[attr-defined]
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
        try:
            tokens = self.google.exchange_code(code, verifier, redirect_uri)
        except GoogleUnavailable:
            self._audit_tx(user_id, caller, "connect", "failed", "google_unavailable")
            raise Unavailable() from None
        except (InvalidGrant, OAuthRefused):
            self._audit_tx(user_id, caller, "connect", "failed", "exchange_failed")
            raise Refused("exchange_failed", precondition=False) from None
        try:
            return self._store_connection(user_id, caller, tokens)
        except (Refused, Unavailable, IntegrityFailure) as exc:
            self._audit_tx(user_id, caller, "connect", "failed", exc.reason)
            if getattr(exc, "revoke_new", False):
                self._revoke_quietly(tokens)
            raise

    def _store_connection(self, user_id: str, caller: str, tokens: TokenResponse) -> GrantView:
        granted = set(tokens.scopes)
        missing = [s for s in REQUIRED_SCOPES if s not in granted]
        if missing:
            exc: VaultError = Refused("missing_scope:" + ",".join(short_scope(s) for s in missing))
            exc.revoke_new = not self._has_grant(user_id)  # type: ignore[attr-defined]
            raise exc
        try:
            info = self.google.userinfo(tokens.access_token)
        except GoogleUnavailable:
            raise Unavailable() from None
        except OAuthRefused:
            raise Refused("exchange_failed", precondition=False) from None
        now = _now()
        expires_at = now + dt.timedelta(seconds=max(tokens.expires_in, 0))
        scopes = sorted(granted)
        with user_tx(self.engine, user_id, system=True) as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"vault.grant:{user_id}"})
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
                    exc = Unavailable()
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
            publish_in_tx(conn, SCHEMA, "gmail.connected", user_id, {"email": info.email})
            row = conn.execute(select(grants).where(grants.c.user_id == user_id)).one()
        log.info("grant stored", extra={"user_id": user_id, "detail": detail})
        return _view(row)

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
            _audit(conn, user_id, caller, action, outcome, detail)

    # -- information ----------------------------------------------------------------------------------
    def grant_info(self, user_id: str) -> GrantView:
        with user_tx(self.engine, user_id) as conn:
            row = conn.execute(select(grants).where(grants.c.user_id == user_id)).first()
        return _view(row) if row is not None else GrantView(connected=False)

    # -- access tokens --------------------------------------------------------------------------------
    def get_access_token(self, user_id: str, caller: str) -> IssuedToken:
        """The stored access token while it has more than 5 minutes left, else a refreshed one.

        Concurrent requests for one user cause one refresh: threads of this process queue on a
        striped lock, processes on the grant's row lock, and each re-checks freshness once it holds it.
        """
        issued = self._issue_if_fresh(user_id, caller)
        if issued is not None:
            return issued
        with self._locks[hash(user_id) % _LOCK_STRIPES]:
            return self._refresh(user_id, caller)

    def _issue_if_fresh(self, user_id: str, caller: str) -> IssuedToken | None:
        with user_tx(self.engine, user_id) as conn:
            # One round trip reads the grant and, when its token is fresh, records the issue. A failure
            # to open the ciphertext below rolls the record back. An issue record lost in a crash is
            # acceptable; waiting for a disk flush per token request is not (synchronous_commit off).
            row = conn.execute(_FAST_PATH, {"u": user_id, "caller": caller or "unknown",
                                            "fresh_for": f"{int(FRESH_FOR.total_seconds())} seconds"}).first()
            if row is None:
                # Nothing is recorded for a user the vault holds nothing for (a deleted account stays gone).
                outcome: VaultError = NotConnected()
            elif row.status != "connected":
                _audit(conn, user_id, caller, "token_issued", "refused", "needs_reconnect")
                outcome = NeedsReconnect()
            elif not row.audited:
                return None
            else:
                token = self._open(self._data_key(conn, row), row, "access")
                return IssuedToken(token, row.access_expires_at, row.email, tuple(row.scopes))
        raise outcome

    def _refresh(self, user_id: str, caller: str) -> IssuedToken:
        failure: VaultError | None = None
        with user_tx(self.engine, user_id, system=True) as conn:
            row = conn.execute(select(grants).where(grants.c.user_id == user_id).with_for_update()).first()
            if row is None:
                raise NotConnected()
            if row.status != "connected":
                raise NeedsReconnect()
            key = self._data_key(conn, row)
            if row.access_ct is not None and row.access_expires_at - FRESH_FOR > _now():
                # Someone refreshed while we waited for the lock.
                _audit(conn, user_id, caller, "token_issued", "ok")
                return IssuedToken(self._open(key, row, "access"), row.access_expires_at, row.email,
                                   tuple(row.scopes))
            if row.refresh_ct is None:
                failure = self._mark_needs_reconnect(conn, user_id, caller, "no refresh token")
            else:
                refresh_token = self._open(key, row, "refresh")
                try:
                    tokens = self.google.refresh(refresh_token)
                except InvalidGrant:
                    failure = self._mark_needs_reconnect(conn, user_id, caller, "invalid_grant")
                except (GoogleUnavailable, OAuthRefused) as exc:
                    _audit(conn, user_id, caller, "token_refreshed", "failed",
                           "google_unavailable" if isinstance(exc, GoogleUnavailable) else exc.error)
                    failure = Unavailable()
                else:
                    now = _now()
                    expires_at = now + dt.timedelta(seconds=max(tokens.expires_in, 0))
                    grant_id = str(row.grant_id)
                    values = {
                        "access_ct": self._seal(key, user_id, grant_id, "access", tokens.access_token),
                        "access_expires_at": expires_at,
                        "refreshed_at": now,
                        "updated_at": now,
                    }
                    if tokens.refresh_token:
                        values["refresh_ct"] = self._seal(key, user_id, grant_id, "refresh", tokens.refresh_token)
                    conn.execute(update(grants).where(grants.c.user_id == user_id).values(**values))
                    _audit(conn, user_id, caller, "token_refreshed", "ok",
                           "new refresh token" if tokens.refresh_token else "")
                    _audit(conn, user_id, caller, "token_issued", "ok")
                    log.info("access token refreshed", extra={"user_id": user_id})
                    return IssuedToken(tokens.access_token, expires_at, row.email, tuple(row.scopes))
        # Reached only with a failure whose record has been committed.
        assert failure is not None
        raise failure

    def _mark_needs_reconnect(self, conn: Connection, user_id: str, caller: str, why: str) -> VaultError:
        conn.execute(update(grants).where(grants.c.user_id == user_id).values(
            status="needs_reconnect", access_ct=None, access_expires_at=None, updated_at=_now()))
        _audit(conn, user_id, caller, "token_refreshed", "needs_reconnect", why)
        publish_in_tx(conn, SCHEMA, "gmail.disconnected", user_id, {"reason": "needs_reconnect"})
        log.info("grant needs reconnecting", extra={"user_id": user_id, "reason": why})
        return NeedsReconnect()

    # -- revocation -----------------------------------------------------------------------------------
    def revoke(self, user_id: str, caller: str, reason: str) -> bool:
        """Revoke at Google, record it, then delete the grant and its key. False when nothing was held."""
        with user_tx(self.engine, user_id) as conn:
            row = conn.execute(select(grants).where(grants.c.user_id == user_id)).first()
            if row is None:
                return False
            token = self._revocable_token(conn, row)
        try:
            fresh = self.google.revoke(token) if token else False
        except (GoogleUnavailable, OAuthRefused):
            self._audit_tx(user_id, caller, "revoked", "failed", "google_unavailable")
            raise Unavailable() from None
        with user_tx(self.engine, user_id, system=True) as conn:
            self._record_and_delete(conn, user_id, caller, str(row.grant_id), fresh, reason)
            if reason == "user_disconnected":
                publish_in_tx(conn, SCHEMA, "gmail.disconnected", user_id, {"reason": "user_disconnected"})
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
        log.info("grant revoked", extra={"user_id": user_id, "already_revoked": not fresh})

    def purge_for_deletion(self, conn: Connection, event: dict) -> None:
        """``account.revoke_requested``: revoke at Google, purge every vault row of the user, report.

        Runs inside the consumer's transaction; idempotent (a redelivery finds nothing to revoke).
        """
        user_id = event["user_id"]
        deletion_id = str(event.get("payload", {}).get("deletion_id", ""))
        row = conn.execute(select(grants).where(grants.c.user_id == user_id).with_for_update()).first()
        if row is not None:
            token = self._revocable_token(conn, row)
            if token:
                try:
                    self.google.revoke(token)
                except (GoogleUnavailable, OAuthRefused):
                    raise Unavailable() from None  # the consumer retries with backoff
        key_ids = conn.execute(select(data_keys.c.key_id).where(data_keys.c.user_id == user_id)).scalars().all()
        conn.execute(delete(grants).where(grants.c.user_id == user_id))
        conn.execute(delete(data_keys).where(data_keys.c.user_id == user_id))
        conn.execute(delete(audit).where(audit.c.user_id == user_id))
        conn.execute(delete(state_nonces).where(state_nonces.c.user_id == user_id))
        for key_id in key_ids:
            self.keyring.cache.forget(str(key_id))
        forget_user(conn, SCHEMA, user_id)
        publish_in_tx(conn, SCHEMA, "account.purged", user_id, {"deletion_id": deletion_id, "service": "token-vault"})
        log.info("vault purged for deletion", extra={"user_id": user_id, "deletion_id": deletion_id})

    # -- OAuth state nonces ---------------------------------------------------------------------------
    def consume_state_nonce(self, user_id: str, nonce: str, expires_at: dt.datetime) -> bool:
        if not nonce or len(nonce) > 128:
            return False
        digest = hashlib.sha256(nonce.encode()).hexdigest()
        with user_tx(self.engine, user_id) as conn:
            conn.execute(delete(state_nonces).where(state_nonces.c.user_id == user_id,
                                                    state_nonces.c.expires_at < _now() - dt.timedelta(hours=1)))
            fresh = conn.execute(
                pg_insert(state_nonces).values(nonce_hash=digest, user_id=user_id, expires_at=expires_at)
                .on_conflict_do_nothing(index_elements=["nonce_hash"]).returning(state_nonces.c.nonce_hash)
            ).first()
        return fresh is not None

    # -- export ---------------------------------------------------------------------------------------
    def export(self, user_id: str) -> Iterator[tuple[str, dict]]:
        with user_tx(self.engine, user_id) as conn:
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
                select(audit.c.at, audit.c.caller, audit.c.action, audit.c.outcome, audit.c.detail)
                .where(audit.c.user_id == user_id).order_by(audit.c.at, audit.c.id))
            for entry in result:
                yield "vault_audit", {"at": _iso(entry.at), "caller": entry.caller, "action": entry.action,
                                      "outcome": entry.outcome, "detail": entry.detail}

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
