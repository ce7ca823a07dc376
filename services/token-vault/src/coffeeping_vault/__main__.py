"""Entry point: ``coffeeping-token-vault`` (or ``python -m coffeeping_vault``).

``python -m coffeeping_vault rewrap`` re-wraps every data key under the current KMS key version (and
moves locally wrapped keys to KMS) while the vault keeps serving.
"""

from __future__ import annotations

import json
import sys

from coffeeping.common.config import load_or_exit
from coffeeping.common.db import make_engine
from coffeeping.common.logging import configure_logging
from coffeeping.common.rpc import serve
from coffeeping.common.runtime import messaging_workers, run_until_signalled
from coffeeping.vault.v1 import vault_pb2_grpc
from coffeeping_vault import SERVICE
from coffeeping_vault.audit import AuditWriter
from coffeeping_vault.config import Settings
from coffeeping_vault.consumers import make_handler
from coffeeping_vault.google_oauth import GoogleOAuth
from coffeeping_vault.kms import CloudKmsWrapper, DataKeyCache, Keyring, LocalWrapper
from coffeeping_vault.revocations import RevocationWorker
from coffeeping_vault.servicer import POLICY, TokenVaultServicer
from coffeeping_vault.services import FRESH_FOR, SCHEMA, Vault
from coffeeping_vault.token_cache import TokenCache


def build_vault(settings: Settings) -> Vault:
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size, application_name=SERVICE)
    kms = (CloudKmsWrapper(settings.kms_key_name, settings.kms_endpoint, settings.kms_timeout_s)
           if settings.kms_key_name else None)
    local = LocalWrapper(settings.local_key) if settings.local_key is not None else None
    keyring = Keyring(kms, local, DataKeyCache(settings.data_key_cache_ttl_s, settings.data_key_cache_size))
    google = GoogleOAuth(settings.google_client_id, settings.google_client_secret, settings.google_token_url,
                         settings.google_revoke_url, settings.google_userinfo_url,
                         timeout_s=settings.google_timeout_s, attempts=settings.google_attempts)
    cache = TokenCache(engine.url.set(drivername="postgresql").render_as_string(hide_password=False), FRESH_FOR,
                       max_age_s=settings.token_cache_max_age_s, size=settings.token_cache_size)
    audit = AuditWriter(engine, interval_s=settings.audit_flush_s, retention_days=settings.access_log_retention_days)
    return Vault(engine, keyring, google, cache, audit, tombstone_key=settings.tombstone_key)


def main() -> None:
    settings = load_or_exit(Settings)
    configure_logging(SERVICE, settings.log_level)
    vault = build_vault(settings)
    if sys.argv[1:2] == ["rewrap"]:
        print(json.dumps(vault.rewrap()))
        return
    messaging = messaging_workers(settings, SERVICE, vault.engine, SCHEMA, make_handler(vault))
    server = serve(
        SERVICE,
        [(vault_pb2_grpc.add_TokenVaultServicer_to_server, TokenVaultServicer(vault),
          "coffeeping.vault.v1.TokenVault")],
        POLICY,
        settings.grpc_port,
        settings.for_service(SERVICE),
        grace=settings.shutdown_grace_s,
        max_workers=settings.grpc_workers,
    )
    revocations = RevocationWorker(vault, retry_cap_s=settings.revoke_retry_cap_s)
    # The audit writer's last flush runs after the server has drained (workers stop after it).
    run_until_signalled(server, workers=[*messaging, ("revocations", revocations.run), ("token-cache", vault.cache.run),
                                         ("audit-writer", vault.audit.run)],
                        unready=messaging.unready, check_every_s=settings.health_check_s)


if __name__ == "__main__":
    main()
