"""Entry point: ``coffeeping-token-vault`` (or ``python -m coffeeping_vault``)."""

from __future__ import annotations

from coffeeping.common.config import load_or_exit
from coffeeping.common.logging import configure_logging
from coffeeping.common.rpc import serve
from coffeeping.common.runtime import run_until_signalled
from coffeeping.vault.v1 import vault_pb2_grpc
from coffeeping_vault import SERVICE
from coffeeping_vault.config import Settings
from coffeeping_vault.servicer import POLICY, TokenVaultServicer


def main() -> None:
    settings = load_or_exit(Settings)
    configure_logging(SERVICE, settings.log_level)
    server = serve(
        SERVICE,
        [(vault_pb2_grpc.add_TokenVaultServicer_to_server, TokenVaultServicer(), "coffeeping.vault.v1.TokenVault")],
        POLICY,
        settings.grpc_port,
        settings.for_service(SERVICE),
        grace=settings.shutdown_grace_s,
    )
    run_until_signalled(server)


if __name__ == "__main__":
    main()
