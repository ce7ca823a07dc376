"""The broker's counterpart of ``bootstrap_db.py``: the deployment's vhost and one login per service.

Through RabbitMQ's management API (``RABBITMQ_MANAGEMENT_URL``, an administrator's credentials in the
URL, e.g. ``http://admin:secret@rabbitmq:15672``) it creates, idempotently:

- the vhost ``RABBITMQ_VHOST`` (default ``coffeeping``), to which the administrator keeps no access
  (on a development broker that is ``guest``);
- per backend, the login ``<prefix>-<service>`` with the password ``RABBITMQ_PASSWORD_<SERVICE>``
  (``ACCOUNTS``, ``TOKEN_VAULT``, ``MAILER``, ``REPLY_WATCHER``), allowed to configure, read and write
  only its own queues and the shared exchanges, and, through topic permissions on the events
  exchange, to publish only the routing keys it produces (``coffeeping.common.messaging.registry``,
  the same table as docs/EVENTS.md). The gateway gets no login;
- the operator's login ``<prefix>-operator`` (``RABBITMQ_PASSWORD_OPERATOR``), tagged ``impersonator``
  so that ``python -m coffeeping.common.messaging requeue-dead`` can put a dead-lettered message back with
  its original verified sender; it reaches the deployment's queues and exchanges only.

Passwords are required; ``--dev`` allows the development fallback ``<login>-dev-password``.

    python deploy/bootstrap_broker.py [--dev]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from urllib.parse import quote, urlsplit

import requests

from coffeeping.common.messaging.registry import BACKENDS, broker_login, consumed_by, produced_by

DEFAULT_MANAGEMENT_URL = "http://guest:guest@127.0.0.1:15672"
OPERATOR = "operator"
LOGINS = (*BACKENDS, OPERATOR)


class BrokerBootstrapError(RuntimeError):
    """A missing setting or a refusal of the management API; the message names it, never a password."""


def password_variable(service: str) -> str:
    return "RABBITMQ_PASSWORD_" + service.upper().replace("-", "_")


def passwords_from_env(prefix: str, dev: bool = False) -> dict[str, str]:
    found = {}
    for service in LOGINS:
        value = os.environ.get(password_variable(service), "")
        if not value:
            if not dev:
                raise BrokerBootstrapError(f"{password_variable(service)} is required but not set")
            value = f"{broker_login(prefix, service)}-dev-password"
        found[service] = value
    return found


def _alternatives(names: list[str]) -> str:
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def permissions(prefix: str, service: str) -> tuple[dict[str, str], dict[str, str]]:
    """(vhost permissions, topic permissions on the events exchange) of a service's login."""
    own = [f"{prefix}.{service}", f"{prefix}.{service}.dead"]
    exchanges = [f"{prefix}.events", f"{prefix}.dlx"]
    vhost = {
        # Declaring its queues and the shared exchanges; binding needs write on the queue and read on
        # the exchange; publishing needs write on the events exchange (and nothing else: no default
        # exchange, so no message straight into another service's queue).
        "configure": _alternatives(own + exchanges),
        # The dead-letter exchange too: RabbitMQ lets a queue dead-letter only into an exchange its
        # declarer may write to.
        "write": _alternatives([*own, *exchanges]),
        "read": _alternatives(own + exchanges),
    }
    produced, consumed = produced_by(service), consumed_by(service)
    topic = {
        "exchange": f"{prefix}.events",
        "write": _alternatives(list(produced)) if produced else "^$",
        "read": _alternatives(list(consumed)) if consumed else "^$",
    }
    return vhost, topic


class Management:
    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.username:
            raise BrokerBootstrapError("RABBITMQ_MANAGEMENT_URL must be http(s)://user:password@host:port")
        self.admin = parts.username
        self.base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}/api"
        self.session = requests.Session()
        self.session.auth = (parts.username, parts.password or "")
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: dict | None = None, missing_ok: bool = False) -> None:
        reply = self.session.request(method, self.base + path, json=body, timeout=self.timeout_s)
        if reply.status_code == 404 and missing_ok:
            return
        if reply.status_code not in (200, 201, 204):
            raise BrokerBootstrapError(f"{method} {path.split('/')[1]} refused by the broker: {reply.status_code}")


def bootstrap_broker(management_url: str, vhost: str, prefix: str, passwords: dict[str, str]) -> None:
    api = Management(management_url)
    v = quote(vhost, safe="")
    api.call("PUT", f"/vhosts/{v}")
    for service in BACKENDS:
        login = quote(broker_login(prefix, service), safe="")
        api.call("PUT", f"/users/{login}", {"password": passwords[service], "tags": ""})
        vhost_permissions, topic = permissions(prefix, service)
        api.call("PUT", f"/permissions/{v}/{login}", vhost_permissions)
        api.call("PUT", f"/topic-permissions/{v}/{login}", topic)
    operator = quote(broker_login(prefix, OPERATOR), safe="")
    api.call("PUT", f"/users/{operator}", {"password": passwords[OPERATOR], "tags": "impersonator"})
    deployment = f"^{re.escape(prefix)}\\..*$"
    api.call("PUT", f"/permissions/{v}/{operator}", {
        "configure": deployment, "write": f"^({re.escape(prefix)}\\..*|amq\\.default)$", "read": deployment})
    # Creating a vhost through the API grants its creator full access: the administrator keeps none.
    api.call("DELETE", f"/permissions/{v}/{quote(api.admin, safe='')}", missing_ok=True)


def delete_broker(management_url: str, vhost: str, prefix: str) -> None:
    """Remove the vhost (its queues and exchanges) and the logins (test and benchmark clean-up)."""
    api = Management(management_url)
    api.call("DELETE", f"/vhosts/{quote(vhost, safe='')}", missing_ok=True)
    for login in LOGINS:
        api.call("DELETE", f"/users/{quote(broker_login(prefix, login), safe='')}", missing_ok=True)


def service_url(amqp_url: str, vhost: str, prefix: str, service: str, password: str) -> str:
    """``amqp_url``'s host and port, with the service's own login and the deployment's vhost."""
    parts = urlsplit(amqp_url)
    host = parts.hostname or "127.0.0.1"
    return (f"{parts.scheme}://{quote(broker_login(prefix, service), safe='')}:{quote(password, safe='')}"
            f"@{host}:{parts.port or 5672}/{quote(vhost, safe='')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", action="store_true", help="allow the development password fallback")
    args = parser.parse_args(argv)
    prefix = os.environ.get("MESSAGING_PREFIX", "coffeeping")
    vhost = os.environ.get("RABBITMQ_VHOST", "coffeeping")
    try:
        bootstrap_broker(os.environ.get("RABBITMQ_MANAGEMENT_URL", DEFAULT_MANAGEMENT_URL), vhost, prefix,
                         passwords_from_env(prefix, dev=args.dev))
    except (BrokerBootstrapError, requests.RequestException) as exc:
        print(f"broker bootstrap failed: {exc if isinstance(exc, BrokerBootstrapError) else type(exc).__name__}",
              file=sys.stderr)
        return 1
    print(f"broker ready: vhost {vhost}, logins {', '.join(broker_login(prefix, s) for s in LOGINS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
