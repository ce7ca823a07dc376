"""Entry point: ``coffeeping-accounts`` (or ``python -m coffeeping_accounts``)."""

from __future__ import annotations

from coffeeping.accounts.v1 import accounts_pb2_grpc
from coffeeping.common.config import load_or_exit
from coffeeping.common.db import make_engine
from coffeeping.common.logging import configure_logging
from coffeeping.common.rpc import serve
from coffeeping.common.runtime import run_until_signalled
from coffeeping_accounts import SERVICE
from coffeeping_accounts.config import Settings
from coffeeping_accounts.servicer import POLICY, AccountsServicer


def main() -> None:
    settings = load_or_exit(Settings)
    configure_logging(SERVICE, settings.log_level)
    engine = make_engine(settings.database_url, application_name=SERVICE)
    server = serve(
        SERVICE,
        [(accounts_pb2_grpc.add_AccountsServicer_to_server, AccountsServicer(engine),
          "coffeeping.accounts.v1.Accounts")],
        POLICY,
        settings.grpc_port,
        settings.for_service(SERVICE),
        grace=settings.shutdown_grace_s,
    )
    run_until_signalled(server)


if __name__ == "__main__":
    main()
