"""The public API, one blueprint per area. Each module exposes ``bp`` and ``PATHS`` (its OpenAPI
path items), so the published document is assembled from the code that serves it."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from coffeeping_gateway.views import account, gmail, me, outreach, push, system

MODULES = (system, me, gmail, outreach, account, push)


def blueprints() -> list[Blueprint]:
    return [module.bp for module in MODULES]


def paths() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for module in MODULES:
        for path, item in module.PATHS.items():
            merged.setdefault(path, {}).update(item)
    return merged


def schemas() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for module in MODULES:
        merged.update(getattr(module, "SCHEMAS", {}))
    return merged
