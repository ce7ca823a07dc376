"""CoffeePing sandbox: local stand-ins speaking the real wire protocols (dev/test only).

Production code never imports this package. Start everything with
:func:`coffeeping_sandbox.server.start_sandbox` or ``python -m coffeeping_sandbox``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Sandbox", "start_sandbox"]

if TYPE_CHECKING:  # pragma: no cover
    from .server import Sandbox, start_sandbox


def __getattr__(name: str) -> Any:  # lazy, so `python -m coffeeping_sandbox.clerk` stays light
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(name)
