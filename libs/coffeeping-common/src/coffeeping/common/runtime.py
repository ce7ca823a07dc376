"""The shape every service's entry point shares: settings, logging, a gRPC server, background
workers, and an orderly drain on SIGTERM (health NOT_SERVING, ``server.stop(grace)``, then the
workers finish their current item)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import Engine

from coffeeping.common.config import amqp_url, db_url, integer, number, setting
from coffeeping.common.messaging import Consumer, OutboxRelay, consumed_by, dead_letter_janitor
from coffeeping.common.messaging.consumer import Handler
from coffeeping.common.rpc import RunningServer, TlsSettings, shutdown_event
from coffeeping.common.tombstones import TombstoneSettings

log = logging.getLogger(__name__)

Worker = Callable[[threading.Event], None]


@dataclass(frozen=True)
class ServiceSettings(TlsSettings, TombstoneSettings):
    database_url: str = setting("DATABASE_URL", db_url)
    rabbitmq_url: str = setting("RABBITMQ_URL", amqp_url, default="amqp://guest:guest@127.0.0.1:5672//")
    messaging_prefix: str = setting("MESSAGING_PREFIX", default="coffeeping")
    grpc_port: int = setting("GRPC_PORT", integer(0, 65535))
    log_level: str = setting("LOG_LEVEL", default="INFO")
    shutdown_grace_s: int = setting("SHUTDOWN_GRACE_S", integer(0, 300), default=10)
    # How often each service drops deleted accounts' messages from its dead-letter queue.
    dead_letter_sweep_s: float = setting("DEAD_LETTER_SWEEP_S", number(0.5), default=60.0)


def messaging_workers(settings: ServiceSettings, service: str, engine: Engine, schema: str,
                      handler: Handler, relay_poll_s: float = 0.2) -> list[tuple[str, Worker]]:
    """The messaging workers every backend runs: its outbox relay, its consumer of the events the
    registry says it consumes (acting only on their registered producers' messages, dropping buried
    users' events) and the janitor that keeps its dead-letter queue free of buried users.

    The relay wakes on each commit's notification; ``relay_poll_s`` is how often it also looks for rows
    on its own (and its only pace while it cannot LISTEN)."""
    relay = OutboxRelay(engine, schema, settings.rabbitmq_url, settings.messaging_prefix)
    consumer = Consumer(settings.rabbitmq_url, settings.messaging_prefix, service, consumed_by(service), engine,
                        schema, handler, tombstone_key=settings.tombstone_key)
    janitor = dead_letter_janitor(settings.rabbitmq_url, settings.messaging_prefix, service, engine, schema,
                                  settings.tombstone_key, settings.dead_letter_sweep_s)
    def relay_worker(stop: threading.Event) -> None:
        relay.run_forever(stop, interval=relay_poll_s)

    return [("outbox-relay", relay_worker), ("consumer", consumer.run), ("dead-letter-janitor", janitor)]


def run_until_signalled(server: RunningServer, workers: Iterable[tuple[str, Worker]] = ()) -> None:
    """Run ``workers`` in threads next to ``server`` until SIGTERM/SIGINT, then drain both."""
    done = shutdown_event()
    stop_workers = threading.Event()
    threads = []
    for name, worker in workers:
        thread = threading.Thread(target=_guarded(name, worker), args=(stop_workers,), name=name, daemon=True)
        thread.start()
        threads.append(thread)
    done.wait()
    server.stop()
    stop_workers.set()
    for thread in threads:
        thread.join(timeout=server.grace)
    log.info("stopped")


def _guarded(name: str, worker: Worker) -> Worker:
    def run(stop: threading.Event) -> None:
        try:
            worker(stop)
        except Exception:
            log.exception("worker crashed", extra={"worker": name})
            raise

    return run
