"""Typed settings, read once from the environment and validated at start-up.

A service declares a frozen dataclass whose fields carry ``setting(...)`` metadata and calls
``load(MySettings)`` once in its entry point. A missing or malformed value raises ``ConfigError`` with
one line naming the variable; ``load_or_exit`` prints that line and stops the process.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")
_MISSING = object()


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it and never echoes a secret."""


def setting(env: str, parse: Callable[[str], Any] = str, default: Any = _MISSING, secret: bool = False) -> Any:
    """Declare a dataclass field read from the environment variable ``env``."""
    return dataclasses.field(metadata={"env": env, "parse": parse, "default": default, "secret": secret})


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("must be an integer") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def number(low: float = 0.0) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("must be a number") from None
        if value < low:
            raise ValueError(f"must be at least {low}")
        return value

    return parse


def url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL")
    return raw.rstrip("/")


def db_url(raw: str) -> str:
    if not raw.startswith(("postgresql://", "postgresql+psycopg://")):
        raise ValueError("must be a postgresql:// URL")
    return raw.replace("postgresql://", "postgresql+psycopg://", 1)


def amqp_url(raw: str) -> str:
    if not raw.startswith(("amqp://", "amqps://")):
        raise ValueError("must be an amqp:// URL")
    return raw


def host_port(raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port")
    return raw


def csv_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def key32(raw: str) -> bytes:
    """Base64 of exactly 32 bytes (an AES-256 key)."""
    try:
        value = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64") from None
    if len(value) != 32:
        raise ValueError("must decode to 32 bytes")
    return value


def secret_text(min_length: int = 32) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if len(raw) < min_length:
            raise ValueError(f"must be at least {min_length} characters")
        return raw

    return parse


def boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def load(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """Build ``cls`` from the environment, raising ``ConfigError`` for the first bad setting."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        meta = field.metadata
        name = meta["env"]
        raw = env.get(name)
        if raw is None or raw == "":
            if meta["default"] is _MISSING:
                raise ConfigError(f"{name} is required but not set")
            values[field.name] = meta["default"]
            continue
        try:
            values[field.name] = meta["parse"](raw)
        except ValueError as exc:
            shown = "" if meta["secret"] else f" (got {raw[:60]!r})"
            raise ConfigError(f"{name} {exc}{shown}") from None
    return cls(**values)


def is_required(item: dataclasses.Field[Any]) -> bool:
    """Whether a setting has no default (its variable must be set)."""
    return item.metadata["default"] is _MISSING


def problems(cls: type[Any], environ: Mapping[str, str]) -> list[str]:
    """Everything wrong with ``environ`` for ``cls``: each required setting that is not set, then the first
    malformed or inconsistent value ``load`` finds (empty when it would load)."""
    unset = [item.metadata["env"] for item in dataclasses.fields(cls)
             if is_required(item) and not environ.get(item.metadata["env"])]
    if unset:
        return [f"{name} is required but not set" for name in unset]
    try:
        load(cls, environ)
    except ConfigError as exc:
        return [str(exc)]
    return []


def load_or_exit(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """``load`` for entry points: one clear line on stderr and exit status 2 on a bad setting."""
    try:
        return load(cls, environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
