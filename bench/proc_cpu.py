"""CPU seconds used by processes, read from /proc: the benchmarks' cost per operation, stable on a noisy
machine where rates are not."""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable

_TICKS = os.sysconf("SC_CLK_TCK")


def process_table() -> dict[int, tuple[int, int, float]]:
    """pid -> (parent pid, owner uid, CPU seconds used) for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
            uid = os.stat(f"/proc/{entry}").st_uid
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), uid, (int(fields[11]) + int(fields[12])) / _TICKS)
    return table


def tree_seconds(table: dict[int, tuple[int, int, float]], pids: Iterable[int]) -> float:
    """CPU seconds of ``pids`` and all their descendants (e.g. gunicorn's workers)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)

    def tree(pid: int) -> float:
        return table.get(pid, (0, 0, 0.0))[2] + sum(tree(child) for child in children.get(pid, []))

    return sum(tree(pid) for pid in pids)


def postgres_seconds(table: dict[int, tuple[int, int, float]], database: str | None = None) -> float:
    """CPU seconds of the processes of the ``postgres`` user (0 when there is no such user): with
    ``database``, only the server's own background processes and the backends of that database, so that
    other clients of a shared server (another test run, say) are not counted."""
    try:
        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        return 0.0
    return sum(cpu for pid, (_, owner, cpu) in table.items()
               if owner == uid and (database is None or _serves(pid, database)))


def _serves(pid: int, database: str) -> bool:
    """A background process ("postgres: 15/main: walwriter") or a backend of ``database``
    ("postgres: 15/main: <role> <database> <client> <state>")."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            title = fh.read().replace(b"\0", b" ").decode(errors="replace").split()
    except OSError:
        return False
    words = title[2:] if len(title) > 2 and title[0] == "postgres:" else []
    return len(words) < 3 or words[1] == database
