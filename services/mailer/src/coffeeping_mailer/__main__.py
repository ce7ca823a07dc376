"""Entry point: ``coffeeping-mailer`` (or ``python -m coffeeping_mailer``).

Runs the gRPC API and four workers: the outbox relay, the event consumer, the scheduler and the access
log's writer.
"""

from __future__ import annotations

from coffeeping.common.access_log import AccessLog
from coffeeping.common.config import load_or_exit
from coffeeping.common.db import make_engine
from coffeeping.common.gmail import VaultTokenSource
from coffeeping.common.logging import configure_logging
from coffeeping.common.rpc import channel, serve
from coffeeping.common.runtime import messaging_workers, run_until_signalled
from coffeeping.mailer.v1 import mailer_pb2_grpc
from coffeeping.vault.v1 import vault_pb2_grpc
from coffeeping_mailer import SERVICE
from coffeeping_mailer.config import Settings
from coffeeping_mailer.consumers import make_handler
from coffeeping_mailer.gmail_api import Gmail
from coffeeping_mailer.models import SCHEMA
from coffeeping_mailer.scheduler import Scheduler
from coffeeping_mailer.servicer import POLICY, MailerServicer

CLAIMERS = 3


def main() -> None:
    settings = load_or_exit(Settings)
    configure_logging(SERVICE, settings.log_level)
    tls = settings.for_service(SERVICE)
    # The scheduler's claimers hold one long transaction each (their batch's row locks); senders only
    # take a connection for their short transactions, between Gmail calls. A fixed pool (no overflow:
    # under load, overflow connections were opened and closed for every transaction) covers them, the
    # API, the relay, the consumer and the access log's writer; with the relay's LISTEN connection, 12
    # connections by default.
    # No pre-ping (a round trip before every transaction, a sixth of a send's statements): after a
    # database restart the first error invalidates the whole pool, and every caller retries.
    engine = make_engine(settings.database_url, pool_size=max(settings.db_pool_size, CLAIMERS + 8),
                         application_name=SERVICE, pre_ping=False)
    tokens = VaultTokenSource(vault_pb2_grpc.TokenVaultStub(channel(settings.vault_addr, tls)))
    access_log = AccessLog(engine, SCHEMA, settings.tombstone_key, retention_days=settings.access_log_retention_days)
    # GMAIL_ACCESS_LOG=off (the benchmark's comparison only) records nothing; the retention sweep still runs.
    gmail = Gmail(settings.gmail_api_endpoint, tokens, access_log=access_log if settings.gmail_access_log else None)
    scheduler = Scheduler(engine, gmail, settings.tombstone_key, interval_s=settings.scheduler_interval_s,
                          workers=settings.scheduler_workers, daily_cap=settings.daily_cap,
                          max_attempts=settings.max_attempts, claimers=CLAIMERS)
    messaging = messaging_workers(settings, SERVICE, engine, SCHEMA,
                                  make_handler(gmail, settings.tombstone_key, settings.draft_cleanup_s))
    server = serve(
        SERVICE,
        [(mailer_pb2_grpc.add_MailerServicer_to_server, MailerServicer(engine, settings.tombstone_key),
          "coffeeping.mailer.v1.Mailer")],
        POLICY,
        settings.grpc_port,
        tls,
        grace=settings.shutdown_grace_s,
    )

    workers = [*messaging, ("scheduler", access_log.flushed_after(scheduler.run)), ("access-log", access_log.run)]
    run_until_signalled(server, workers, unready=messaging.unready, check_every_s=settings.health_check_s)


if __name__ == "__main__":
    main()
