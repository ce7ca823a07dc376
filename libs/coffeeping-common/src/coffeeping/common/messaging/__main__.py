"""``python -m coffeeping.common.messaging requeue-dead --service mailer``

Reads ``RABBITMQ_URL`` and ``MESSAGING_PREFIX`` (default ``coffeeping``) from the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..config import amqp_url, load_or_exit, setting
from .dead_letters import requeue_dead_letters


@dataclasses.dataclass(frozen=True)
class _Settings:
    rabbitmq_url: str = setting("RABBITMQ_URL", amqp_url, secret=True)
    prefix: str = setting("MESSAGING_PREFIX", default="coffeeping")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coffeeping.common.messaging")
    sub = parser.add_subparsers(dest="command", required=True)
    requeue = sub.add_parser("requeue-dead", help="move <prefix>.<service>.dead back to <prefix>.<service>")
    requeue.add_argument("--service", required=True)
    requeue.add_argument("--prefix", help="overrides MESSAGING_PREFIX")
    requeue.add_argument("--limit", type=int, help="move at most this many")
    args = parser.parse_args(argv)
    settings = load_or_exit(_Settings)
    prefix = args.prefix or settings.prefix
    try:
        moved = requeue_dead_letters(settings.rabbitmq_url, prefix, args.service, limit=args.limit)
    except Exception as exc:  # noqa: BLE001 - one line for the operator, no traceback
        print(f"requeue-dead failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"moved {moved} message(s) from {prefix}.{args.service}.dead to {prefix}.{args.service}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
