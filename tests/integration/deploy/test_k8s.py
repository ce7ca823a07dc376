"""deploy/k8s rendered with `kubectl kustomize` (base, overlays/dev, overlays/prod) and checked offline.

Every core object validates with kubernetes-validate --strict for Kubernetes 1.32 (kubectl's version
here), and the operators' objects (RabbitmqCluster, CloudNativePG Cluster, PrometheusRule, PodMonitor)
against their CRDs' schemas (tests/fixtures/crds, unknown fields refused as `kubectl apply` refuses
them). In every overlay: every service is deployed and probed over mTLS; secrets are referenced, never
inlined; each Deployment reads only its own service's Secret and mTLS Secret, mounted as a directory;
pods run as non-root; the Jobs run without development fallbacks; the backends wait for their schema's
migrations; the metrics port is never behind a Service or the Ingress and is reachable from the
monitoring namespace only; egress is denied but for DNS, the engines, the gRPC calls the code makes
and HTTPS for the services that call Google, Clerk or KMS. Production adds autoscalers, disruption
budgets and spread; the base carries no production value; a config change renames the ConfigMap.
Skipped only where kubectl is missing.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from cryptography import x509
from ruamel.yaml import YAML

from coffeeping.common import services
from coffeeping.common.config import problems

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = ("base", "dev", "prod")
KUBERNETES = "1.32.0"
CRDS = ROOT / "tests" / "fixtures" / "crds"
NAMESPACE = "coffeeping"
METRICS_PORT = 9090

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")

GRPC_SERVICES = {s.name: s.port for s in services.BACKENDS}
SERVICE_NAMES = {s.name for s in services.ALL}
# Each Deployment and the service (certificate, Secret, schema) it runs: the mailer runs as two.
DEPLOYMENTS = {**{name: name for name in SERVICE_NAMES}, "mailer-scheduler": "mailer"}
MAILER_ROLES = {"mailer": "api", "mailer-scheduler": "scheduler"}
SECRET_SETTINGS = {"DATABASE_URL", "RABBITMQ_URL", "GOOGLE_CLIENT_SECRET", "CLERK_WEBHOOK_SECRET",
                   "OAUTH_STATE_SECRET", "TOKEN_VAULT_LOCAL_KEY", "ADMIN_DATABASE_URL", "PGPASSWORD",
                   "TOMBSTONE_KEY", "RABBITMQ_MANAGEMENT_URL", "RABBITMQ_ADMIN_PASSWORD"}
# What each service reads from its own Secret coffeeping-<service>: setting -> key.
OWN_SECRETS = {
    "auth-gateway": {"CLERK_WEBHOOK_SECRET": "clerk-webhook-secret", "OAUTH_STATE_SECRET": "oauth-state-secret"},
    "accounts": {"DATABASE_URL": "database-url", "RABBITMQ_URL": "rabbitmq-url", "TOMBSTONE_KEY": "tombstone-key"},
    "token-vault": {"DATABASE_URL": "database-url", "RABBITMQ_URL": "rabbitmq-url", "TOMBSTONE_KEY": "tombstone-key",
                    "GOOGLE_CLIENT_SECRET": "google-client-secret"},
    "mailer": {"DATABASE_URL": "database-url", "RABBITMQ_URL": "rabbitmq-url", "TOMBSTONE_KEY": "tombstone-key"},
    "reply-watcher": {"DATABASE_URL": "database-url", "RABBITMQ_URL": "rabbitmq-url",
                      "TOMBSTONE_KEY": "tombstone-key"},
}
# The Jobs (by their pods' app.kubernetes.io/name): command, and the Secrets they may read per overlay.
# In production the administrators come from the Secrets the operators generate.
JOB_COMMANDS = {"coffeeping-migrate": ["python", "deploy/bootstrap_db.py"],
                "coffeeping-broker": ["python", "deploy/bootstrap_broker.py"]}
JOB_SECRETS = {
    "base": {"coffeeping-migrate": {"coffeeping-db-admin", "coffeeping-db-roles"},
             "coffeeping-broker": {"coffeeping-broker-admin"}},
    "dev": {"coffeeping-migrate": {"coffeeping-db-admin", "coffeeping-db-roles"},
            "coffeeping-broker": {"coffeeping-broker-admin"}},
    "prod": {"coffeeping-migrate": {"coffeeping-pg-superuser", "coffeeping-db-roles"},
             "coffeeping-broker": {"coffeeping-rabbitmq-default-user", "coffeeping-broker-admin"}},
}
# Workloads that only the development overlay runs (its in-cluster engines and the Google/Clerk/KMS stand-ins).
DEV_ONLY = {"sandbox", "postgres", "rabbitmq"}
# Settings naming an endpoint outside the cluster that a service calls: whoever reads one needs HTTPS out.
EXTERNAL_ENDPOINTS = {"GOOGLE_TOKEN_URL", "GOOGLE_REVOKE_URL", "GOOGLE_USERINFO_URL", "KMS_KEY_NAME",
                      "GMAIL_API_ENDPOINT", "CLERK_JWKS_URL", "GOOGLE_OIDC_CERTS_URL"}
# Values for the Secret keys, good enough for each service's settings to load (never used otherwise).
FAKE_SECRETS = {"database-url": "postgresql://u:p@db:5432/coffeeping", "rabbitmq-url": "amqp://u:p@mq:5672/coffeeping",
                "tombstone-key": "t" * 48, "google-client-secret": "g" * 24,
                "clerk-webhook-secret": "whsec_" + "w" * 32, "oauth-state-secret": "o" * 48}


# -- rendering ---------------------------------------------------------------------------------------
def kustomize(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in YAML(typ="safe").load_all(done.stdout) if doc]


@functools.cache
def _rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(BASE if overlay == "base" else K8S / "overlays" / overlay))


def rendered(overlay: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_rendered(overlay)))


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objects(overlay: str) -> list[dict[str, Any]]:
    return rendered(overlay)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def ours(objects: list[dict[str, Any]], kind: str = "Deployment") -> dict[str, dict[str, Any]]:
    """The CoffeePing services' Deployments (not the development overlay's stand-ins)."""
    return {name: obj for name, obj in by_kind(objects, kind).items() if name not in DEV_ONLY}


def jobs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Jobs by their pods' app.kubernetes.io/name (their names carry the release)."""
    return {job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]: job
            for job in by_kind(objects, "Job").values()}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def config(objects: list[dict[str, Any]]) -> dict[str, str]:
    (config_map,) = [obj for name, obj in by_kind(objects, "ConfigMap").items() if name.startswith("coffeeping-config")]
    return dict(config_map["data"])


def secrets_referenced(workload: dict[str, Any]) -> set[str]:
    """Every Secret a workload's pod can read: env, envFrom and volumes (projected ones too)."""
    return {name for name, _ in secret_keys_referenced(workload)}


def secret_keys_referenced(workload: dict[str, Any]) -> set[tuple[str, str | None]]:
    """(Secret, key) pairs a workload's pod reads; key None for a whole Secret (envFrom, volume)."""
    pod = workload["spec"]["template"]["spec"]
    found: set[tuple[str, str | None]] = set()
    for spec in [*pod.get("initContainers", []), *pod["containers"]]:
        for item in spec.get("env", []):
            if "secretKeyRef" in item.get("valueFrom", {}):
                found.add((item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"]))
        for source in spec.get("envFrom", []):
            if "secretRef" in source:
                found.add((source["secretRef"]["name"], None))
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            found.add((volume["secret"]["secretName"], None))
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                found.add((source["secret"]["name"], None))
    return found


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] in ("Deployment", "StatefulSet", "Job")]


def release(objects: list[dict[str, Any]]) -> str:
    """The overlay's release: the tag every CoffeePing image carries."""
    tags = {image.rsplit(":", 1)[1] for deployment in ours(objects).values()
            for spec in [container(deployment), *deployment["spec"]["template"]["spec"].get("initContainers", [])]
            for image in [spec["image"]]}
    tags |= {job["spec"]["template"]["spec"]["containers"][0]["image"].rsplit(":", 1)[1] for job in jobs(objects).values()}
    (tag,) = tags
    return tag


# -- validation --------------------------------------------------------------------------------------
def test_every_overlay_renders_into_the_coffeeping_namespace(objects):
    assert by_kind(objects, "Namespace")[NAMESPACE]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == \
        "restricted"
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, (obj["kind"], obj["metadata"]["name"])


def test_every_core_object_validates_strictly_for_kubernetes_1_32(objects):
    custom = {crd["kind"] for crd in crd_schemas().values()}
    for obj in objects:
        if obj["kind"] in custom:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")


def _strict(node: Any) -> Any:
    """A CRD schema that refuses unknown fields where it lists the known ones, as kubectl's strict field
    validation does (a structural schema alone would let the API server prune them silently)."""
    if isinstance(node, dict):
        node = {key: _strict(value) for key, value in node.items()}
        if (node.get("type") == "object" and "properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the vendored CRD's strict schema and where it came from."""
    found = {}
    for path in sorted(CRDS.glob("*.json")):
        vendored = json.loads(path.read_text())
        found[(f"{vendored['group']}/{vendored['version']}", vendored["kind"])] = {
            "kind": vendored["kind"], "source": vendored["source"], "schema": _strict(vendored["schema"])}
    return found


def crd_errors(obj: dict[str, Any]) -> list[str]:
    schema = crd_schemas()[(obj["apiVersion"], obj["kind"])]["schema"]
    return [f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
            for error in jsonschema.Draft7Validator(schema).iter_errors(obj)]


def test_every_operator_object_validates_against_its_crd_schema(objects):
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in crd_schemas():
            assert not crd_errors(obj), (obj["kind"], obj["metadata"]["name"], crd_errors(obj)[:5])
        else:
            group = obj["apiVersion"].split("/")[0]
            assert "." not in group or group.endswith(".k8s.io"), f"no CRD schema vendored for {obj['apiVersion']}"


def test_the_crd_validation_refuses_a_misspelt_field():
    (cluster,) = by_kind(rendered("prod"), "RabbitmqCluster").values()
    cluster["spec"]["replica"] = 3
    assert any("replica" in error for error in crd_errors(cluster))
    (postgres,) = by_kind(rendered("prod"), "Cluster").values()
    postgres["spec"]["instances"] = "three"
    assert crd_errors(postgres)


def test_the_vendored_crds_say_where_they_come_from():
    readme = (CRDS / "README.md").read_text()
    for entry in crd_schemas().values():
        assert entry["source"].split(" (")[0] in readme, entry["source"]


# -- services, probes, images --------------------------------------------------------------------------
def test_every_service_has_its_deployments_and_a_service_that_selects_only_its_api_pods(objects):
    deployments, service_objects = ours(objects), by_kind(objects, "Service")
    assert set(deployments) == set(DEPLOYMENTS)
    for name, deployment in deployments.items():
        service = DEPLOYMENTS[name]
        labels = pod_labels(deployment)
        assert labels["app.kubernetes.io/name"] == service
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert container(deployment)["image"].split(":")[0] == f"coffeeping/{service}"
        selected = [s for s in service_objects.values() if s["spec"]["selector"].items() <= labels.items()]
        if name == "mailer-scheduler":
            assert not selected, "no Service may route to the mailer's scheduler"
        else:
            assert [s["metadata"]["name"] for s in selected] == [service], name
    # The Deployments' pods never overlap: each selector picks its own pods alone.
    for name, deployment in deployments.items():
        for other, other_deployment in deployments.items():
            if other != name:
                assert not deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels(other_deployment).items()


def test_the_mailer_runs_its_api_and_its_scheduler_as_two_deployments_of_one_service(objects):
    deployments = ours(objects)
    for name, role in MAILER_ROLES.items():
        env = {item["name"]: item for item in container(deployments[name])["env"]}
        assert env["MAILER_ROLE"]["value"] == role
    api, scheduler = (container(deployments[name]) for name in MAILER_ROLES)
    assert api["image"] == scheduler["image"]
    assert secrets_referenced(deployments["mailer"]) == secrets_referenced(deployments["mailer-scheduler"])


def test_grpc_services_are_probed_over_mtls_with_the_health_probe_on_their_own_port(objects):
    deployments, service_objects = ours(objects), by_kind(objects, "Service")
    for name, service in DEPLOYMENTS.items():
        if service not in GRPC_SERVICES:
            continue
        port = GRPC_SERVICES[service]
        spec = container(deployments[name])
        probe_command = ["python", "/app/grpc_health_probe.py", "--addr", f"127.0.0.1:{port}"]
        for probe in ("startupProbe", "readinessProbe"):  # readiness: its own database and broker
            assert spec[probe]["exec"]["command"] == probe_command, (name, probe)
        # Liveness: the process and its worker threads only (a database outage must not restart pods).
        assert spec["livenessProbe"]["exec"]["command"] == [*probe_command, "--service", "liveness"], name
        env = {item["name"]: item for item in spec["env"]}
        assert env["GRPC_PORT"]["value"] == str(port)
        assert service_objects[service]["spec"]["ports"] == [
            {"name": "grpc", "port": port, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}]


def test_the_backends_services_are_headless_so_callers_spread_calls_over_every_pod(objects):
    for name in GRPC_SERVICES:
        assert by_kind(objects, "Service")[name]["spec"]["clusterIP"] == "None", name


def test_the_probe_verifies_the_server_for_the_name_in_the_service_s_own_certificate():
    source = (ROOT / "deploy" / "grpc_health_probe.py").read_text()
    assert "grpc.ssl_target_name_override" in source and "certificate_name(own)" in source


def test_the_gateway_is_ready_on_healthz_and_alive_on_a_route_without_io(objects):
    spec = container(ours(objects)["auth-gateway"])
    assert spec["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/.well-known/security.txt"


def test_service_addresses_use_the_service_names_on_their_certificates(objects):
    data = config(objects)
    for variable, name in (("ACCOUNTS_GRPC_ADDR", "accounts"), ("TOKEN_VAULT_GRPC_ADDR", "token-vault"),
                           ("MAILER_GRPC_ADDR", "mailer"), ("REPLY_WATCHER_GRPC_ADDR", "reply-watcher")):
        assert data[variable] == f"{name}:{GRPC_SERVICES[name]}"


def test_the_ingress_serves_the_gateway_over_tls_only(overlay, objects):
    ingresses = by_kind(objects, "Ingress")
    if overlay == "dev":
        assert not ingresses  # the gateway is reached with kubectl port-forward
        return
    (ingress,) = ingresses.values()
    tls_hosts = {host for entry in ingress["spec"]["tls"] for host in entry["hosts"]}
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] in tls_hosts
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"]["name"] == "auth-gateway"
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"


def deployment_env(objects: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, str]:
    """What the container's process sees: the ConfigMap, then its own env, Secrets as FAKE_SECRETS."""
    env = dict(config(objects))
    for item in container(deployment)["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = FAKE_SECRETS[item["valueFrom"]["secretKeyRef"]["key"]]
    return env


def test_every_service_s_settings_load_from_what_its_deployment_gives_it(objects):
    for name, deployment in ours(objects).items():
        module = services.BY_NAME[DEPLOYMENTS[name]].package
        settings = importlib.import_module(f"{module}.config").Settings
        assert problems(settings, deployment_env(objects, deployment)) == [], name


# -- secrets -------------------------------------------------------------------------------------------
def test_secrets_are_referenced_from_secret_objects_and_never_inlined(objects):
    assert not by_kind(objects, "Secret"), "no overlay may carry Secret objects"
    for workload in workloads(objects):
        pod = workload["spec"]["template"]["spec"]
        for spec in [*pod.get("initContainers", []), *pod["containers"]]:
            for item in spec.get("env", []):
                if item["name"] in SECRET_SETTINGS and "secretKeyRef" not in item.get("valueFrom", {}):
                    # A URL may name where to connect, never with a password in it (prod's Jobs: PGPASSWORD,
                    # or the operator's administrator expanded from the Secret at run time).
                    value = item.get("value", "")
                    assert re.fullmatch(r"[a-z]+://(\$\([A-Z_]+\):\$\([A-Z_]+\)@|[a-z_]+@)?[a-z0-9.-]+:\d+(/\w*)?",
                                        value), (workload["metadata"]["name"], item["name"], value)
    assert not SECRET_SETTINGS & set(config(objects))


def test_each_deployment_reads_only_its_own_service_s_secret_and_mtls_secret(objects):
    for name, deployment in ours(objects).items():
        service = DEPLOYMENTS[name]
        assert secrets_referenced(deployment) == {f"coffeeping-{service}", f"coffeeping-mtls-{service}"}, name
        env = {item["name"]: item for item in container(deployment)["env"]}
        for setting, key in OWN_SECRETS[service].items():
            assert env[setting]["valueFrom"]["secretKeyRef"] == {"name": f"coffeeping-{service}", "key": key}, \
                (name, setting)
        # No other secret setting slips in (another service's, or one from the ConfigMap).
        assert SECRET_SETTINGS & set(env) == set(OWN_SECRETS[service]), name
        assert all("configMapRef" in source for source in container(deployment).get("envFrom", [])), name


def test_each_service_mounts_its_own_mtls_certificate_as_a_directory_never_through_subpath(objects):
    for name, deployment in ours(objects).items():
        service = DEPLOYMENTS[name]
        pod = deployment["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert volumes["mtls"]["secret"]["secretName"] == f"coffeeping-mtls-{service}"
        spec = container(deployment)
        mounts = {mount["name"]: mount for mount in spec["volumeMounts"]}
        assert mounts["mtls"]["readOnly"] is True
        env = {item["name"]: item.get("value", "") for item in spec["env"]}
        base = mounts["mtls"]["mountPath"]
        assert {env["TLS_CA_CERT"], env["TLS_CERT"], env["TLS_KEY"]} == {
            f"{base}/ca.crt", f"{base}/tls.crt", f"{base}/tls.key"}


def test_no_secret_is_ever_mounted_through_subpath_so_renewals_reach_the_pods(objects):
    for workload in workloads(objects):
        pod = workload["spec"]["template"]["spec"]
        secret_volumes = {volume["name"] for volume in pod.get("volumes", [])
                          if "secret" in volume or "projected" in volume}
        for spec in [*pod.get("initContainers", []), *pod["containers"]]:
            for mount in spec.get("volumeMounts", []):
                if mount["name"] in secret_volumes:
                    assert "subPath" not in mount and "subPathExpr" not in mount, (workload["metadata"]["name"], mount)


def test_the_gateway_gets_no_database_and_no_broker_login(objects):
    names = {item["name"] for item in container(ours(objects)["auth-gateway"])["env"]}
    assert not {"DATABASE_URL", "RABBITMQ_URL"} & names


def test_no_secret_is_shared_between_services(objects):
    readers: dict[str, set[str]] = {}
    for workload in workloads(objects):
        reader = pod_labels(workload)["app.kubernetes.io/name"]  # the mailer's two Deployments are one service
        for secret in secrets_referenced(workload):
            readers.setdefault(secret, set()).add(reader)
    shared = {secret: names for secret, names in readers.items() if len(names) > 1}
    assert not shared, shared
    for gone in ("coffeeping-rabbitmq", "coffeeping-tombstones", "coffeeping-google-oauth", "coffeeping-gateway"):
        assert gone not in readers


def test_pods_run_as_non_root_without_privileges_or_a_writable_root(objects):
    for workload in [*ours(objects).values(), *by_kind(objects, "Job").values(),
                     *[obj for name, obj in by_kind(objects, "Deployment").items() if name in DEV_ONLY]]:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for spec in [*pod.get("initContainers", []), *pod["containers"]]:
            context = spec["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]


# -- Jobs and migrations -----------------------------------------------------------------------------
def test_the_jobs_run_their_script_without_development_fallbacks_and_read_only_their_secrets(overlay, objects):
    found = jobs(objects)
    assert set(found) == set(JOB_COMMANDS)
    for name, command in JOB_COMMANDS.items():
        pod = found[name]["spec"]["template"]["spec"]
        (spec,) = pod["containers"]
        assert spec["image"].split(":")[0] == "coffeeping/bootstrap"
        assert spec["command"] == command and not spec.get("args"), name
        assert secrets_referenced(found[name]) == JOB_SECRETS[overlay][name], name
        assert pod["restartPolicy"] in ("OnFailure", "Never")


def test_the_jobs_are_named_after_the_release_so_a_new_image_applies_a_new_job(overlay, objects):
    for name, job in jobs(objects).items():
        expected = name if overlay == "base" else f"{name}-{release(objects).replace('.', '-')}"
        assert job["metadata"]["name"] == expected
        assert 0 < job["spec"]["ttlSecondsAfterFinished"] <= 7 * 86400


def test_the_broker_job_reads_every_password_from_its_secret(overlay, objects):
    (spec,) = jobs(objects)["coffeeping-broker"]["spec"]["template"]["spec"]["containers"]
    assert {"secretRef": {"name": "coffeeping-broker-admin"}} in spec["envFrom"]
    env = {item["name"]: item for item in spec.get("env", [])}
    assert not {name for name in env if name.startswith("RABBITMQ_PASSWORD_")}
    if overlay == "prod":  # the operator's administrator, expanded into the URL at run time
        assert env["RABBITMQ_MANAGEMENT_URL"]["value"] == \
            "http://$(RABBITMQ_ADMIN_USERNAME):$(RABBITMQ_ADMIN_PASSWORD)@coffeeping-rabbitmq:15672"
        names = [item["name"] for item in spec["env"]]
        assert names.index("RABBITMQ_ADMIN_PASSWORD") < names.index("RABBITMQ_MANAGEMENT_URL")
    else:
        assert "RABBITMQ_MANAGEMENT_URL" not in env
    assert env["RABBITMQ_VHOST"]["value"] == "coffeeping"
    assert env["MESSAGING_PREFIX"]["valueFrom"]["configMapKeyRef"]["key"] == "MESSAGING_PREFIX"
    assert env["MESSAGING_PREFIX"]["valueFrom"]["configMapKeyRef"]["name"].startswith("coffeeping-config-")


def test_every_backend_waits_for_its_schema_s_migrations_of_its_own_release(objects):
    for name, deployment in ours(objects).items():
        service = DEPLOYMENTS[name]
        init = deployment["spec"]["template"]["spec"].get("initContainers", [])
        if service == "auth-gateway":
            assert not init  # no database
            continue
        (wait,) = init
        # The bootstrap image carries every service's migrations: the same release as the service's image.
        assert wait["image"] == f"coffeeping/bootstrap:{container(deployment)['image'].rsplit(':', 1)[1]}"
        assert wait["command"][:5] == ["python", "-m", "coffeeping.common.migrations", "wait", service], name
        assert {item["name"]: item["valueFrom"]["secretKeyRef"] for item in wait["env"]} == {
            "DATABASE_URL": {"name": f"coffeeping-{service}", "key": "database-url"}}


def test_every_coffeeping_image_of_an_overlay_carries_its_release(overlay, objects):
    assert release(objects) == {"base": "0.1.0", "dev": "dev", "prod": "0.2.0"}[overlay]


# -- metrics -------------------------------------------------------------------------------------------
def test_every_process_serves_metrics_on_its_own_named_port(objects):
    for name, deployment in ours(objects).items():
        spec = container(deployment)
        ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
        assert ports["metrics"] == METRICS_PORT, name
        assert {item["name"]: item.get("value") for item in spec["env"]}["METRICS_PORT"] == str(METRICS_PORT)
        assert set(ports) == {"metrics", "http" if name == "auth-gateway" else "grpc"}, name


def test_the_metrics_port_is_never_behind_a_service_or_the_ingress(objects):
    for service in by_kind(objects, "Service").values():
        for port in service["spec"]["ports"]:
            assert METRICS_PORT not in (port["port"], port.get("targetPort")), service["metadata"]["name"]
            assert port.get("targetPort") != "metrics" and port.get("name") != "metrics", service["metadata"]["name"]
    for ingress in by_kind(objects, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                port = path["backend"]["service"]["port"]
                assert port.get("name") == "http" and "number" not in port


def test_the_metrics_port_admits_the_monitoring_namespace_only(objects):
    policies = by_kind(objects, "NetworkPolicy").values()
    for name, deployment in ours(objects).items():
        labels = pod_labels(deployment)
        sources = [rule.get("from", []) for policy in policies if selects(policy["spec"]["podSelector"], labels)
                   and "Ingress" in policy["spec"]["policyTypes"] for rule in policy["spec"].get("ingress", [])
                   if admits_port(rule, "metrics", METRICS_PORT)]
        assert sources == [[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]], \
            name


# -- network policies ------------------------------------------------------------------------------------
def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector matches ``labels``."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def admits_port(rule: dict[str, Any], name: str, number: int, protocol: str = "TCP") -> bool:
    ports = rule.get("ports")
    if not ports:
        return True  # a rule without ports admits every port
    return any(port.get("protocol", "TCP") == protocol and port.get("port") in (name, number, None)
               for port in ports)


@dataclasses.dataclass(frozen=True)
class Pod:
    labels: dict[str, str]
    ports: dict[str, int]
    namespace: str = NAMESPACE


def peers_match(peers: list[dict[str, Any]] | None, pod: Pod | None, address: str | None = None) -> bool:
    """Whether a rule's to/from list admits ``pod`` (in our namespace) or the outside ``address``."""
    if peers is None:
        return True
    for peer in peers:
        same_namespace = "podSelector" in peer and "namespaceSelector" not in peer
        if pod is not None and same_namespace and selects(peer["podSelector"], pod.labels):
            return True
        if address is not None and "ipBlock" in peer:
            if peer["ipBlock"]["cidr"] in ("0.0.0.0/0", "::/0") and address == "internet":
                return True
            if peer["ipBlock"]["cidr"] == address:
                return True
    return False


def egress_rules(objects: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    return [rule for policy in by_kind(objects, "NetworkPolicy").values()
            if "Egress" in policy["spec"]["policyTypes"] and selects(policy["spec"]["podSelector"], labels)
            for rule in policy["spec"].get("egress", [])]


def ingress_rules(objects: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    return [rule for policy in by_kind(objects, "NetworkPolicy").values()
            if "Ingress" in policy["spec"]["policyTypes"] and selects(policy["spec"]["podSelector"], labels)
            for rule in policy["spec"].get("ingress", [])]


def can_connect(objects: list[dict[str, Any]], source: Pod, target: Pod, port_name: str) -> bool:
    port = target.ports[port_name]
    out = any(peers_match(rule.get("to"), target) and admits_port(rule, port_name, port)
              for rule in egress_rules(objects, source.labels))
    into = any(peers_match(rule.get("from"), source) and admits_port(rule, port_name, port)
               for rule in ingress_rules(objects, target.labels))
    return out and into


def reaches_internet(objects: list[dict[str, Any]], labels: dict[str, str], port: int) -> bool:
    return any(peers_match(rule.get("to"), None, "internet") and admits_port(rule, "", port)
               for rule in egress_rules(objects, labels))


def pods(objects: list[dict[str, Any]]) -> dict[str, Pod]:
    found = {}
    for workload in workloads(objects):
        ports = {port["name"]: port["containerPort"] for spec in workload["spec"]["template"]["spec"]["containers"]
                 for port in spec.get("ports", [])}
        found[workload["metadata"]["name"]] = Pod(pod_labels(workload), ports)
    return found


def reads(service: str, variable: str) -> bool:
    settings = importlib.import_module(f"{services.BY_NAME[service].package}.config").Settings
    return variable in {item.metadata["env"] for item in dataclasses.fields(settings)}


def calls(caller: str) -> set[str]:
    """The backends a service's code calls: those whose <NAME>_GRPC_ADDR its settings read."""
    return {name for name in GRPC_SERVICES if reads(caller, name.upper().replace("-", "_") + "_GRPC_ADDR")}


def test_every_pod_is_denied_ingress_and_egress_unless_a_policy_allows_it(objects):
    policies = by_kind(objects, "NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    assert policies["default-deny-egress"]["spec"] == {"podSelector": {}, "policyTypes": ["Egress"]}


def test_every_pod_reaches_the_cluster_dns_and_nothing_else_in_kube_system(objects):
    dns = by_kind(objects, "NetworkPolicy")["dns"]["spec"]
    assert dns["podSelector"] == {}
    (rule,) = dns["egress"]
    assert rule["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                           "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    assert sorted((port["protocol"], port["port"]) for port in rule["ports"]) == [("TCP", 53), ("UDP", 53)]


def test_grpc_connections_are_allowed_exactly_where_the_code_calls(objects):
    found = pods(objects)
    allowed, expected = set(), set()
    for source_name, source in found.items():
        for target_name, target in found.items():
            if target_name in DEPLOYMENTS and "grpc" in target.ports and can_connect(objects, source, target, "grpc"):
                allowed.add((source_name, target_name))
    for name, service in DEPLOYMENTS.items():
        for callee in calls(service):
            # The mailer's API is its Service's only pods; the scheduler answers its own probes alone.
            expected.add((name, "mailer" if callee == "mailer" else callee))
    assert allowed == expected


def test_only_the_services_that_call_google_clerk_or_kms_reach_https_outside_the_cluster(objects):
    found = pods(objects)
    expected = {name for name, service in DEPLOYMENTS.items()
                if any(reads(service, variable) for variable in EXTERNAL_ENDPOINTS)}
    assert expected == {"token-vault", "mailer", "mailer-scheduler", "reply-watcher", "auth-gateway"}
    assert {name for name, pod in found.items() if reaches_internet(objects, pod.labels, 443)} == expected
    # Nothing reaches any other port outside the cluster (the metadata server aside, prod's vault only).
    for name, pod in found.items():
        for rule in egress_rules(objects, pod.labels):
            if rule == {}:
                assert name.startswith(("coffeeping-rabbitmq", "coffeeping-pg")), name
            for peer in rule.get("to", []):
                if "ipBlock" in peer and peer["ipBlock"]["cidr"] in ("0.0.0.0/0", "::/0"):
                    assert [port["port"] for port in rule["ports"]] == [443], name


def test_only_the_backends_and_their_jobs_reach_postgresql_and_rabbitmq(overlay, objects):
    found = pods(objects)
    engines = {"dev": {"postgres": Pod({"app.kubernetes.io/name": "postgres"}, {"pg": 5432}),
                       "rabbitmq": Pod({"app.kubernetes.io/name": "rabbitmq"}, {"amqp": 5672, "mgmt": 15672})},
               "prod": {"postgres": Pod({"cnpg.io/cluster": "coffeeping-pg"}, {"pg": 5432}),
                        "rabbitmq": Pod({"app.kubernetes.io/name": "coffeeping-rabbitmq"},
                                        {"amqp": 5672, "mgmt": 15672})}}
    backends = {name for name, service in DEPLOYMENTS.items() if service in GRPC_SERVICES}
    migrate = next(name for name in found if name.startswith("coffeeping-migrate"))
    broker = next(name for name in found if name.startswith("coffeeping-broker"))
    if overlay == "base":  # the engines' addresses are not known: the ports alone
        for name, pod in found.items():
            for port, allowed in ((5432, backends | {migrate}), (5672, backends), (15672, {broker})):
                reach = any(admits_port(rule, "", port) and rule.get("ports") for rule in egress_rules(objects, pod.labels)
                            if not any("ipBlock" in peer for peer in rule.get("to", [])))
                assert reach == (name in allowed), (name, port)
        return
    postgres, rabbitmq = engines[overlay]["postgres"], engines[overlay]["rabbitmq"]
    assert {name for name, pod in found.items() if can_connect(objects, pod, postgres, "pg")} == backends | {migrate}
    assert {name for name, pod in found.items() if can_connect(objects, pod, rabbitmq, "amqp")} == backends
    assert {name for name, pod in found.items() if can_connect(objects, pod, rabbitmq, "mgmt")} == {broker}


# -- production: scale, disruption, spread, operators ---------------------------------------------------
def test_prod_scales_every_deployment_with_an_hpa_of_at_least_two_that_owns_the_replica_count():
    objects = rendered("prod")
    deployments, hpas = ours(objects), by_kind(objects, "HorizontalPodAutoscaler")
    targets = {}
    for hpa in hpas.values():
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
        assert target["name"] in deployments, f"HPA {hpa['metadata']['name']} targets no Deployment"
        assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        targets[target["name"]] = hpa
    assert set(targets) == set(deployments)
    for name, deployment in deployments.items():
        assert "replicas" not in deployment["spec"], f"{name}: the HPA owns the count; an apply would reset it"


def test_prod_protects_every_deployment_with_a_disruption_budget_of_its_own():
    objects = rendered("prod")
    budgets = by_kind(objects, "PodDisruptionBudget").values()
    for name, deployment in ours(objects).items():
        covering = [b for b in budgets if selects(b["spec"]["selector"], pod_labels(deployment))]
        assert len(covering) == 1, name
        (budget,) = covering
        assert budget["spec"]["maxUnavailable"] == 1
        others = [other for other_name, other in ours(objects).items() if other_name != name]
        assert not any(selects(budget["spec"]["selector"], pod_labels(other)) for other in others), name
    rabbitmq = Pod({"app.kubernetes.io/name": "coffeeping-rabbitmq"}, {})
    assert any(selects(b["spec"]["selector"], rabbitmq.labels) for b in budgets)


def test_prod_spreads_every_deployment_over_zones_and_hosts():
    for name, deployment in ours(rendered("prod")).items():
        constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in constraints} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        for constraint in constraints:
            assert constraint["maxSkew"] == 1
            assert constraint["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"], name


def test_prod_runs_rabbitmq_and_postgresql_by_their_operators_with_three_members():
    objects = rendered("prod")
    (rabbitmq,) = by_kind(objects, "RabbitmqCluster").values()
    assert rabbitmq["apiVersion"] == "rabbitmq.com/v1beta1" and rabbitmq["spec"]["replicas"] == 3
    (postgres,) = by_kind(objects, "Cluster").values()
    assert postgres["apiVersion"] == "postgresql.cnpg.io/v1" and postgres["spec"]["instances"] == 3
    assert postgres["spec"]["bootstrap"]["initdb"]["database"] == "coffeeping"
    assert not by_kind(objects, "StatefulSet"), "no home-made StatefulSet in production"
    # The Jobs and the README point at the names the operators derive from these.
    readme = readme_section("overlays/prod")
    for derived in (f"{postgres['metadata']['name']}-rw", f"{postgres['metadata']['name']}-superuser",
                    rabbitmq["metadata"]["name"], f"{rabbitmq['metadata']['name']}-default-user"):
        assert f"`{derived}`" in readme, derived


def test_the_quorum_queues_that_the_topology_declares_are_what_the_three_nodes_are_for():
    topology = (ROOT / "libs/coffeeping-common/src/coffeeping/common/messaging/topology.py").read_text()
    assert '"x-queue-type": "quorum"' in topology


def test_prod_ships_the_monitoring_component_s_rule_and_pod_monitor():
    objects = rendered("prod")
    kinds = {obj["kind"] for obj in objects}
    assert {"PrometheusRule", "PodMonitor"} <= kinds
    for monitor in by_kind(objects, "PodMonitor").values():
        endpoints = monitor["spec"]["podMetricsEndpoints"]
        assert {endpoint.get("port") for endpoint in endpoints} == {"metrics"}
    # Every process is scraped: the monitor selects every Deployment's pods.
    for name, deployment in ours(objects).items():
        assert any(selects(monitor["spec"]["selector"], pod_labels(deployment))
                   for monitor in by_kind(objects, "PodMonitor").values()), name


def test_prod_carries_production_values_and_no_development_stand_in():
    objects = rendered("prod")
    data = config(objects)
    assert data["COFFEEPING_ENV"] == "production"
    text = json.dumps(objects)
    for stand_in in ("sandbox", "localhost", "example.com", "replace-me", "KMS_ENDPOINT", "TOKEN_VAULT_LOCAL_KEY"):
        assert stand_in not in text, stand_in
    (ingress,) = by_kind(objects, "Ingress").values()
    assert ingress["spec"]["rules"][0]["host"] == "api.coffeeping.io"


# -- the base and the development overlay -----------------------------------------------------------------
def test_the_base_carries_no_production_value_one_replica_and_modest_resources():
    objects = rendered("base")
    assert "coffeeping.io" not in json.dumps(objects)
    (ingress,) = by_kind(objects, "Ingress").values()
    assert ingress["spec"]["rules"][0]["host"].endswith("example.com")
    for name, deployment in ours(objects).items():
        assert deployment["spec"]["replicas"] == 1, name
        resources = container(deployment)["resources"]
        assert resources["limits"]["memory"] in ("384Mi", "512Mi"), name
        assert int(resources["requests"]["cpu"].rstrip("m")) <= 100, name
    assert not by_kind(objects, "HorizontalPodAutoscaler") and not by_kind(objects, "PodDisruptionBudget")


def test_dev_runs_single_replicas_in_cluster_engines_and_no_autoscaler():
    objects = rendered("dev")
    for name, workload in [*by_kind(objects, "Deployment").items(), *by_kind(objects, "StatefulSet").items()]:
        assert workload["spec"]["replicas"] == 1, name
    assert set(by_kind(objects, "StatefulSet")) == {"postgres", "rabbitmq"}
    assert not by_kind(objects, "HorizontalPodAutoscaler") and not by_kind(objects, "PodDisruptionBudget")
    assert not by_kind(objects, "RabbitmqCluster") and not by_kind(objects, "Cluster")
    assert config(objects)["KMS_ENDPOINT"] == "sandbox:8703"


def test_dev_secrets_script_writes_exactly_the_secrets_dev_reads_and_they_agree(tmp_path):
    done = subprocess.run([sys.executable, str(K8S / "overlays" / "dev" / "dev_secrets.py"), "--state", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    made = {doc["metadata"]["name"]: doc for doc in YAML(typ="safe").load_all(done.stdout) if doc}
    for secret in made.values():
        kubernetes_validate.validate(secret, KUBERNETES, strict=True)
    objects = rendered("dev")
    wanted = {pair for workload in workloads(objects) for pair in secret_keys_referenced(workload)}
    assert {name for name, _ in wanted} == set(made)
    for name, key in wanted:
        if key is not None:
            assert key in made[name]["stringData"], (name, key)
    data = {name: secret["stringData"] for name, secret in made.items()}
    roles = data["coffeeping-db-roles"]
    for service, schema in (("accounts", "accounts"), ("token-vault", "vault"), ("mailer", "mailer"),
                            ("reply-watcher", "watcher")):
        url = data[f"coffeeping-{service}"]["database-url"]
        assert url.startswith(f"postgresql://cp_{schema}:") and f":{roles[f'PG_PASSWORD_CP_{schema.upper()}']}@" in url
        assert "@postgres:5432/coffeeping" in url
        broker = data["coffeeping-broker-admin"][f"RABBITMQ_PASSWORD_{service.upper().replace('-', '_')}"]
        assert data[f"coffeeping-{service}"]["rabbitmq-url"] == \
            f"amqp://coffeeping-{service}:{broker}@rabbitmq:5672/coffeeping"
    assert data["coffeeping-sandbox"]["google-client-secret"] == data["coffeeping-token-vault"]["google-client-secret"]
    admin = data["coffeeping-dev-rabbitmq"]
    assert data["coffeeping-broker-admin"]["RABBITMQ_MANAGEMENT_URL"] == \
        f"http://{admin['username']}:{admin['password']}@rabbitmq:15672"
    assert data["coffeeping-db-admin"]["url"] == \
        f"postgresql://postgres:{data['coffeeping-dev-postgres']['password']}@postgres:5432/postgres"
    for service in SERVICE_NAMES:  # issued for the Service's names only, as cert-manager would
        cert = x509.load_pem_x509_certificate(data[f"coffeeping-mtls-{service}"]["tls.crt"].encode())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName)[0] == service
        assert not names.get_values_for_type(x509.IPAddress)
        assert "PRIVATE KEY" not in data[f"coffeeping-mtls-{service}"]["ca.crt"]
    # Applying again changes nothing: the values are kept in the state directory.
    again = subprocess.run([sys.executable, str(K8S / "overlays" / "dev" / "dev_secrets.py"), "--state", str(tmp_path)],
                           capture_output=True, text=True, timeout=120)
    assert again.stdout == done.stdout


# -- config changes roll the pods ------------------------------------------------------------------------
@pytest.fixture
def k8s_copy(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "k8s"
    shutil.copytree(K8S, target)
    yield target


def config_name(objects: list[dict[str, Any]]) -> str:
    (name,) = [name for name in by_kind(objects, "ConfigMap") if name.startswith("coffeeping-config-")]
    return name


@pytest.mark.parametrize("where,path", [("base", "base/config.env"), ("dev", "overlays/dev/config.env"),
                                        ("prod", "overlays/prod/config.env")])
def test_a_changed_setting_renames_the_config_map_and_every_deployment_follows(k8s_copy, where, path):
    directory = k8s_copy / "base" if where == "base" else k8s_copy / "overlays" / where
    before = kustomize(directory)
    env_file = k8s_copy / path
    text = env_file.read_text()
    env_file.write_text(re.sub(r"(?m)^LOG_LEVEL=.*$", "LOG_LEVEL=DEBUG", text) if "\nLOG_LEVEL=" in text
                        else text + "LOG_LEVEL=DEBUG\n")
    after = kustomize(directory)
    assert config_name(after) != config_name(before)
    assert config(after)["LOG_LEVEL"] == "DEBUG"
    for deployment in ours(after).values():
        assert container(deployment)["envFrom"] == [{"configMapRef": {"name": config_name(after)}}]


# -- the README ------------------------------------------------------------------------------------------
def readme_section(title: str) -> str:
    readme = (K8S / "README.md").read_text()
    section = readme[readme.index(f"## {title}"):]
    end = section.find("\n## ", 1)
    return section if end < 0 else section[:end]


def listed_secrets(section: str) -> set[str]:
    return set(re.findall(r"^\| `([a-z0-9<>-]+)`", section, flags=re.MULTILINE))


def referenced_secrets(objects: list[dict[str, Any]]) -> set[str]:
    found = {name for workload in workloads(objects) for name in secrets_referenced(workload)}
    for ingress in by_kind(objects, "Ingress").values():
        found |= {entry["secretName"] for entry in ingress["spec"]["tls"]}
    return found


def test_the_readme_lists_exactly_the_secrets_the_base_references():
    referenced = referenced_secrets(rendered("base"))
    listed = listed_secrets(readme_section("Secrets the base references"))
    templated = {name for name in referenced if name.startswith("coffeeping-mtls-")}
    assert listed == (referenced - templated) | {"coffeeping-mtls-<service>"}
    assert templated == {f"coffeeping-mtls-{name}" for name in OWN_SECRETS}


def test_the_readme_says_which_secrets_prod_s_operators_generate_and_which_you_create():
    referenced = referenced_secrets(rendered("prod"))
    section = readme_section("overlays/prod")
    generated = {"coffeeping-pg-superuser", "coffeeping-rabbitmq-default-user"}
    assert generated <= referenced
    assert listed_secrets(section) == (referenced - {f"coffeeping-mtls-{name}" for name in OWN_SECRETS}) | {
        "coffeeping-mtls-<service>"}


def build_commands(text: str) -> list[list[str]]:
    """Every `docker build` command in the text, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [shlex.split(line[line.index("docker build"):], comments=True) for line in joined.splitlines()
            if "docker build" in line]


def test_the_readme_builds_each_service_image_from_the_one_dockerfile_with_compose_s_arguments():
    objects = rendered("base")
    section = readme_section("Images")
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip().strip("`") for cell in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[2:]:
        cells = [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        table[cells[0]] = dict(zip(header[1:], cells[1:], strict=True))
    compose = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())["services"]
    deployments = ours(objects)
    assert set(table) == {container(deployment)["image"].split(":")[0] for deployment in deployments.values()}
    for name, deployment in deployments.items():
        service = DEPLOYMENTS[name]
        args = table[f"coffeeping/{service}"]
        build = compose[service]["build"]
        assert build["dockerfile"] == "deploy/Dockerfile", name
        assert args == {key: str(value) for key, value in build["args"].items()}, name
        spec = container(deployment)
        ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
        assert ports["grpc" if args["HEALTH_PROBE"] == "grpc" else "http"] == int(args["SERVICE_PORT"]), name
        if args["HEALTH_PROBE"] == "grpc":
            assert all(spec[probe]["exec"]["command"][:2] == ["python", "/app/grpc_health_probe.py"]
                       for probe in ("readinessProbe", "livenessProbe")), name
        else:
            assert spec["readinessProbe"]["httpGet"]["path"] == "/healthz", name
    # Each example command builds from a Dockerfile that exists; one from deploy/Dockerfile passes the
    # arguments of the image it tags.
    built = set()
    for command in build_commands(section):
        options = dict(zip(command[2::2], command[3::2], strict=False))
        assert (ROOT / options["-f"]).is_file(), command
        image = options["-t"].split(":")[0]
        built.add(image)
        if options["-f"] == "deploy/Dockerfile":
            passed = dict(value.split("=", 1) for flag, value in zip(command, command[1:], strict=False)
                          if flag == "--build-arg")
            assert passed == table[image], command
    # Every image the kustomization deploys is built by the table or by a command.
    kustomization = YAML(typ="safe").load((BASE / "kustomization.yaml").read_text())
    assert {image["name"] for image in kustomization["images"]} <= set(table) | built
    assert {"coffeeping/bootstrap"} <= built
    dev = YAML(typ="safe").load((K8S / "overlays" / "dev" / "kustomization.yaml").read_text())
    assert {image["name"] for image in dev["images"]} <= set(table) | built


def test_docker_compose_runs_the_mailer_as_the_same_two_roles():
    compose = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())["services"]
    deployments = ours(rendered("base"))
    for name, role in MAILER_ROLES.items():
        spec = compose[name]
        env = {item["name"]: item.get("value") for item in container(deployments[name])["env"]}
        assert spec["environment"]["MAILER_ROLE"] == role == env["MAILER_ROLE"]
        assert spec["image"] == "coffeeping/mailer:dev" and spec["build"] == compose["mailer"]["build"]
        assert spec["volumes"][0]["volume"]["subpath"] == "mailer"  # the mailer's certificate and secrets
    assert compose["auth-gateway"]["environment"]["MAILER_GRPC_ADDR"] == "mailer:50053"
