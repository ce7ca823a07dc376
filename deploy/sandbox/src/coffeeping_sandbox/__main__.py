"""Run every stand-in until SIGINT/SIGTERM.

python -m coffeeping_sandbox --google-port 8702 --kms-port 8703 --clerk-port 8701 \
    --client ID:SECRET:REDIRECT_URI [--client ...] --access-token-lifetime 3600 --latency-ms 0 \
    [--pubsub-topic projects/P/topics/T ...] \
    [--pubsub-push topic=projects/P/topics/T,endpoint=URL,audience=A,service_account=E ...]

Without --pubsub-push, the push subscriptions come from ``COFFEEPING_SANDBOX_PUBSUB_PUSH`` (the same
specs, separated by ``;``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from .pubsub import TOPIC_RE, PushConfig
from .server import start_sandbox

PUSH_ENV = "COFFEEPING_SANDBOX_PUBSUB_PUSH"


def parse_client(value: str) -> tuple[str, str, list[str]]:
    """``ID:SECRET:REDIRECT_URI`` (the URI contains colons itself; repeat --client for more URIs)."""
    parts = value.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise argparse.ArgumentTypeError("expected ID:SECRET:REDIRECT_URI")
    return parts[0], parts[1], [parts[2]]


def parse_push(value: str) -> PushConfig:
    try:
        cfg = PushConfig.parse(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not TOPIC_RE.match(cfg.topic):
        raise argparse.ArgumentTypeError("topic must look like projects/PROJECT/topics/TOPIC")
    return cfg


def parse_topic(value: str) -> str:
    if not TOPIC_RE.match(value):
        raise argparse.ArgumentTypeError("expected projects/PROJECT/topics/TOPIC")
    return value


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
    p.add_argument(
        "--pubsub-topic",
        action="append",
        type=parse_topic,
        default=[],
        metavar="projects/P/topics/T",
        help="register a Pub/Sub topic Gmail may publish to (repeatable)",
    )
    p.add_argument(
        "--pubsub-push",
        action="append",
        type=parse_push,
        default=[],
        metavar="topic=...,endpoint=URL[,audience=A][,service_account=E][,subscription=N]",
        help=f"a push subscription, its topic registered for Gmail (repeatable; default: ${PUSH_ENV})",
    )
    p.add_argument("--push-min-backoff", type=float, default=0.1, metavar="SECONDS")
    p.add_argument("--push-max-backoff", type=float, default=2.0, metavar="SECONDS")
    args = p.parse_args(argv)
    if args.access_token_lifetime <= 0 or args.latency_ms < 0:
        p.error("--access-token-lifetime must be positive and --latency-ms >= 0")
    if not 0 <= args.push_min_backoff <= args.push_max_backoff:
        p.error("--push-min-backoff must be >= 0 and <= --push-max-backoff")
    push = args.pubsub_push
    if not push and os.environ.get(PUSH_ENV, "").strip():
        try:
            push = [parse_push(spec) for spec in os.environ[PUSH_ENV].split(";") if spec.strip()]
        except argparse.ArgumentTypeError as err:
            p.error(f"{PUSH_ENV}: {err}")

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
        pubsub_topics=args.pubsub_topic,
        pubsub_push=push,
        push_min_backoff_s=args.push_min_backoff,
        push_max_backoff_s=args.push_max_backoff,
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
