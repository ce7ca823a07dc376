"""Entry point: ``coffeeping-accounts`` (or ``python -m coffeeping_accounts``) runs the service;
``python -m coffeeping_accounts retry-deletion <deletion_id>`` republishes the unfinished steps of a
deletion (for the operator, after a step was shown as failed)."""

from __future__ import annotations

import argparse
import sys
import threading

from coffeeping.accounts.v1 import accounts_pb2_grpc
from coffeeping.common.config import load_or_exit
from coffeeping.common.db import make_engine
from coffeeping.common.logging import configure_logging
from coffeeping.common.rpc import serve
from coffeeping.common.runtime import messaging_workers, run_until_signalled
from coffeeping_accounts import SERVICE, deletions, metrics
from coffeeping_accounts.config import OperatorSettings, Settings
from coffeeping_accounts.export import Sources
from coffeeping_accounts.servicer import POLICY, AccountsServicer
from coffeeping_accounts.services import KnownUsers


def run_service() -> None:
    settings = load_or_exit(Settings)
    configure_logging(SERVICE, settings.log_level)
    engine = make_engine(settings.database_url, application_name=SERVICE)
    sources = Sources(settings.for_service(SERVICE), settings.vault_addr, settings.mailer_addr,
                      settings.watcher_addr, timeout_s=settings.export_timeout_s)
    known = KnownUsers(engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
                       max_age_s=settings.known_users_max_age_s)
    if settings.metrics_port:
        metrics.watch_deletions(engine)
    messaging = messaging_workers(settings, SERVICE, engine, deletions.SCHEMA,
                                  deletions.make_handler(settings.tombstone_key))

    def watch_deadlines(stop: threading.Event) -> None:
        while not stop.wait(settings.deletion_watch_interval_s):
            try:
                deletions.mark_overdue(engine, settings.deletion_step_deadline_s)
            except Exception as exc:  # noqa: BLE001 - the database may be away; try again next round
                deletions.log.warning("deadline watch failed", extra={"error": type(exc).__name__})

    server = serve(
        SERVICE,
        [(accounts_pb2_grpc.add_AccountsServicer_to_server, AccountsServicer(engine, known, sources),
          "coffeeping.accounts.v1.Accounts")],
        POLICY,
        settings.grpc_port,
        settings.for_service(SERVICE),
        grace=settings.shutdown_grace_s,
    )
    run_until_signalled(server, [*messaging, ("deletion-deadlines", watch_deadlines), ("known-users", known.run)],
                        unready=messaging.unready, check_every_s=settings.health_check_s)


def retry_deletion(deletion_id: str) -> int:
    settings = load_or_exit(OperatorSettings)
    configure_logging(SERVICE, "WARNING")
    engine = make_engine(settings.database_url, pool_size=1, application_name=f"{SERVICE}-operator")
    try:
        steps = deletions.retry(engine, deletion_id, settings.tombstone_key)
    except deletions.NoSuchDeletion as exc:
        print(f"retry-deletion: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"deletion {deletion_id}: republished {', '.join(steps) if steps else 'nothing (no step waiting)'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        run_service()
        return 0
    parser = argparse.ArgumentParser(prog="python -m coffeeping_accounts")
    sub = parser.add_subparsers(dest="command", required=True)
    retry = sub.add_parser("retry-deletion", help="republish the unfinished steps of a deletion")
    retry.add_argument("deletion_id")
    parsed = parser.parse_args(args)
    return retry_deletion(parsed.deletion_id)


if __name__ == "__main__":
    sys.exit(main())
