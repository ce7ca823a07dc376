"""Who may publish and who consumes each event: docs/EVENTS.md as code (a test keeps them equal).

The broker enforces it twice. Its topic permissions let each service's login publish only the routing
keys it produces (``deploy/bootstrap_broker.py`` writes them from here), and every message carries the
AMQP ``user_id`` property, which RabbitMQ checks against the connection's login. The consumer then acts
only on a message whose verified sender is a registered producer of its type, and whose payload, when
it names a service, names that sender.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import services

ACCOUNTS, VAULT, MAILER, WATCHER = (s.name for s in (services.ACCOUNTS, services.VAULT, services.MAILER,
                                                    services.WATCHER))
BACKENDS = tuple(s.name for s in services.BACKENDS)

# type: (producers, consumers)
EVENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gmail.connected": ((VAULT,), (MAILER, WATCHER)),
    "gmail.disconnected": ((VAULT,), (MAILER, WATCHER)),
    "sequence.started": ((MAILER,), (WATCHER,)),
    "sequence.message_sent": ((MAILER,), (WATCHER,)),
    "sequence.stopped": ((MAILER,), (WATCHER,)),
    "reply.detected": ((WATCHER,), (MAILER,)),
    "bounce.detected": ((WATCHER,), (MAILER,)),
    "takeover.detected": ((WATCHER,), (MAILER,)),
    "account.deletion_requested": ((ACCOUNTS,), (MAILER, WATCHER)),
    "account.revoke_requested": ((ACCOUNTS,), (VAULT,)),
    "account.purged": ((MAILER, WATCHER, VAULT), (ACCOUNTS,)),
    "account.purge_failed": ((MAILER, WATCHER, VAULT), (ACCOUNTS,)),
}


def produced_by(service: str) -> tuple[str, ...]:
    return tuple(kind for kind, (producers, _) in EVENTS.items() if service in producers)


def consumed_by(service: str) -> tuple[str, ...]:
    return tuple(kind for kind, (_, consumers) in EVENTS.items() if service in consumers)


def broker_login(prefix: str, service: str) -> str:
    """The RabbitMQ user of ``service`` in the deployment whose names start with ``prefix``."""
    return f"{prefix}-{service}"


# (event type, the broker-verified sender login or None, the service the payload names or None) -> allowed
SenderCheck = Callable[[str, "str | None", "str | None"], bool]


def registered_producers(prefix: str) -> SenderCheck:
    """The consumer's check: the sender is a registered producer of the type, and the service the
    payload names (``account.purged`` names its reporter) is that sender's own."""
    def allowed(event_type: str, login: str | None, claimed: str | None) -> bool:
        producers = {broker_login(prefix, s): s for s in EVENTS.get(event_type, ((), ()))[0]}
        if login not in producers:
            return False
        return claimed is None or producers[login] == claimed

    return allowed


__all__ = ["BACKENDS", "EVENTS", "SenderCheck", "broker_login", "consumed_by", "produced_by",
           "registered_producers"]
