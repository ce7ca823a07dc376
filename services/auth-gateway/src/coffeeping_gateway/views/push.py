"""Routes of this area are added by its issue; the blueprint is registered already."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

bp = Blueprint("push", __name__)

PATHS: dict[str, Any] = {}
