"""The public API, one blueprint per area. Each module exposes ``bp`` and ``PATHS`` (its OpenAPI
path items), so the published document is assembled from the code that serves it; the schemas are the
models of ``coffeeping_gateway.schemas``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from coffeeping_gateway.api import components
from coffeeping_gateway.schemas import MODELS
from coffeeping_gateway.views import account, gmail, me, outreach, privacy, push, system

MODULES = (system, me, gmail, outreach, account, push, privacy)


def blueprints() -> list[Blueprint]:
    return [module.bp for module in MODULES]


def paths() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for module in MODULES:
        for path, item in module.PATHS.items():
            merged.setdefault(path, {}).update(item)
    return merged


def schemas() -> dict[str, Any]:
    return components(MODELS)
