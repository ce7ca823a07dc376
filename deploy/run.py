"""The whole system on this machine: ``deploy/run.sh`` runs this inside the virtualenv."""

from __future__ import annotations

import signal
import sys
import time

from stack import Stack, StackConfig


def main() -> int:
    config = StackConfig(console=True)
    if not config.sandbox:
        found = config.settings_problems()
        if found:
            print("COFFEEPING_SANDBOX=off takes every setting from the environment; nothing was started, because:",
                  *(f"  {problem}" for problem in found), sep="\n", file=sys.stderr)
            return 2
    stack = Stack(config)
    stack.prepare()
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        stack.start()
    except RuntimeError as exc:
        print(f"start failed: {exc}", file=sys.stderr)
        stack.stop()
        return 1
    gw = config.gateway_url
    print(f"""
CoffeePing is running.
  Console:      {config.console_url}/   (sign in with any email address: the sandbox stands in for Clerk)
  API:          {gw}   (try {gw}/healthz and {gw}/openapi.json)
  Sandbox:      Google {config.google_url}  Clerk {config.clerk_url}  KMS 127.0.0.1:{config.sandbox_ports['kms']}
  A session token:  TOKEN=$(.venv/bin/python -m coffeeping_sandbox.clerk mint --user user_demo --url {config.clerk_url})
  Then:         curl -H "Authorization: Bearer $TOKEN" {gw}/v1/me
  Guided demo:  .venv/bin/python deploy/demo.py connect | outreach | reply   (see README.md)
  Metrics:      {"  ".join(f"{name} :{port}" for name, port in config.metrics_ports.items())}   (/metrics)
Press Ctrl-C to stop everything.
""" if config.sandbox else f"\nCoffeePing is running at {gw} (no sandbox; the console, if CONSOLE_URL is set, at "
      f"{config.environ.get('CONSOLE_URL') or 'none'}). Ctrl-C stops it.\n", flush=True)
    try:
        while not stopping:
            for name, proc in stack.procs.items():
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping", file=sys.stderr)
                    stopping = True
            time.sleep(0.5)
    finally:
        print("stopping...", flush=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
