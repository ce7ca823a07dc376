"""The gateway's gunicorn master serves every worker's metrics only if prometheus_client runs in
multiprocess mode in the workers: the master must set PROMETHEUS_MULTIPROC_DIR before anything imports
prometheus_client (``coffeeping_gateway.multiprocess``), and importing the entry point must not."""

from __future__ import annotations

import subprocess
import sys


def test_the_gunicorn_master_never_imports_prometheus_client_before_the_multiprocess_directory_is_set():
    check = ("import sys, coffeeping_gateway.__main__; "
             "from coffeeping_gateway import multiprocess; "
             "assert 'prometheus_client' not in sys.modules, 'imported too early'; "
             "import os; d = multiprocess.prepare(os.environ); "
             "from prometheus_client import values; "
             "assert getattr(values.ValueClass, '_multiprocess', False); multiprocess.cleanup(d)")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
