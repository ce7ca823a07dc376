"""Idempotent declaration of the exchanges and queues one consuming service needs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import services
from ._names import (
    check_binding_key,
    check_name,
    dead_queue,
    dlx_exchange,
    events_exchange,
    service_queue,
)

DEFAULT_DELIVERY_LIMIT = 5


def _channel(connection: Any) -> Any:
    """Accept a kombu ``Connection`` (its default channel is used) or a channel."""
    default = getattr(connection, "default_channel", None)
    return default if default is not None else connection


def declare_events_exchange(connection: Any, prefix: str) -> str:
    """Declare the durable topic exchange ``<prefix>.events`` (what the relay publishes to)."""
    name = events_exchange(prefix)
    _channel(connection).exchange_declare(name, "topic", durable=True, auto_delete=False)
    return name


def declare_topology(
    connection: Any,
    prefix: str,
    service: str,
    routing_keys: Iterable[str],
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
) -> None:
    """Declare (idempotently) everything ``service`` consumes from.

    - durable topic exchange ``<prefix>.events``;
    - durable direct exchange ``<prefix>.dlx`` (shared by all services);
    - durable quorum queue ``<prefix>.<service>`` bound to the events exchange with each routing key,
      dead-lettering to ``<prefix>.dlx`` with routing key ``<service>`` and with ``x-delivery-limit``
      so the broker dead-letters a message that keeps failing;
    - durable quorum queue ``<prefix>.<service>.dead`` bound to the DLX with routing key ``<service>``.

    Redeclaring with another ``delivery_limit`` raises ``PreconditionFailed`` (the broker refuses to
    change queue arguments); bindings that are no longer wanted are not removed.
    """
    check_name(service, "service")
    keys = [check_binding_key(k) for k in routing_keys]
    if not isinstance(delivery_limit, int) or delivery_limit < 1:
        raise ValueError("delivery_limit must be a positive integer")
    channel = _channel(connection)
    events = declare_events_exchange(channel, prefix)
    dlx = dlx_exchange(prefix)
    channel.exchange_declare(dlx, "direct", durable=True, auto_delete=False)

    dead = dead_queue(prefix, service)
    channel.queue_declare(dead, durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(dead, dlx, routing_key=service)

    queue = service_queue(prefix, service)
    channel.queue_declare(
        queue,
        durable=True,
        auto_delete=False,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": dlx,
            "x-dead-letter-routing-key": service,
            "x-delivery-limit": delivery_limit,
        },
    )
    for key in keys:
        channel.queue_bind(queue, events, routing_key=key)


SERVICES = tuple(service.name for service in services.BACKENDS)


def delete_topology(amqp_url: str, prefix: str, extra_queues: Iterable[str] = ()) -> None:
    """Remove every queue and exchange under ``prefix`` that CoffeePing declares (and ``extra_queues``).

    For tests and benchmarks that used a prefix of their own on a shared broker. Missing names are
    fine: each delete runs on a fresh channel, since a failed delete closes the channel it ran on.
    """
    from kombu.connection import Connection

    queues = [name for service in SERVICES for name in (service_queue(prefix, service), dead_queue(prefix, service))]
    queues += list(extra_queues)
    with Connection(amqp_url, connect_timeout=5) as conn:
        for queue in queues:
            try:
                conn.channel().queue_delete(queue)
            except Exception:  # noqa: S112 - absent already, or never declared
                continue
        for exchange in (events_exchange(prefix), dlx_exchange(prefix)):
            try:
                conn.channel().exchange_delete(exchange)
            except Exception:  # noqa: S112
                continue
