"""The token-vault gRPC API.

Callers are authorised by service identity (the mTLS certificate), each for the methods its code calls
and nothing more: the gateway stores, describes and revokes a grant and consumes OAuth state nonces;
the mailer and the reply watcher obtain access tokens, each for its own scope sets only
(``services.CALLER_SCOPES``); accounts exports; the gateway lists the token issues of the user's access
log. No method returns a refresh token.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from coffeeping.common.access_log import Filter, Page, answered
from coffeeping.common.rpc import GATEWAY, Allow, allow, current_caller, current_user
from coffeeping.types.v1 import access_pb2, export_pb2
from coffeeping.vault.v1 import vault_pb2, vault_pb2_grpc
from coffeeping_vault import access
from coffeeping_vault.services import (
    ACCOUNTS,
    GOOGLE_UNAVAILABLE,
    KMS_UNAVAILABLE,
    MAILER,
    WATCHER,
    GrantView,
    IntegrityFailure,
    NeedsReconnect,
    NotConnected,
    Refused,
    ScopeNotAllowed,
    Unavailable,
    Vault,
    VaultError,
)

log = logging.getLogger(__name__)

_SERVICE = "/coffeeping.vault.v1.TokenVault/"
# Who calls what (grep the callers before widening): the gateway's Gmail views and /v1/me; the mailer's
# and the watcher's VaultTokenSource; accounts' export fan-in. Accounts reaches a deleted user's grant
# through the ``account.revoke_requested`` event, never through RevokeGrant.
POLICY: dict[str, Allow] = {
    _SERVICE + "CompleteConnection": allow(GATEWAY),
    _SERVICE + "ConsumeStateNonce": allow(GATEWAY),
    _SERVICE + "GetAccessToken": allow(MAILER, WATCHER, user_from=[MAILER, WATCHER]),
    _SERVICE + "GetGrantInfo": allow(GATEWAY),
    _SERVICE + "RevokeGrant": allow(GATEWAY),
    _SERVICE + "ExportData": allow(ACCOUNTS, user_from=[ACCOUNTS]),
    # The signed-in user's access log (the token issues of their grant).
    _SERVICE + "ListAccessEntries": allow(GATEWAY),
    _SERVICE + "SummarizeAccess": allow(GATEWAY),
    # Liveness only (no user, no data): every service may ask.
    _SERVICE + "Ping": allow(GATEWAY, ACCOUNTS, MAILER, WATCHER, "token-vault", needs_user=False),
}
_REVOKE_REASONS = {"user_disconnected", "account_deleted"}
# Which dependency is down, for the caller's logs and retry decision (nothing was changed either way).
_UNAVAILABLE = {
    KMS_UNAVAILABLE: "kms_unavailable: the key service did not answer; nothing was changed, try again later",
    GOOGLE_UNAVAILABLE: "google_unavailable: Google did not answer; try again later",
}


def _ts(value: dt.datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _grant_info(view: GrantView) -> vault_pb2.GrantInfo:
    if not view.connected:
        return vault_pb2.GrantInfo(connected=False)
    return vault_pb2.GrantInfo(
        connected=True,
        email=view.email,
        scopes=list(view.scopes),
        status=view.status,
        connected_at=_ts(view.connected_at),
        refreshed_at=_ts(view.refreshed_at),
        has_refresh_token=view.has_refresh_token,
    )


def _abort(context: grpc.ServicerContext, exc: VaultError) -> None:
    if isinstance(exc, ScopeNotAllowed):
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "scope set not allowed for this caller")
    if isinstance(exc, NotConnected):
        context.abort(grpc.StatusCode.NOT_FOUND, "no Gmail connection")
    if isinstance(exc, NeedsReconnect):
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "needs_reconnect")
    if isinstance(exc, Unavailable):
        context.abort(grpc.StatusCode.UNAVAILABLE, _UNAVAILABLE.get(exc.reason, "unavailable"))
    if isinstance(exc, Refused):
        code = grpc.StatusCode.FAILED_PRECONDITION if exc.precondition else grpc.StatusCode.INVALID_ARGUMENT
        context.abort(code, exc.reason)
    if isinstance(exc, IntegrityFailure):
        context.abort(grpc.StatusCode.DATA_LOSS, "the stored grant could not be decrypted")
    context.abort(grpc.StatusCode.INTERNAL, "vault error")


class TokenVaultServicer(vault_pb2_grpc.TokenVaultServicer):
    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    def Ping(self, request: export_pb2.PingRequest, context: grpc.ServicerContext) -> export_pb2.PingResponse:
        return export_pb2.PingResponse()

    def CompleteConnection(self, request: vault_pb2.CompleteConnectionRequest,
                           context: grpc.ServicerContext) -> vault_pb2.GrantInfo:
        try:
            view = self.vault.complete_connection(current_user(), current_caller(), request.code,
                                                  request.code_verifier, request.redirect_uri)
        except VaultError as exc:
            _abort(context, exc)
        return _grant_info(view)

    def GetAccessToken(self, request: vault_pb2.GetAccessTokenRequest,
                       context: grpc.ServicerContext) -> vault_pb2.AccessToken:
        try:
            token = self.vault.get_access_token(current_user(), current_caller(), request.scopes)
        except VaultError as exc:
            _abort(context, exc)
        return vault_pb2.AccessToken(access_token=token.access_token, expires_at=_ts(token.expires_at),
                                     email=token.email, scopes=list(token.scopes))

    def GetGrantInfo(self, request: vault_pb2.GetGrantInfoRequest,
                     context: grpc.ServicerContext) -> vault_pb2.GrantInfo:
        return _grant_info(self.vault.grant_info(current_user()))

    def RevokeGrant(self, request: vault_pb2.RevokeGrantRequest,
                    context: grpc.ServicerContext) -> vault_pb2.RevokeGrantResponse:
        reason = request.reason or "user_disconnected"
        if reason not in _REVOKE_REASONS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "reason must be user_disconnected or account_deleted")
        try:
            revoked = self.vault.revoke(current_user(), current_caller(), reason)
        except VaultError as exc:
            _abort(context, exc)
        return vault_pb2.RevokeGrantResponse(revoked=revoked)

    def ExportData(self, request: export_pb2.ExportRequest,
                   context: grpc.ServicerContext) -> Iterator[export_pb2.ExportRecord]:
        for section, record in self.vault.export(current_user()):
            yield export_pb2.ExportRecord(section=section, json=json.dumps(record, ensure_ascii=False))

    def ConsumeStateNonce(self, request: vault_pb2.ConsumeStateNonceRequest,
                          context: grpc.ServicerContext) -> vault_pb2.ConsumeStateNonceResponse:
        if not request.HasField("expires_at"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expires_at is required")
        expires_at = request.expires_at.ToDatetime(tzinfo=dt.UTC)
        return vault_pb2.ConsumeStateNonceResponse(
            fresh=self.vault.consume_state_nonce(current_user(), request.nonce, expires_at))

    def ListAccessEntries(self, request: access_pb2.ListAccessEntriesRequest,
                          context: grpc.ServicerContext) -> access_pb2.ListAccessEntriesResponse:
        with answered(context):
            return access.list_entries(self.vault, current_user(), Page.of(request))

    def SummarizeAccess(self, request: access_pb2.SummarizeAccessRequest,
                        context: grpc.ServicerContext) -> access_pb2.SummarizeAccessResponse:
        with answered(context):
            return access.summarize(self.vault, current_user(), Filter.of(request.filter))
