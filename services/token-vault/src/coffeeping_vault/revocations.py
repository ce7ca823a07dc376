"""Account deletions' revocations at Google, retried until Google confirms them.

``account.revoke_requested`` only buries the user and queues a row in ``vault.revocations`` (see
``Vault.purge_for_deletion``); this worker does the rest. For each due row it revokes the grant at
Google (200 = revoked, 400 ``invalid_token`` = already revoked: both confirm it) and then purges every
vault row of the user, drops the revocation and reports ``account.purged``. The grant is never purged
before Google has confirmed. A failure (Google or KMS unavailable, Google refusing) is recorded as a
short code and retried after ``min(2**attempts, retry_cap_s)`` seconds, for as long as it takes.

One attempt is one transaction in the user's scope that holds the revocation row (``FOR UPDATE SKIP
LOCKED``: no two processes attempt the same revocation) from the claim to the purge or the recorded
failure. A process that dies mid-attempt therefore leaves nothing half done, and the row is due again
at once. Log lines name the deletion, never the user.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from sqlalchemy import Connection, func, select, update

from coffeeping.common.db import system_tx, user_tx
from coffeeping_vault import metrics
from coffeeping_vault.google_oauth import GoogleUnavailable, OAuthRefused
from coffeeping_vault.models import revocations
from coffeeping_vault.services import IntegrityFailure, Unavailable, Vault

log = logging.getLogger(__name__)


class NotConfirmed(Exception):
    """This attempt did not get Google's confirmation; ``code`` is short and names no user or token."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class RevocationWorker:
    def __init__(self, vault: Vault, retry_cap_s: float = 300.0, poll_s: float = 0.5, batch: int = 20) -> None:
        self.vault = vault
        self.retry_cap_s = retry_cap_s
        self.poll_s = poll_s
        self.batch = batch
        metrics.watch_revocations(vault.engine)

    def run(self, stop: threading.Event) -> None:
        """Every ``poll_s``, work through the due revocations until ``stop``."""
        while not stop.wait(self.poll_s):
            try:
                while self.run_once(stop) and not stop.is_set():
                    pass
            except Exception as exc:  # noqa: BLE001 - the database is away: the rows wait for the next round
                log.warning("due revocations not read; will retry", extra={"error": type(exc).__name__})
                stop.wait(1.0)

    def run_once(self, stop: threading.Event | None = None) -> int:
        """One attempt at each due revocation (up to ``batch``); returns how many were attempted."""
        attempted = 0
        for user_id in self._due():
            if stop is not None and stop.is_set():
                break
            attempted += self._attempt(user_id)
        return attempted

    def _due(self) -> list[str]:
        with system_tx(self.vault.engine) as conn:
            return list(conn.execute(select(revocations.c.user_id).where(revocations.c.not_before <= func.now())
                                     .order_by(revocations.c.not_before).limit(self.batch)).scalars())

    def _attempt(self, user_id: str) -> bool:
        """False when another process holds the revocation, it is done, or the attempt broke down."""
        claim = None
        try:
            with user_tx(self.vault.engine, user_id, system=True) as conn:
                claim = conn.execute(select(revocations).where(
                    revocations.c.user_id == user_id, revocations.c.not_before <= func.now(),
                ).with_for_update(skip_locked=True)).first()
                if claim is None:
                    return False
                try:
                    grant_id = self._revoke_at_google(conn, claim)
                    if self.vault.purge_revoked(conn, user_id, grant_id, claim.deletion_id):
                        return True
                    failure = "grant_changed"  # not expected (the tombstone stops new grants): revoke again
                except NotConfirmed as exc:
                    failure = exc.code
                self._retry_later(conn, claim, failure)
            return True
        except Exception as exc:  # noqa: BLE001 - rolled back (e.g. the database went away): back off in a new one
            log.warning("revocation attempt failed", extra={
                "deletion_id": claim.deletion_id if claim is not None else None, "error": type(exc).__name__})
            if claim is not None:
                with system_tx(self.vault.engine) as conn:
                    self._retry_later(conn, claim, "internal_error")
            return False

    def _revoke_at_google(self, conn: Connection, claim: Any) -> str | None:
        """Revoke the held grant; its id once Google confirms (None when none was held)."""
        try:
            grant_id, token = self.vault.revocation_target(conn, claim.user_id)
        except Unavailable as exc:  # KMS could not unwrap the grant's data key
            raise NotConfirmed(exc.reason) from None
        except IntegrityFailure:
            # Retried like any failure: the grant is never dropped without Google's word (an operator
            # must look; the log names the deletion).
            log.error("revocation token could not be decrypted", extra={"deletion_id": claim.deletion_id})
            raise NotConfirmed("integrity") from None
        if token is None:
            return grant_id  # nothing to revoke with (never granted tokens, or they were dropped)
        try:
            fresh = self.vault.google.revoke(token)
        except GoogleUnavailable:
            raise NotConfirmed("google_unavailable") from None
        except OAuthRefused as exc:
            raise NotConfirmed(exc.error[:64]) from None
        log.info("grant revoked for deletion", extra={"deletion_id": claim.deletion_id, "already_revoked": not fresh})
        return grant_id

    def _retry_later(self, conn: Connection, claim: Any, code: str) -> None:
        attempts = claim.attempts + 1
        delay_s = min(2.0 ** min(attempts, 32), self.retry_cap_s)  # retried forever: no float overflow
        conn.execute(update(revocations).where(revocations.c.user_id == claim.user_id).values(
            attempts=attempts, last_error=code, not_before=func.now() + dt.timedelta(seconds=delay_s)))
        log.warning("revocation not confirmed; will retry", extra={
            "deletion_id": claim.deletion_id, "error": code, "attempts": attempts, "retry_in_s": delay_s})
