"""Google's token-signing keys: one key set signs OpenID id_tokens and Pub/Sub push OIDC tokens.

Google publishes the same keys twice: as a JWK set at ``/oauth2/v3/certs`` and as ``{kid: PEM X.509
certificate}`` at ``/oauth2/v1/certs`` (the URL google-auth's ``id_token.verify_token`` uses by
default). The sandbox does the same with a self-signed certificate per key.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

__all__ = ["GoogleKey", "GoogleKeys", "new_rsa_key"]


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass(frozen=True)
class GoogleKey:
    kid: str
    key: rsa.RSAPrivateKey
    cert_pem: str

    @classmethod
    def generate(cls) -> GoogleKey:
        key = new_rsa_key()
        kid = secrets.token_hex(20)  # Google's kids are 40 hex digits
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, kid)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=366))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(kid, key, cert.public_bytes(serialization.Encoding.PEM).decode("ascii"))


class GoogleKeys:
    """Thread-safe key set; the newest key signs, every published key verifies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._initial = GoogleKey.generate()
        self._keys: list[GoogleKey] = [self._initial]

    def reset(self) -> None:
        """Back to the key the sandbox started with (verifiers may have cached its certificate)."""
        with self._lock:
            self._keys = [self._initial]

    def rotate(self, keep_old: bool = True) -> str:
        """A new signing key; the old ones stay published unless ``keep_old`` is false. Returns the kid."""
        new = GoogleKey.generate()
        with self._lock:
            self._keys = [*self._keys, new] if keep_old else [new]
        return new.kid

    @property
    def current(self) -> GoogleKey:
        with self._lock:
            return self._keys[-1]

    def kids(self) -> list[str]:
        with self._lock:
            return [k.kid for k in self._keys]

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> str:
        key = self.current
        return jwt.encode(claims, key.key, algorithm="RS256", headers={"kid": kid or key.kid, "typ": "JWT"})

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            keys = list(self._keys)
        out = []
        for k in reversed(keys):
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(k.key.public_key(), as_dict=True)
            jwk.update({"kid": k.kid, "use": "sig", "alg": "RS256"})
            out.append(jwk)
        return {"keys": out}

    def certs_v1(self) -> dict[str, str]:
        with self._lock:
            return {k.kid: k.cert_pem for k in reversed(self._keys)}
