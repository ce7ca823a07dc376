"""Run every stand-in until SIGINT/SIGTERM.

python -m coffeeping_sandbox --google-port 8702 --kms-port 8703 --clerk-port 8701 \
    --client ID:SECRET:REDIRECT_URI [--client ...] --access-token-lifetime 3600 --latency-ms 0
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .server import start_sandbox


def parse_client(value: str) -> tuple[str, str, list[str]]:
    """``ID:SECRET:REDIRECT_URI`` (the URI contains colons itself; repeat --client for more URIs)."""
    parts = value.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise argparse.ArgumentTypeError("expected ID:SECRET:REDIRECT_URI")
    return parts[0], parts[1], [parts[2]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m coffeeping_sandbox", description="CoffeePing dev/test sandbox"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--google-port", type=int, default=8702)
    p.add_argument("--kms-port", type=int, default=8703)
    p.add_argument("--clerk-port", type=int, default=8701)
    p.add_argument(
        "--client", action="append", type=parse_client, default=[], metavar="ID:SECRET:REDIRECT_URI"
    )
    p.add_argument("--access-token-lifetime", type=int, default=3600, metavar="SECONDS")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument(
        "--clerk-issuer", default=None, help="iss of minted session tokens (default: the Clerk URL)"
    )
    p.add_argument("--kms-key", action="append", default=[], help="pre-create a key (repeatable)")
    p.add_argument("--no-kms-auto-create", action="store_true", help="unknown keys → NOT_FOUND")
    args = p.parse_args(argv)
    if args.access_token_lifetime <= 0 or args.latency_ms < 0:
        p.error("--access-token-lifetime must be positive and --latency-ms >= 0")

    merged: dict[str, tuple[str, list[str]]] = {}
    for cid, secret, uris in args.client:
        if cid in merged and merged[cid][0] != secret:
            p.error(f"client {cid} given with two secrets")
        merged.setdefault(cid, (secret, []))[1].extend(uris)
    clients = [(cid, secret, uris) for cid, (secret, uris) in merged.items()]

    sb = start_sandbox(
        host=args.host,
        google_port=args.google_port,
        kms_port=args.kms_port,
        clerk_port=args.clerk_port,
        clients=clients,
        access_token_lifetime_s=args.access_token_lifetime,
        clerk_issuer=args.clerk_issuer,
        latency_ms=args.latency_ms,
        kms_keys=args.kms_key,
        kms_auto_create=not args.no_kms_auto_create,
    )
    for name, where in sb.endpoints().items():
        print(f"{name:<58} {where}", flush=True)
    for cid, _secret, uris in clients:
        print(f"{'oauth client ' + cid:<58} {' '.join(uris)}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    sb.stop()
    print("sandbox stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
