"""The web console: server-rendered pages on the API's own origin, for people who never saw an API.

Each page calls the same services through the same helpers, models and error mapping as the JSON API
(``web.call``, ``schemas``, ``api``), so there is one source of behaviour; plain JavaScript (no build
step) keeps the Clerk session fresh, refreshes lists in place and previews merge fields. See
docs/CONSOLE.md.
"""

from __future__ import annotations

from coffeeping_gateway.console import (  # noqa: F401
    contacts,
    deletion,
    home,
    present,
    privacy,
    sequences,
    settings,
    signin,
)
from coffeeping_gateway.console.deletion import receipt_user
from coffeeping_gateway.console.frontend import error_page, error_pages, install, navigation, to_sign_in

__all__ = ["error_page", "error_pages", "install", "navigation", "receipt_user", "to_sign_in"]
