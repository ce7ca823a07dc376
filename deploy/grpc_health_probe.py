"""Container health probe for a CoffeePing gRPC server: exit 0 when it reports SERVING, 1 otherwise.

    python grpc_health_probe.py [--addr 127.0.0.1:$GRPC_PORT] [--server-name NAME] [--service NAME] [--timeout 3]

Our servers require a client certificate (mTLS), so the probe presents the service's own certificate
(``TLS_CA_CERT``, ``TLS_CERT``, ``TLS_KEY``, the same settings the service reads). Kubernetes' built-in
``grpc:`` probe speaks plaintext only, which our servers refuse; deployments run this as an exec probe.

The probe dials the pod's own address but verifies the server's certificate for the name the server
is known by: ``--server-name``, else ``TLS_SERVER_NAME``, else the first DNS name of the service's own
certificate, which is the very certificate the server presents (cert-manager issues it for the
Service's DNS name only, without 127.0.0.1). It needs grpcio, grpcio-health-checking and cryptography,
all in every service image, and is copied into each as is.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc


def certificate_name(pem: bytes) -> str | None:
    """The first DNS name a certificate is issued for, if any."""
    try:
        names = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, x509.ExtensionNotFound):
        return None
    dns = names.value.get_values_for_type(x509.DNSName)
    return dns[0] if dns else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addr", default=f"127.0.0.1:{os.environ.get('GRPC_PORT', '50051')}")
    parser.add_argument("--server-name", default=os.environ.get("TLS_SERVER_NAME", ""),
                        help="the name the server's certificate must be valid for (default: its own certificate's)")
    parser.add_argument("--service", default="", help="health service name ('' is the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--ca", default=os.environ.get("TLS_CA_CERT", ""))
    parser.add_argument("--cert", default=os.environ.get("TLS_CERT", ""))
    parser.add_argument("--key", default=os.environ.get("TLS_KEY", ""))
    args = parser.parse_args(argv)
    missing = [name for name in ("ca", "cert", "key") if not getattr(args, name)]
    if missing:
        print(f"probe: no {', '.join(missing)} file given (set TLS_CA_CERT, TLS_CERT, TLS_KEY)", file=sys.stderr)
        return 1
    try:
        own = Path(args.cert).read_bytes()
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(args.ca).read_bytes(),
            private_key=Path(args.key).read_bytes(),
            certificate_chain=own,
        )
    except OSError as exc:
        print(f"probe: cannot read certificate files ({exc.strerror})", file=sys.stderr)
        return 1
    server_name = args.server_name or certificate_name(own)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    with grpc.secure_channel(args.addr, credentials, options=options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"probe: {args.addr} {exc.code().name}", file=sys.stderr)  # type: ignore[attr-defined]
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.addr} {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
