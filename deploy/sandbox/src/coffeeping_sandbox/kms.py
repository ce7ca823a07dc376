"""Cloud KMS stand-in: ``google.cloud.kms.v1.KeyManagementService`` over plaintext gRPC.

Symmetric ENCRYPT_DECRYPT keys with real AES-256-GCM, versions and rotation, additional authenticated
data, and the CRC32C integrity fields exactly as Google documents them. Speak to it with the real
client::

    KeyManagementServiceClient(transport=KeyManagementServiceGrpcTransport(
        channel=grpc.insecure_channel(addr)))

Ciphertext layout (opaque to callers): ``b"CPK1" | version (uint32 BE) | nonce (12) | AES-GCM output``;
the GCM associated data is the key name plus the caller's AAD, so a ciphertext only opens under the
key, version and AAD that produced it.
"""

from __future__ import annotations

import os
import re
import struct
import threading
from collections import Counter
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import google_crc32c
import grpc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.cloud import kms_v1

from .control import Control, InjectedFault

SERVICE = "google.cloud.kms.v1.KeyManagementService"
KEY_RE = re.compile(r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$")
VERSION_RE = re.compile(
    r"^(projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+)/cryptoKeyVersions/(\d+)$"
)
KEY_RING_RE = re.compile(r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+$")
KEY_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,63}$")
MAGIC = b"CPK1"
_HEADER = len(MAGIC) + 4 + 12
MAX_PLAINTEXT = 64 * 1024
MAX_AAD = 64 * 1024

_V = kms_v1.CryptoKeyVersion
_STATES = {
    "ENABLED": _V.CryptoKeyVersionState.ENABLED,
    "DISABLED": _V.CryptoKeyVersionState.DISABLED,
    "DESTROYED": _V.CryptoKeyVersionState.DESTROYED,
}
_FAULT_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def crc32c(data: bytes) -> int:
    return int(google_crc32c.value(bytes(data)))


def fault_code(fault: InjectedFault) -> grpc.StatusCode:
    """gRPC code for an injected fault: HTTP statuses map, code names pass through, hang → UNAVAILABLE."""
    status = fault.status
    if isinstance(status, str):
        if status.isdigit():
            status = int(status)
        elif status.upper() in grpc.StatusCode.__members__:
            return grpc.StatusCode[status.upper()]
        else:
            return grpc.StatusCode.UNAVAILABLE
    return _FAULT_CODES.get(status, grpc.StatusCode.UNAVAILABLE)


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class KeyVersion:
    number: int
    material: bytes
    state: str = "ENABLED"
    create_time: datetime = field(default_factory=_now)


@dataclass
class CryptoKey:
    name: str
    versions: dict[int, KeyVersion] = field(default_factory=dict)
    primary: int | None = None
    create_time: datetime = field(default_factory=_now)
    labels: dict[str, str] = field(default_factory=dict)

    def version_name(self, n: int) -> str:
        return f"{self.name}/cryptoKeyVersions/{n}"

    def add_version(self) -> KeyVersion:
        n = max(self.versions, default=0) + 1
        v = KeyVersion(n, AESGCM.generate_key(bit_length=256))
        self.versions[n] = v
        return v


class KmsSandbox:
    def __init__(self, control: Control, keys: list[str] | tuple = (), auto_create: bool = True):
        self.control = control
        self._initial = (list(keys), auto_create)
        self._lock = threading.RLock()
        self._server: grpc.Server | None = None
        self.reset()

    # ----------------------------------------------------------------- state and control

    def reset(self) -> None:
        keys, auto = self._initial
        with self._lock:
            self.auto_create = auto
            self._keys: dict[str, CryptoKey] = {}
            self._calls: Counter[str] = Counter()
            for name in keys:
                self.create_key(name)

    def create_key(self, name: str) -> CryptoKey:
        """Create a key with version 1 as primary (idempotent)."""
        if not KEY_RE.match(name or ""):
            raise ValueError(f"not a CryptoKey name: {name!r}")
        with self._lock:
            key = self._keys.get(name)
            if key is None:
                key = self._keys[name] = CryptoKey(name)
                key.primary = key.add_version().number
            return key

    def rotate(self, name: str, make_primary: bool = True) -> str:
        """Add a version (the primary by default, as scheduled rotation does); returns its full name."""
        with self._lock:
            key = self._keys.get(name)
            if key is None:
                if not self.auto_create:
                    raise KeyError(name)
                key = self.create_key(name)
            v = key.add_version()
            if make_primary:
                key.primary = v.number
            return key.version_name(v.number)

    def set_version_state(self, name: str, version: int, state: str) -> None:
        """ENABLED, DISABLED or DESTROYED (destroyed material is dropped)."""
        state = state.upper()
        if state not in _STATES:
            raise ValueError(f"state must be one of {sorted(_STATES)}")
        with self._lock:
            v = self._keys[name].versions[int(version)]
            v.state = state
            if state == "DESTROYED":
                v.material = b""

    def keys_snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {
                    "name": k.name,
                    "primary": k.version_name(k.primary) if k.primary else None,
                    "versions": [
                        {"name": k.version_name(n), "state": v.state} for n, v in sorted(k.versions.items())
                    ],
                }
                for k in self._keys.values()
            ]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    # -------------------------------------------------------------------------- crypto

    def _key(self, name: str, create: bool) -> CryptoKey:
        if not KEY_RE.match(name):
            if VERSION_RE.match(name):
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"Resource name [{name}] is not a CryptoKey name."
                )
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"Resource name [{name}] does not represent a valid key."
            )
        with self._lock:
            key = self._keys.get(name)
            if key is None and create and self.auto_create:
                key = self.create_key(name)
            if key is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"{name} not found.")
            return key

    @staticmethod
    def _aad(key_name: str, aad: bytes) -> bytes:
        raw = key_name.encode()
        return struct.pack(">I", len(raw)) + raw + aad

    @staticmethod
    def _check_crc(req: Any, crc_field: str, data_field: str) -> bool:
        if crc_field not in req:
            return False
        if crc32c(getattr(req, data_field)) != getattr(req, crc_field):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"The checksum in field {crc_field} did not match the data in field {data_field}.",
            )
        return True

    def encrypt(self, req: kms_v1.EncryptRequest) -> kms_v1.EncryptResponse:
        m = VERSION_RE.match(req.name)
        key = self._key(m.group(1) if m else req.name, create=True)
        if len(req.plaintext) > MAX_PLAINTEXT:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "The plaintext must be at most 65536 bytes.")
        if len(req.additional_authenticated_data) > MAX_AAD:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "The additional authenticated data is too long.")
        verified_pt = self._check_crc(req, "plaintext_crc32c", "plaintext")
        verified_aad = self._check_crc(
            req, "additional_authenticated_data_crc32c", "additional_authenticated_data"
        )
        with self._lock:
            number = int(m.group(2)) if m else key.primary
            version = key.versions.get(number) if number else None
            if version is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"{req.name} not found.")
            if version.state != "ENABLED":
                raise _Abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{key.version_name(number)} is not enabled, current state is: {version.state}.",
                )
            material = version.material
        nonce = os.urandom(12)
        sealed = AESGCM(material).encrypt(
            nonce, bytes(req.plaintext), self._aad(key.name, req.additional_authenticated_data)
        )
        ciphertext = MAGIC + struct.pack(">I", number) + nonce + sealed
        return kms_v1.EncryptResponse(
            name=key.version_name(number),
            ciphertext=ciphertext,
            ciphertext_crc32c=crc32c(ciphertext),
            verified_plaintext_crc32c=verified_pt,
            verified_additional_authenticated_data_crc32c=verified_aad,
            protection_level=kms_v1.ProtectionLevel.SOFTWARE,
        )

    def decrypt(self, req: kms_v1.DecryptRequest) -> kms_v1.DecryptResponse:
        key = self._key(req.name, create=False)
        self._check_crc(req, "ciphertext_crc32c", "ciphertext")
        self._check_crc(req, "additional_authenticated_data_crc32c", "additional_authenticated_data")
        ct = bytes(req.ciphertext)
        invalid = _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Decryption failed: the ciphertext is invalid.")
        if len(ct) < _HEADER + 16 or ct[:4] != MAGIC:
            raise invalid
        (number,) = struct.unpack(">I", ct[4:8])
        with self._lock:
            version = key.versions.get(number)
            if version is None:
                raise invalid
            if version.state != "ENABLED":
                raise _Abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{key.version_name(number)} is not enabled, current state is: {version.state}.",
                )
            material, primary = version.material, key.primary
        try:
            plaintext = AESGCM(material).decrypt(
                ct[8:_HEADER], ct[_HEADER:], self._aad(key.name, req.additional_authenticated_data)
            )
        except InvalidTag:
            raise invalid from None
        return kms_v1.DecryptResponse(
            plaintext=plaintext,
            plaintext_crc32c=crc32c(plaintext),
            used_primary=number == primary,
            protection_level=kms_v1.ProtectionLevel.SOFTWARE,
        )

    def _version_pb(self, key: CryptoKey, n: int) -> kms_v1.CryptoKeyVersion:
        v = key.versions[n]
        return kms_v1.CryptoKeyVersion(
            name=key.version_name(n),
            state=_STATES[v.state],
            protection_level=kms_v1.ProtectionLevel.SOFTWARE,
            algorithm=_V.CryptoKeyVersionAlgorithm.GOOGLE_SYMMETRIC_ENCRYPTION,
            create_time=v.create_time,
            generate_time=v.create_time,
        )

    def _key_pb(self, key: CryptoKey) -> kms_v1.CryptoKey:
        with self._lock:
            return kms_v1.CryptoKey(
                name=key.name,
                primary=self._version_pb(key, key.primary) if key.primary else None,
                purpose=kms_v1.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT,
                create_time=key.create_time,
                labels=key.labels,
                version_template=kms_v1.CryptoKeyVersionTemplate(
                    protection_level=kms_v1.ProtectionLevel.SOFTWARE,
                    algorithm=_V.CryptoKeyVersionAlgorithm.GOOGLE_SYMMETRIC_ENCRYPTION,
                ),
            )

    def get_crypto_key(self, req: kms_v1.GetCryptoKeyRequest) -> kms_v1.CryptoKey:
        return self._key_pb(self._key(req.name, create=True))

    def get_crypto_key_version(self, req: kms_v1.GetCryptoKeyVersionRequest) -> kms_v1.CryptoKeyVersion:
        m = VERSION_RE.match(req.name)
        if not m:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"Resource name [{req.name}] is not a version name."
            )
        key = self._key(m.group(1), create=False)
        with self._lock:
            if int(m.group(2)) not in key.versions:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"{req.name} not found.")
            return self._version_pb(key, int(m.group(2)))

    def create_crypto_key(self, req: kms_v1.CreateCryptoKeyRequest) -> kms_v1.CryptoKey:
        if not KEY_RING_RE.match(req.parent) or not KEY_ID_RE.match(req.crypto_key_id):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "Invalid parent or crypto_key_id.")
        purpose = req.crypto_key.purpose
        if purpose != kms_v1.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, "The sandbox supports only purpose ENCRYPT_DECRYPT."
            )
        name = f"{req.parent}/cryptoKeys/{req.crypto_key_id}"
        with self._lock:
            if name in self._keys:
                raise _Abort(grpc.StatusCode.ALREADY_EXISTS, f"{name} already exists.")
            key = self._keys[name] = CryptoKey(name, labels=dict(req.crypto_key.labels))
            if not req.skip_initial_version_creation:
                key.primary = key.add_version().number
            return self._key_pb(key)

    def create_crypto_key_version(self, req: kms_v1.CreateCryptoKeyVersionRequest) -> kms_v1.CryptoKeyVersion:
        key = self._key(req.parent, create=False)
        with self._lock:
            v = key.add_version()  # like Google: a new symmetric version is not made primary
            return self._version_pb(key, v.number)

    def update_primary(self, req: kms_v1.UpdateCryptoKeyPrimaryVersionRequest) -> kms_v1.CryptoKey:
        key = self._key(req.name, create=False)
        try:
            n = int(req.crypto_key_version_id)
        except ValueError:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, "crypto_key_version_id must be a number."
            ) from None
        with self._lock:
            v = key.versions.get(n)
            if v is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"{key.version_name(n)} not found.")
            if v.state != "ENABLED":
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, f"{key.version_name(n)} is not enabled.")
            key.primary = n
        return self._key_pb(key)

    # ---------------------------------------------------------------------------- gRPC

    def _wrap(self, method: str, fn: Callable[[Any], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            with self._lock:
                self._calls[method] += 1
            try:
                self.control.enter(
                    f"kms.{method}", name=getattr(request, "name", "") or getattr(request, "parent", "")
                )
                return fn(request)
            except InjectedFault as fault:
                context.abort(fault_code(fault), f"Injected fault ({fault.method})")
            except _Abort as err:
                context.abort(err.code, err.message)

        return handler

    def generic_handler(self) -> grpc.GenericRpcHandler:
        methods = {
            "Encrypt": (self.encrypt, kms_v1.EncryptRequest, kms_v1.EncryptResponse),
            "Decrypt": (self.decrypt, kms_v1.DecryptRequest, kms_v1.DecryptResponse),
            "GetCryptoKey": (self.get_crypto_key, kms_v1.GetCryptoKeyRequest, kms_v1.CryptoKey),
            "GetCryptoKeyVersion": (
                self.get_crypto_key_version,
                kms_v1.GetCryptoKeyVersionRequest,
                kms_v1.CryptoKeyVersion,
            ),
            "CreateCryptoKey": (self.create_crypto_key, kms_v1.CreateCryptoKeyRequest, kms_v1.CryptoKey),
            "CreateCryptoKeyVersion": (
                self.create_crypto_key_version,
                kms_v1.CreateCryptoKeyVersionRequest,
                kms_v1.CryptoKeyVersion,
            ),
            "UpdateCryptoKeyPrimaryVersion": (
                self.update_primary,
                kms_v1.UpdateCryptoKeyPrimaryVersionRequest,
                kms_v1.CryptoKey,
            ),
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    self._wrap(name, fn),
                    request_deserializer=req.deserialize,
                    response_serializer=resp.serialize,
                )
                for name, (fn, req, resp) in methods.items()
            },
        )

    def start(self, host: str = "127.0.0.1", port: int = 0, max_workers: int = 32) -> int:
        """Serve on ``host:port`` (0: a free port); returns the bound port."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="kms"))
        server.add_generic_rpc_handlers((self.generic_handler(),))
        bound = server.add_insecure_port(f"{host}:{port}")
        if not bound:
            raise OSError(f"cannot bind KMS stand-in to {host}:{port}")
        server.start()
        self._server = server
        return bound

    def stop(self, grace: float | None = 0) -> None:
        if self._server is not None:
            self._server.stop(grace).wait(5)
            self._server = None
