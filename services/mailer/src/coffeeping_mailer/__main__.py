"""Entry point: ``coffeeping-mailer`` (or ``python -m coffeeping_mailer``)."""

from __future__ import annotations

from coffeeping.common.config import load_or_exit
from coffeeping.common.logging import configure_logging
from coffeeping.common.rpc import serve
from coffeeping.common.runtime import run_until_signalled
from coffeeping.mailer.v1 import mailer_pb2_grpc
from coffeeping_mailer import SERVICE
from coffeeping_mailer.config import Settings
from coffeeping_mailer.servicer import POLICY, MailerServicer


def main() -> None:
    settings = load_or_exit(Settings)
    configure_logging(SERVICE, settings.log_level)
    server = serve(
        SERVICE,
        [(mailer_pb2_grpc.add_MailerServicer_to_server, MailerServicer(), "coffeeping.mailer.v1.Mailer")],
        POLICY,
        settings.grpc_port,
        settings.for_service(SERVICE),
        grace=settings.shutdown_grace_s,
    )
    run_until_signalled(server)


if __name__ == "__main__":
    main()
