"""Entry point: ``coffeeping-reply-watcher`` (or ``python -m coffeeping_watcher``)."""

from __future__ import annotations

from coffeeping.common.config import load_or_exit
from coffeeping.common.logging import configure_logging
from coffeeping.common.rpc import serve
from coffeeping.common.runtime import run_until_signalled
from coffeeping.watcher.v1 import watcher_pb2_grpc
from coffeeping_watcher import SERVICE
from coffeeping_watcher.config import Settings
from coffeeping_watcher.servicer import POLICY, ReplyWatcherServicer


def main() -> None:
    settings = load_or_exit(Settings)
    configure_logging(SERVICE, settings.log_level)
    server = serve(
        SERVICE,
        [(watcher_pb2_grpc.add_ReplyWatcherServicer_to_server, ReplyWatcherServicer(), "coffeeping.watcher.v1.ReplyWatcher")],
        POLICY,
        settings.grpc_port,
        settings.for_service(SERVICE),
        grace=settings.shutdown_grace_s,
    )
    run_until_signalled(server)


if __name__ == "__main__":
    main()
