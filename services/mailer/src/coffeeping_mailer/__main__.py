"""Entry point: ``coffeeping-mailer`` (or ``python -m coffeeping_mailer``).

``MAILER_ROLE`` says what this process runs (``config.Settings.role``):

- ``all`` (the default, what the local stack runs): everything below in one process;
- ``api``: the gRPC Mailer API, the outbox relay, the event consumer, the dead-letter janitor and the
  access log's writer;
- ``scheduler``: the scheduler (sends and draft clean-up), the outbox relay and the access log's writer,
  with a gRPC server on ``GRPC_PORT`` that serves health alone (the same mTLS probes work; a Mailer call
  is ``UNIMPLEMENTED``).

Any number of processes of either role can run at once: the scheduler's claimers, the draft cleaner and
the outbox relay all claim rows with ``FOR UPDATE SKIP LOCKED``, and the consumer's queue hands each
message to one of its consumers.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from coffeeping.common.access_log import AccessLog
from coffeeping.common.config import load_or_exit
from coffeeping.common.db import make_engine
from coffeeping.common.gmail import VaultTokenSource
from coffeeping.common.logging import configure_logging
from coffeeping.common.rpc import channel, serve
from coffeeping.common.runtime import (
    Worker,
    database_unready,
    messaging_workers,
    relay_worker,
    run_until_signalled,
    start_metrics,
)
from coffeeping.mailer.v1 import mailer_pb2_grpc
from coffeeping.vault.v1 import vault_pb2_grpc
from coffeeping_mailer import SERVICE
from coffeeping_mailer.config import API, SCHEDULER, Settings
from coffeeping_mailer.consumers import make_handler
from coffeeping_mailer.gmail_api import Gmail
from coffeeping_mailer.models import SCHEMA
from coffeeping_mailer.scheduler import Scheduler
from coffeeping_mailer.servicer import POLICY, MailerServicer

log = logging.getLogger("coffeeping_mailer")

CLAIMERS = 3


def main() -> None:
    settings = load_or_exit(Settings)
    configure_logging(SERVICE, settings.log_level)
    tls = settings.for_service(SERVICE)
    serves_api, schedules = settings.role != SCHEDULER, settings.role != API
    # The scheduler's claimers hold one long transaction each (their batch's row locks); senders only
    # take a connection for their short transactions, between Gmail calls. A fixed pool (no overflow:
    # under load, overflow connections were opened and closed for every transaction) covers them, the
    # API, the relay, the consumer and the access log's writer; with the relay's LISTEN connection, 12
    # connections by default (9 for the api role, which has no claimers).
    # No pre-ping (a round trip before every transaction, a sixth of a send's statements): after a
    # database restart the first error invalidates the whole pool, and every caller retries.
    engine = make_engine(settings.database_url,
                         pool_size=max(settings.db_pool_size, (CLAIMERS if schedules else 0) + 8),
                         application_name=SERVICE, pre_ping=False)
    tokens = VaultTokenSource(vault_pb2_grpc.TokenVaultStub(channel(settings.vault_addr, tls)))
    access_log = AccessLog(engine, SCHEMA, settings.tombstone_key, retention_days=settings.access_log_retention_days)
    # GMAIL_ACCESS_LOG=off (the benchmark's comparison only) records nothing; the retention sweep still runs.
    gmail = Gmail(settings.gmail_api_endpoint, tokens, access_log=access_log if settings.gmail_access_log else None)

    workers: list[tuple[str, Worker]] = []
    registrations: list[tuple[Any, Any, str]] = []
    if serves_api:
        messaging = messaging_workers(settings, SERVICE, engine, SCHEMA,
                                      make_handler(gmail, settings.tombstone_key, settings.draft_cleanup_s))
        workers += list(messaging)
        registrations.append((mailer_pb2_grpc.add_MailerServicer_to_server,
                              MailerServicer(engine, settings.tombstone_key), "coffeeping.mailer.v1.Mailer"))
        unready: Callable[[], str | None] = messaging.unready
    else:
        # The scheduler's sends write events (sequence.message_sent, ...) to the outbox in their own
        # transactions: this process relays them too, rather than waiting for an API process to. It holds
        # no consumer, so its readiness is its database's (the relay publishes whatever waits once the
        # broker is back), and its metrics have no queues of its own to watch.
        start_metrics(settings, engine, SCHEMA)
        workers.append(relay_worker(settings, engine, SCHEMA))
        unready = functools.partial(database_unready, engine)
    if schedules:
        scheduler = Scheduler(engine, gmail, settings.tombstone_key, interval_s=settings.scheduler_interval_s,
                              workers=settings.scheduler_workers, daily_cap=settings.daily_cap,
                              max_attempts=settings.max_attempts, claimers=CLAIMERS)
        workers.append(("scheduler", access_log.flushed_after(scheduler.run)))
    workers.append(("access-log", access_log.run))

    # The scheduler role serves gRPC health alone: the same mTLS exec probes work on every mailer pod.
    server = serve(SERVICE, registrations, POLICY, settings.grpc_port, tls, grace=settings.shutdown_grace_s)
    log.info("mailer started", extra={"role": settings.role, "workers": ",".join(name for name, _ in workers),
                                      "grpc_services": ",".join(name for *_, name in registrations) or "health"})
    run_until_signalled(server, workers, unready=unready, check_every_s=settings.health_check_s)


if __name__ == "__main__":
    main()
