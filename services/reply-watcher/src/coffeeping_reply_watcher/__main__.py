"""Entry point: ``coffeeping-reply-watcher`` (or ``python -m coffeeping_reply_watcher``)."""

from __future__ import annotations

from coffeeping.common.access_log import AccessLog
from coffeeping.common.config import load_or_exit
from coffeeping.common.db import make_engine
from coffeeping.common.gmail import VaultTokenSource
from coffeeping.common.logging import configure_logging
from coffeeping.common.rpc import channel, serve
from coffeeping.common.runtime import messaging_workers, run_until_signalled
from coffeeping.vault.v1 import vault_pb2_grpc
from coffeeping.watcher.v1 import watcher_pb2_grpc
from coffeeping_reply_watcher import SERVICE
from coffeeping_reply_watcher.config import Settings
from coffeeping_reply_watcher.consumers import make_handler
from coffeeping_reply_watcher.poller import Poller
from coffeeping_reply_watcher.servicer import POLICY, ReplyWatcherServicer
from coffeeping_reply_watcher.services import SCHEMA


def main() -> None:
    settings = load_or_exit(Settings)
    configure_logging(SERVICE, settings.log_level)
    tls = settings.for_service(SERVICE)
    # Poll workers, the consumer, the relay, the access log's writer and gRPC calls each hold a connection
    # at times.
    engine = make_engine(settings.database_url, pool_size=settings.concurrency + 5, application_name=SERVICE)
    tokens = VaultTokenSource(vault_pb2_grpc.TokenVaultStub(channel(settings.vault_addr, tls)))
    access_log = AccessLog(engine, SCHEMA, settings.tombstone_key, retention_days=settings.access_log_retention_days)
    poller = Poller(engine, tokens, settings.gmail_api_endpoint, interval_s=settings.poll_interval_s,
                    concurrency=settings.concurrency, takeover_grace_s=settings.takeover_grace_s,
                    max_backoff_s=settings.max_backoff_s, push_topic=settings.gmail_push_topic or None,
                    fallback_interval_s=settings.fallback_interval_s, tombstone_key=settings.tombstone_key,
                    access_log=access_log if settings.gmail_access_log else None)
    # The relay wakes on each commit's notification (a detection goes out at once); looking for rows on
    # its own every 5 s rather than 5 times a second is most of what an idle watcher saves.
    messaging = messaging_workers(settings, SERVICE, engine, SCHEMA,
                                  make_handler(settings.tombstone_key, tokens, poller.wake.set), relay_poll_s=5.0)
    server = serve(
        SERVICE,
        [(watcher_pb2_grpc.add_ReplyWatcherServicer_to_server, ReplyWatcherServicer(engine, poller.wake.set),
          "coffeeping.watcher.v1.ReplyWatcher")],
        POLICY,
        settings.grpc_port,
        tls,
        grace=settings.shutdown_grace_s,
    )

    workers = [*messaging, ("poller", access_log.flushed_after(poller.run)), ("access-log", access_log.run)]
    run_until_signalled(server, workers, unready=messaging.unready, check_every_s=settings.health_check_s)


if __name__ == "__main__":
    main()
