"""Container health probe for a CoffeePing gRPC server: exit 0 when it reports SERVING, 1 otherwise.

    python grpc_health_probe.py [--addr 127.0.0.1:$GRPC_PORT] [--service NAME] [--timeout 3]

Our servers require a client certificate (mTLS), so the probe presents the service's own certificate
(``TLS_CA_CERT``, ``TLS_CERT``, ``TLS_KEY``, the same settings the service reads). Kubernetes' built-in
``grpc:`` probe speaks plaintext only, which our servers refuse; deployments run this as an exec probe.
It needs only grpcio and grpcio-health-checking, so it is copied into every service image as is.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addr", default=f"127.0.0.1:{os.environ.get('GRPC_PORT', '50051')}")
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
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(args.ca).read_bytes(),
            private_key=Path(args.key).read_bytes(),
            certificate_chain=Path(args.cert).read_bytes(),
        )
    except OSError as exc:
        print(f"probe: cannot read certificate files ({exc.strerror})", file=sys.stderr)
        return 1
    with grpc.secure_channel(args.addr, credentials) as channel:
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
