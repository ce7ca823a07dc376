"""The development certificate authority and one certificate per service, for gRPC mTLS.

``python -m coffeeping.common.certs --dir var/certs`` creates ``ca.pem``/``ca-key.pem`` and
``<service>.pem``/``<service>-key.pem`` for every service when they are missing. The certificate's
common name is the service's identity, which the server interceptor authorises.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coffeeping.common import services

SERVICES = tuple(service.name for service in services.ALL)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def certificate_authority(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The development CA in ``directory`` (``ca.pem``, ``ca-key.pem``), created when missing."""
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CoffeePing development CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def issue(
    directory: Path, service: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
    dns_names: tuple[str, ...] = (),
) -> None:
    """``<service>.pem`` and its key, for the service's name, ``localhost`` and 127.0.0.1; with ``dns_names``,
    for those names only (as cert-manager issues one for a Kubernetes Service)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names] or [
        x509.DNSName(service),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(directory / f"{service}-key.pem", key)
    (directory / f"{service}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure(directory: Path, services: tuple[str, ...] = SERVICES) -> Path:
    """Create the CA and any missing service certificate; existing files are kept."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = certificate_authority(directory)
    for service in services:
        if not (directory / f"{service}.pem").exists() or not (directory / f"{service}-key.pem").exists():
            issue(directory, service, ca_cert, ca_key)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default="var/certs")
    parser.add_argument("--service", action="append", help="issue only these (default: all)")
    args = parser.parse_args()
    ensure(Path(args.dir), tuple(args.service) if args.service else SERVICES)
    print(f"certificates ready in {args.dir}")


if __name__ == "__main__":
    main()
