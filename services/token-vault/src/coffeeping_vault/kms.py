"""Wrapping of data keys: Cloud KMS in production, a local AES-256-GCM key in development.

``Keyring`` wraps new data keys with Cloud KMS when ``KMS_KEY_NAME`` is set, else with the local key,
and unwraps either kind (so data keys wrapped locally keep working until ``rewrap`` moves them to
KMS). Every KMS call carries CRC32C checksums of what it sends and checks those of what it gets, as
Google recommends, and runs with an explicit retry and timeout so a dead endpoint fails fast.
Unwrapped data keys are kept in a bounded in-memory cache so steady-state requests make no KMS call.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import google_crc32c
import grpc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_exception_type

from coffeeping_vault import metrics

LOCAL = "local"
KMS = "kms"


class KeyUnavailable(Exception):
    """KMS could not be reached (or answered a transient error): retry later."""


class KeyIntegrityError(Exception):
    """A wrapped key did not unwrap, or a KMS response failed its integrity checks."""


@dataclass(frozen=True)
class Wrapped:
    wrapping: str  # "kms" or "local"
    wrapped: bytes
    kms_key_version: str | None = None


def crc32c(data: bytes) -> int:
    return int(google_crc32c.value(bytes(data)))


class LocalWrapper:
    """AES-256-GCM under ``TOKEN_VAULT_LOCAL_KEY`` (development). Layout: nonce (12) | ciphertext."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the local key must be 32 bytes")
        self._aead = AESGCM(key)

    def wrap(self, data_key: bytes, aad: bytes) -> Wrapped:
        nonce = os.urandom(12)
        return Wrapped(LOCAL, nonce + self._aead.encrypt(nonce, data_key, aad))

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:12], wrapped[12:], aad)
        except (InvalidTag, ValueError):
            raise KeyIntegrityError("local unwrap failed") from None


_TRANSIENT = (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError,
              gexc.TooManyRequests, gexc.ResourceExhausted)


class CloudKmsWrapper:
    """Cloud KMS ``Encrypt``/``Decrypt`` through google-cloud-kms."""

    def __init__(self, key_name: str, endpoint: str = "", timeout_s: float = 5.0, client: Any = None) -> None:
        from google.cloud import kms_v1
        from google.cloud.kms_v1.services.key_management_service.transports import (
            KeyManagementServiceGrpcTransport,
        )

        self.key_name = key_name
        self.timeout_s = timeout_s
        if client is None:
            if endpoint:
                # A plaintext KMS-compatible endpoint (the sandbox); Google's own uses its TLS default.
                transport = KeyManagementServiceGrpcTransport(channel=grpc.insecure_channel(endpoint))
                client = kms_v1.KeyManagementServiceClient(transport=transport)
            else:
                client = kms_v1.KeyManagementServiceClient()
        self.client = client
        # The library's default retry runs for about a minute whatever ``timeout`` says.
        self.retry = Retry(predicate=if_exception_type(*_TRANSIENT), initial=0.1, maximum=1.0, multiplier=2.0,
                           timeout=timeout_s)

    def _call(self, method: Any, request: dict[str, Any]) -> Any:
        try:
            return method(request=request, retry=self.retry, timeout=self.timeout_s)
        except (gexc.RetryError, *_TRANSIENT) as exc:
            raise KeyUnavailable(type(exc).__name__) from None
        except gexc.GoogleAPICallError as exc:
            # Wrong AAD, a tampered ciphertext, a disabled version, a missing key, a refused caller.
            if isinstance(exc, (gexc.InvalidArgument, gexc.NotFound, gexc.FailedPrecondition)):
                raise KeyIntegrityError(type(exc).__name__) from None
            raise KeyUnavailable(type(exc).__name__) from None

    def wrap(self, data_key: bytes, aad: bytes) -> Wrapped:
        return _kms_call("encrypt", lambda: self._wrap(data_key, aad))

    def _wrap(self, data_key: bytes, aad: bytes) -> Wrapped:
        response = self._call(self.client.encrypt, {
            "name": self.key_name,
            "plaintext": data_key,
            "plaintext_crc32c": crc32c(data_key),
            "additional_authenticated_data": aad,
            "additional_authenticated_data_crc32c": crc32c(aad),
        })
        if not response.verified_plaintext_crc32c or not response.verified_additional_authenticated_data_crc32c:
            raise KeyIntegrityError("KMS did not verify the request checksums")
        if crc32c(response.ciphertext) != response.ciphertext_crc32c:
            raise KeyIntegrityError("KMS response ciphertext checksum mismatch")
        return Wrapped(KMS, bytes(response.ciphertext), response.name)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        return _kms_call("decrypt", lambda: self._unwrap(wrapped, aad))

    def _unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        response = self._call(self.client.decrypt, {
            "name": self.key_name,
            "ciphertext": wrapped,
            "ciphertext_crc32c": crc32c(wrapped),
            "additional_authenticated_data": aad,
            "additional_authenticated_data_crc32c": crc32c(aad),
        })
        if crc32c(response.plaintext) != response.plaintext_crc32c:
            raise KeyIntegrityError("KMS response plaintext checksum mismatch")
        return bytes(response.plaintext)

    def primary_version(self) -> str:
        key = _kms_call("get_crypto_key", lambda: self._call(self.client.get_crypto_key, {"name": self.key_name}))
        return str(key.primary.name)


def _kms_outcome(exc: BaseException) -> str:
    if isinstance(exc, KeyUnavailable):
        return "unavailable"
    return "integrity_error" if isinstance(exc, KeyIntegrityError) else "error"


def _kms_call(operation: str, run: Any) -> Any:
    """A KMS operation (its call and its checksum checks), counted by outcome and timed."""
    return metrics.measured(metrics.KMS_CALLS, metrics.KMS_DURATION, operation, _kms_outcome, run)


class DataKeyCache:
    """Unwrapped data keys by key id, for at most ``ttl_s`` and at most ``size`` entries (LRU)."""

    def __init__(self, ttl_s: float, size: int) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def get(self, key_id: str) -> bytes | None:
        now = time.monotonic()
        with self._lock:
            item = self._items.get(key_id)
            if item is None:
                return None
            if item[1] <= now:
                del self._items[key_id]
                return None
            self._items.move_to_end(key_id)
            return item[0]

    def put(self, key_id: str, key: bytes) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._items[key_id] = (key, time.monotonic() + self.ttl_s)
            self._items.move_to_end(key_id)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def forget(self, key_id: str) -> None:
        with self._lock:
            self._items.pop(key_id, None)


class Keyring:
    """Wraps with KMS when configured (else the local key); unwraps whichever wrapped a key."""

    def __init__(self, kms: CloudKmsWrapper | None, local: LocalWrapper | None, cache: DataKeyCache) -> None:
        if kms is None and local is None:
            raise ValueError("a KMS key or a local key is required")
        self.kms = kms
        self.local = local
        self.cache = cache

    def wrap(self, key_id: str, data_key: bytes, aad: bytes) -> Wrapped:
        wrapped = self.kms.wrap(data_key, aad) if self.kms is not None else self.local.wrap(data_key, aad)  # type: ignore[union-attr]
        self.cache.put(key_id, data_key)
        return wrapped

    def unwrap(self, key_id: str, wrapping: str, wrapped: bytes, aad: bytes) -> bytes:
        cached = self.cache.get(key_id)
        metrics.data_key(hit=cached is not None)
        if cached is not None:
            return cached
        key = self.unwrap_uncached(wrapping, wrapped, aad)
        self.cache.put(key_id, key)
        return key

    def unwrap_uncached(self, wrapping: str, wrapped: bytes, aad: bytes) -> bytes:
        if wrapping == KMS:
            if self.kms is None:
                raise KeyIntegrityError("a KMS-wrapped key but no KMS_KEY_NAME")
            return self.kms.unwrap(wrapped, aad)
        if wrapping == LOCAL:
            if self.local is None:
                raise KeyIntegrityError("a locally wrapped key but no TOKEN_VAULT_LOCAL_KEY")
            return self.local.unwrap(wrapped, aad)
        raise KeyIntegrityError("unknown wrapping")
