"""Every Secret that deploy/k8s/overlays/dev references, with development values, as YAML for kubectl.

    .venv/bin/python deploy/k8s/overlays/dev/dev_secrets.py [--state var/k8s-dev] | kubectl apply -f -

Development only, never for a real deployment (overlays/prod's Secrets are yours to create: deploy/k8s/
README.md). Values are generated once into ``--state`` (a 0600 env file and the dev CA with one
certificate per service, issued for the Service's DNS names only, as cert-manager would) and reused on
every run, so applying again changes nothing. The passwords agree with each other as the Jobs expect:
each service's database-url and rabbitmq-url carry the passwords that the migration and broker Jobs
give its roles and logins, and the sandbox registers the OAuth client with the vault's secret.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "deploy"))

import yaml  # noqa: E402
from bootstrap_broker import LOGINS, service_url  # noqa: E402
from bootstrap_broker import password_variable as broker_variable  # noqa: E402
from bootstrap_db import BACKEND_SCHEMAS, dev_passwords, password_variable, read_env_file, roles  # noqa: E402
from stack import dev_secrets  # noqa: E402

from coffeeping.common import services  # noqa: E402
from coffeeping.common.certs import certificate_authority, issue  # noqa: E402

NAMESPACE = "coffeeping"
DATABASE = "coffeeping"
# The in-cluster engines of overlays/dev (postgresql.yaml, rabbitmq.yaml) and the broker Job's vhost.
POSTGRES_HOST, RABBITMQ_HOST, VHOST, PREFIX = "postgres", "rabbitmq", "coffeeping", "coffeeping"
RABBITMQ_ADMIN = "coffeeping-admin"


def values(state: Path) -> dict[str, str]:
    """The generated secrets and passwords, kept in ``state/secrets.env`` from the first run on."""
    path = state / "secrets.env"
    dev_secrets(path)  # the services' secrets and the broker logins' passwords
    found = dev_passwords(path)  # and every database role's
    extra = {name: secrets.token_urlsafe(24) for name in ("DEV_POSTGRES_PASSWORD", "DEV_RABBITMQ_PASSWORD")
             if not found.get(name)}
    if extra:
        found.update(extra)
        path.write_text("".join(f"{key}={value}\n" for key, value in found.items()))
        path.chmod(0o600)
    return read_env_file(path)


def certificates(state: Path) -> dict[str, dict[str, str]]:
    """Per service: the dev CA's certificate and its own, issued for its Service's DNS names only."""
    directory = state / "certs"
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = certificate_authority(directory)
    found = {}
    for service in services.ALL:
        name = service.name
        if not (directory / f"{name}.pem").exists():
            issue(directory, name, ca_cert, ca_key, dns_names=(
                name, f"{name}.{NAMESPACE}", f"{name}.{NAMESPACE}.svc", f"{name}.{NAMESPACE}.svc.cluster.local"))
        found[name] = {"ca.crt": (directory / "ca.pem").read_text(), "tls.crt": (directory / f"{name}.pem").read_text(),
                       "tls.key": (directory / f"{name}-key.pem").read_text()}
    return found


def database_url(role: str, password: str) -> str:
    return f"postgresql://{quote(role, safe='')}:{quote(password, safe='')}@{POSTGRES_HOST}:5432/{DATABASE}"


def manifests(state: Path) -> list[dict[str, object]]:
    v = values(state)

    def secret(name: str, data: dict[str, str], kind: str = "Opaque") -> dict[str, object]:
        labels = {"app.kubernetes.io/part-of": "coffeeping"}
        return {"apiVersion": "v1", "kind": "Secret", "type": kind,
                "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels}, "stringData": data}

    found = [secret(f"coffeeping-mtls-{name}", files, "kubernetes.io/tls")
             for name, files in certificates(state).items()]
    found.append(secret("coffeeping-auth-gateway", {"clerk-webhook-secret": v["CLERK_WEBHOOK_SECRET"],
                                                    "oauth-state-secret": v["OAUTH_STATE_SECRET"]}))
    for name, schema in BACKEND_SCHEMAS.items():
        data = {
            "database-url": database_url(f"cp_{schema}", v[password_variable(f"cp_{schema}")]),
            "rabbitmq-url": service_url(f"amqp://{RABBITMQ_HOST}:5672", VHOST, PREFIX, name, v[broker_variable(name)]),
            "tombstone-key": v["TOMBSTONE_KEY"],
        }
        if name == "token-vault":
            data["google-client-secret"] = v["GOOGLE_CLIENT_SECRET"]
        found.append(secret(f"coffeeping-{name}", data))
    found.append(secret("coffeeping-db-admin", {
        "url": f"postgresql://postgres:{quote(v['DEV_POSTGRES_PASSWORD'], safe='')}@{POSTGRES_HOST}:5432/postgres"}))
    found.append(secret("coffeeping-db-roles",
                        {password_variable(role): v[password_variable(role)] for role in roles()}))
    management = f"http://{RABBITMQ_ADMIN}:{quote(v['DEV_RABBITMQ_PASSWORD'], safe='')}@{RABBITMQ_HOST}:15672"
    found.append(secret("coffeeping-broker-admin", {"RABBITMQ_MANAGEMENT_URL": management,
                                                    **{broker_variable(login): v[broker_variable(login)]
                                                       for login in LOGINS}}))
    found.append(secret("coffeeping-dev-postgres", {"password": v["DEV_POSTGRES_PASSWORD"]}))
    found.append(secret("coffeeping-dev-rabbitmq",
                        {"username": RABBITMQ_ADMIN, "password": v["DEV_RABBITMQ_PASSWORD"]}))
    found.append(secret("coffeeping-sandbox", {"google-client-secret": v["GOOGLE_CLIENT_SECRET"]}))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", type=Path, default=ROOT / "var" / "k8s-dev",
                        help="where the generated values and certificates are kept (default: var/k8s-dev)")
    args = parser.parse_args(argv)
    args.state.mkdir(parents=True, exist_ok=True)
    args.state.chmod(0o700)
    print(yaml.safe_dump_all(manifests(args.state), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
