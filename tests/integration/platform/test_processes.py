"""Services as processes: configuration validated at start-up, generated code in step with protos/,
and an orderly stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MODULES = ["coffeeping_accounts", "coffeeping_vault", "coffeeping_mailer", "coffeeping_reply_watcher", "coffeeping_gateway"]


def _run(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run([sys.executable, "-m", module], env={**base, **env}, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("module", MODULES)
def test_a_service_without_settings_stops_with_one_clear_line(module):
    result = _run(module, {})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("configuration error: ") and " is required" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_a_malformed_setting_is_named_and_a_secret_is_not_echoed(stack):
    env = stack.config.env("auth-gateway")
    env["GATEWAY_PORT"] = "eighty"
    result = _run("coffeeping_gateway", env)
    assert result.returncode == 2
    assert "GATEWAY_PORT must be an integer" in result.stderr
    env = stack.config.env("auth-gateway")
    env["OAUTH_STATE_SECRET"] = "short-secret-value"
    result = _run("coffeeping_gateway", env)
    assert result.returncode == 2
    assert "OAUTH_STATE_SECRET" in result.stderr and "short-secret-value" not in result.stderr


def test_generated_stubs_match_protos():
    result = subprocess.run([sys.executable, str(ROOT / "deploy" / "gen_protos.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_generated_stub_drift_is_detected(tmp_path):
    """The check itself fails when a generated file differs from what protos/ produce."""
    target = ROOT / "libs" / "coffeeping-common" / "src" / "coffeeping" / "types" / "v1" / "export_pb2.pyi"
    original = target.read_bytes()
    try:
        target.write_bytes(original + b"\n# drift\n")
        result = subprocess.run([sys.executable, str(ROOT / "deploy" / "gen_protos.py"), "--check"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        assert "export_pb2.pyi" in result.stderr
    finally:
        target.write_bytes(original)


def test_sigterm_drains_a_service_and_it_exits_cleanly(stack):
    """A second accounts process on its own port: SIGTERM makes it stop serving and exit 0."""
    import socket

    from stack import free_port

    env = stack.config.env("accounts")
    port = free_port()
    env["GRPC_PORT"] = str(port)
    env["METRICS_PORT"] = str(free_port())  # the stack's accounts holds its own
    proc = subprocess.Popen([sys.executable, "-m", "coffeeping_accounts"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert '"msg": "shutting down"' in out and '"msg": "stopped"' in out
