"""What the whole-system benchmarks share (``account_export.py``, ``gateway_me.py``): the sandbox and the
five services started the way the tests start them, on free ports with a database and a messaging
prefix of their own (both removed afterwards), and session tokens minted by the Clerk stand-in."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from proc_cpu import postgres_seconds, process_table, tree_seconds  # noqa: E402
from stack import Stack, StackConfig, remove_deployment  # noqa: E402


def wait_healthy(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise SystemExit(f"gateway at {url} did not report healthy within {timeout:.0f}s")


@contextlib.contextmanager
def running_stack(log_level: str, extra_env: dict[str, str] | None = None, *,
                  keep_logs: bool = False) -> Iterator[Stack]:
    """The whole system, healthy, with the services' ``LOG_LEVEL`` and ``extra_env``; stopped and removed
    on the way out (its logs kept if ``keep_logs``)."""
    tag = uuid.uuid4().hex[:8]
    var_dir = Path(tempfile.mkdtemp(prefix="cp-bench-"))
    config = StackConfig.ephemeral(var_dir, f"cp_bench_{tag}", f"cpbench{tag}")
    config.extra_env.update({"LOG_LEVEL": log_level, **(extra_env or {})})
    stack = Stack(config)
    print(f"starting the stack (database {config.database}, logs in {config.log_dir}) ...", flush=True)
    try:
        stack.prepare()
        stack.start()
        wait_healthy(config.gateway_url)
        yield stack
    finally:
        stack.stop()
        remove_deployment(config)
        if not keep_logs:
            shutil.rmtree(var_dir, ignore_errors=True)


def mint_token(config: StackConfig, user_id: str, lifetime_s: int = 600) -> str:
    """A Clerk session token for ``user_id`` from the sandbox's stand-in."""
    reply = requests.post(f"{config.clerk_url}/_sandbox/tokens",
                          json={"user_id": user_id, "lifetime_s": lifetime_s}, timeout=10)
    reply.raise_for_status()
    return str(reply.json()["token"])



def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU seconds used so far by each service (with its child processes) and by PostgreSQL."""
    table = process_table()
    used = {name: tree_seconds(table, [proc.pid]) for name, proc in stack.procs.items()}
    used["postgresql"] = postgres_seconds(table, stack.config.database)
    return used
