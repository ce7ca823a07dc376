"""Application-layer encryption of grant secrets (envelope encryption).

Each grant has its own 256-bit data key. A token is sealed with AES-256-GCM under that key with a
random 96-bit nonce; the associated data names the user, the grant, the field and the format
version, so a ciphertext copied to another row (or into the other field of the same row) fails to
open. Stored layout: ``version byte | nonce (12) | ciphertext and tag``.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_VERSION = 1
_NONCE = 12


class DecryptionFailed(Exception):
    """A ciphertext did not open: tampered, moved to another row, or under another key."""


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def token_aad(user_id: str, grant_id: str, field: str, version: int = FORMAT_VERSION) -> bytes:
    return f"coffeeping.vault.token|v{version}|{user_id}|{grant_id}|{field}".encode()


def key_aad(user_id: str, grant_id: str) -> bytes:
    """Associated data for wrapping a data key: it only unwraps for the grant it was made for."""
    return f"coffeeping.vault.data-key|v{FORMAT_VERSION}|{user_id}|{grant_id}".encode()


def seal(key: bytes, plaintext: bytes, aad: bytes, version: int = FORMAT_VERSION) -> bytes:
    nonce = os.urandom(_NONCE)
    return bytes([version]) + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    if len(sealed) < 1 + _NONCE + 16:
        raise DecryptionFailed("ciphertext too short")
    try:
        return AESGCM(key).decrypt(sealed[1 : 1 + _NONCE], sealed[1 + _NONCE :], aad)
    except InvalidTag:
        raise DecryptionFailed("ciphertext did not authenticate") from None


def sealed_version(sealed: bytes) -> int:
    return sealed[0] if sealed else 0
