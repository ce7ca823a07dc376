"""A layer-4 (TCP) round-robin balancer: what a Kubernetes ClusterIP Service does, for ``replicas.py``'s
gRPC clients when they cannot spread their calls over the replicas themselves.

    python bench/tcp_balancer.py --route 40001=127.0.0.1:5001,127.0.0.1:5002 [--route ...]

Each accepted connection goes to the next backend of its route that accepts one (a backend that refuses,
a replica being restarted, is skipped, as an endpoint that is not ready is left out of a Service), and
bytes are relayed both ways until either side closes. Like a Service, it balances connections, not
calls: a gRPC channel's one HTTP/2 connection stays with one replica until it breaks. On SIGTERM it
prints one JSON line, the connections each backend took, and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import sys
from collections import Counter


def parse_route(text: str) -> tuple[int, list[tuple[str, int]]]:
    listen, _, backends = text.partition("=")
    pairs = []
    for item in backends.split(","):
        host, _, port = item.rpartition(":")
        pairs.append((host, int(port)))
    if not pairs:
        raise argparse.ArgumentTypeError("a route needs at least one backend")
    return int(listen), pairs


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def main(routes: list[tuple[int, list[tuple[str, int]]]]) -> None:
    taken: Counter[str] = Counter()
    servers = []
    for listen, backends in routes:
        order = itertools.cycle(range(len(backends)))

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         backends: list[tuple[str, int]] = backends, order: itertools.cycle = order) -> None:
            for _ in range(len(backends)):
                host, port = backends[next(order)]
                try:
                    upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
                except OSError:
                    continue
                taken[f"{host}:{port}"] += 1
                await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
                return
            writer.close()

        servers.append(await asyncio.start_server(handle, "127.0.0.1", listen))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"listening": [listen for listen, _ in routes]}), flush=True)
    await stop.wait()
    for server in servers:
        server.close()
    print(json.dumps({"connections": dict(taken)}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--route", type=parse_route, action="append", required=True,
                        help="LISTEN_PORT=HOST:PORT,HOST:PORT,...")
    asyncio.run(main(parser.parse_args().route))
    sys.exit(0)
