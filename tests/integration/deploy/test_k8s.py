"""The Kubernetes base in deploy/k8s/base, checked offline: every service is deployed and probed,
secrets are referenced and never inlined, each service reads only its own Secret and its own mTLS
Secret, the Jobs run without development fallbacks, the gateway is reached over HTTPS only, and every
image is built as deploy/k8s/README.md says (the services from deploy/Dockerfile, with the build
arguments docker-compose.yml passes)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[3]
BASE = ROOT / "deploy" / "k8s" / "base"
GRPC_SERVICES = {"accounts": 50051, "token-vault": 50052, "mailer": 50053, "reply-watcher": 50054}
SECRET_SETTINGS = {"DATABASE_URL", "RABBITMQ_URL", "GOOGLE_CLIENT_SECRET", "CLERK_WEBHOOK_SECRET",
                   "OAUTH_STATE_SECRET", "TOKEN_VAULT_LOCAL_KEY", "ADMIN_DATABASE_URL",
                   "TOMBSTONE_KEY", "RABBITMQ_MANAGEMENT_URL"}
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
# The Jobs: (command, the Secrets they may read).
JOBS = {
    "coffeeping-migrate": (["python", "deploy/bootstrap_db.py"], {"coffeeping-db-admin", "coffeeping-db-roles"}),
    "coffeeping-broker": (["python", "deploy/bootstrap_broker.py"], {"coffeeping-broker-admin"}),
}


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    kustomization = YAML(typ="safe").load((BASE / "kustomization.yaml").read_text())
    found = []
    for resource in kustomization["resources"]:
        found += [doc for doc in YAML(typ="safe").load_all((BASE / resource).read_text()) if doc]
    return found


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def secrets_referenced(workload: dict[str, Any]) -> set[str]:
    """Every Secret a workload's pod can read: env, envFrom and volumes (projected ones too)."""
    pod = workload["spec"]["template"]["spec"]
    names = set()
    for spec in [*pod.get("initContainers", []), *pod["containers"]]:
        for item in spec.get("env", []):
            if "secretKeyRef" in item.get("valueFrom", {}):
                names.add(item["valueFrom"]["secretKeyRef"]["name"])
        for source in spec.get("envFrom", []):
            if "secretRef" in source:
                names.add(source["secretRef"]["name"])
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            names.add(volume["secret"]["secretName"])
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                names.add(source["secret"]["name"])
    return names


def test_every_service_has_a_deployment_and_a_service_that_selects_it(objects):
    deployments, services = by_kind(objects, "Deployment"), by_kind(objects, "Service")
    assert set(deployments) == set(GRPC_SERVICES) | {"auth-gateway"}
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert services[name]["spec"]["selector"].items() <= labels.items()
        assert container(deployment)["image"] == f"coffeeping/{name}"


def test_grpc_services_are_probed_over_mtls_with_the_health_probe_on_their_own_port(objects):
    deployments, services = by_kind(objects, "Deployment"), by_kind(objects, "Service")
    for name, port in GRPC_SERVICES.items():
        spec = container(deployments[name])
        probe_command = ["python", "/app/grpc_health_probe.py", "--addr", f"127.0.0.1:{port}"]
        for probe in ("startupProbe", "readinessProbe"):  # readiness: its own database and broker
            assert spec[probe]["exec"]["command"] == probe_command, (name, probe)
        # Liveness: the process and its worker threads only (a database outage must not restart pods).
        assert spec["livenessProbe"]["exec"]["command"] == [*probe_command, "--service", "liveness"], name
        env = {item["name"]: item for item in spec["env"]}
        assert env["GRPC_PORT"]["value"] == str(port)
        assert services[name]["spec"]["ports"][0]["port"] == port


def test_the_gateway_is_ready_on_healthz_and_alive_on_a_route_without_io(objects):
    spec = container(by_kind(objects, "Deployment")["auth-gateway"])
    assert spec["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/.well-known/security.txt"


def test_secrets_are_referenced_from_secret_objects_and_never_inlined(objects):
    assert not by_kind(objects, "Secret"), "the base must not carry Secret objects"
    workloads = [*by_kind(objects, "Deployment").values(), *by_kind(objects, "Job").values()]
    for workload in workloads:
        for spec in workload["spec"]["template"]["spec"]["containers"]:
            for item in spec.get("env", []):
                if item["name"] in SECRET_SETTINGS:
                    assert "secretKeyRef" in item.get("valueFrom", {}), (workload["metadata"]["name"], item["name"])
    config = by_kind(objects, "ConfigMap")["coffeeping-config"]["data"]
    assert not SECRET_SETTINGS & set(config)


def test_each_service_mounts_its_own_mtls_certificate_from_a_secret(objects):
    for name, deployment in by_kind(objects, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert volumes["mtls"]["secret"]["secretName"] == f"coffeeping-mtls-{name}"
        spec = container(deployment)
        mounts = {mount["name"]: mount for mount in spec["volumeMounts"]}
        assert mounts["mtls"]["readOnly"] is True
        env = {item["name"]: item.get("value", "") for item in spec["env"]}
        base = mounts["mtls"]["mountPath"]
        assert {env["TLS_CA_CERT"], env["TLS_CERT"], env["TLS_KEY"]} == {
            f"{base}/ca.crt", f"{base}/tls.crt", f"{base}/tls.key"}


def test_pods_run_as_non_root_without_privileges_or_a_writable_root(objects):
    workloads = [*by_kind(objects, "Deployment").values(), *by_kind(objects, "Job").values()]
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for spec in pod["containers"]:
            context = spec["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]


def test_service_addresses_use_the_service_names_on_their_certificates(objects):
    config = by_kind(objects, "ConfigMap")["coffeeping-config"]["data"]
    for variable, name in (("ACCOUNTS_GRPC_ADDR", "accounts"), ("TOKEN_VAULT_GRPC_ADDR", "token-vault"),
                           ("MAILER_GRPC_ADDR", "mailer"), ("REPLY_WATCHER_GRPC_ADDR", "reply-watcher")):
        assert config[variable] == f"{name}:{GRPC_SERVICES[name]}"


def test_the_ingress_serves_the_gateway_over_tls_only(objects):
    (ingress,) = by_kind(objects, "Ingress").values()
    tls_hosts = {host for entry in ingress["spec"]["tls"] for host in entry["hosts"]}
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] in tls_hosts
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"]["name"] == "auth-gateway"
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_base():
    rendered = subprocess.run(["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    assert "namespace: coffeeping" in rendered.stdout


def test_each_deployment_reads_only_its_own_secret_and_its_own_mtls_secret(objects):
    for name, deployment in by_kind(objects, "Deployment").items():
        assert secrets_referenced(deployment) == {f"coffeeping-{name}", f"coffeeping-mtls-{name}"}, name
        env = {item["name"]: item for item in container(deployment)["env"]}
        for setting, key in OWN_SECRETS[name].items():
            assert env[setting]["valueFrom"]["secretKeyRef"] == {"name": f"coffeeping-{name}", "key": key}, (name, setting)
        # No other secret setting slips in (another service's, or one from the ConfigMap).
        assert SECRET_SETTINGS & set(env) == set(OWN_SECRETS[name]), name
        assert not container(deployment).get("envFrom", []) or all(
            "configMapRef" in source for source in container(deployment)["envFrom"]), name


def test_the_gateway_gets_no_database_and_no_broker_login(objects):
    spec = container(by_kind(objects, "Deployment")["auth-gateway"])
    names = {item["name"] for item in spec["env"]}
    assert not {"DATABASE_URL", "RABBITMQ_URL"} & names


def test_no_secret_is_shared_between_services(objects):
    readers: dict[str, set[str]] = {}
    for workload in [*by_kind(objects, "Deployment").values(), *by_kind(objects, "Job").values()]:
        for secret in secrets_referenced(workload):
            readers.setdefault(secret, set()).add(workload["metadata"]["name"])
    shared = {secret: names for secret, names in readers.items() if len(names) > 1}
    assert not shared, shared
    for gone in ("coffeeping-rabbitmq", "coffeeping-tombstones", "coffeeping-google-oauth", "coffeeping-gateway"):
        assert gone not in readers


def test_the_jobs_run_their_script_without_development_fallbacks_and_read_only_their_secrets(objects):
    jobs = by_kind(objects, "Job")
    assert set(jobs) == set(JOBS)
    for name, (command, allowed) in JOBS.items():
        pod = jobs[name]["spec"]["template"]["spec"]
        (spec,) = pod["containers"]
        assert spec["image"] == "coffeeping/bootstrap"
        assert spec["command"] == command and not spec.get("args"), name
        assert "--dev" not in " ".join(spec["command"] + spec.get("args", [])), name
        assert secrets_referenced(jobs[name]) == allowed, name
        assert not any(secret.startswith("coffeeping-mtls-") for secret in secrets_referenced(jobs[name]))
        assert pod["restartPolicy"] in ("OnFailure", "Never")


def test_the_broker_job_reads_the_management_url_and_every_password_from_its_secret(objects):
    (spec,) = by_kind(objects, "Job")["coffeeping-broker"]["spec"]["template"]["spec"]["containers"]
    assert {"secretRef": {"name": "coffeeping-broker-admin"}} in spec["envFrom"]
    env = {item["name"]: item for item in spec.get("env", [])}
    # The management URL and the passwords come from the Secret alone, never inlined.
    assert not {name for name in env if name.startswith("RABBITMQ_PASSWORD_")} and "RABBITMQ_MANAGEMENT_URL" not in env
    assert env["RABBITMQ_VHOST"]["value"] == "coffeeping"
    assert env["MESSAGING_PREFIX"]["valueFrom"]["configMapKeyRef"] == {"name": "coffeeping-config",
                                                                       "key": "MESSAGING_PREFIX"}


def test_the_readme_lists_exactly_the_secrets_the_base_references(objects):
    referenced = set()
    for workload in [*by_kind(objects, "Deployment").values(), *by_kind(objects, "Job").values()]:
        referenced |= secrets_referenced(workload)
    for ingress in by_kind(objects, "Ingress").values():
        referenced |= {entry["secretName"] for entry in ingress["spec"]["tls"]}
    readme = (ROOT / "deploy" / "k8s" / "README.md").read_text()
    section = readme[readme.index("## Secrets the base references"):]
    section = section[:section.index("\n## ", 1)]
    listed = set(re.findall(r"^\| `([a-z0-9<>-]+)`", section, flags=re.MULTILINE))
    templated = {name for name in referenced if name.startswith("coffeeping-mtls-")}
    assert listed == (referenced - templated) | {"coffeeping-mtls-<service>"}
    assert templated == {f"coffeeping-mtls-{name}" for name in OWN_SECRETS}


def readme_section(title: str) -> str:
    readme = (ROOT / "deploy" / "k8s" / "README.md").read_text()
    section = readme[readme.index(f"## {title}"):]
    return section[:section.index("\n## ", 1)]


def build_commands(text: str) -> list[list[str]]:
    """Every `docker build` command in the text, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [shlex.split(line[line.index("docker build"):], comments=True) for line in joined.splitlines()
            if "docker build" in line]


def test_the_readme_builds_each_service_image_from_the_one_dockerfile_with_compose_s_arguments(objects):
    section = readme_section("Images")
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip().strip("`") for cell in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[2:]:
        cells = [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        table[cells[0]] = dict(zip(header[1:], cells[1:], strict=True))
    compose = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())["services"]
    deployments = by_kind(objects, "Deployment")
    assert set(table) == {container(deployment)["image"] for deployment in deployments.values()}
    for name, deployment in deployments.items():
        args = table[container(deployment)["image"]]
        build = compose[name]["build"]
        assert build["dockerfile"] == "deploy/Dockerfile", name
        assert args == {key: str(value) for key, value in build["args"].items()}, name
        spec = container(deployment)
        assert [port["containerPort"] for port in spec["ports"]] == [int(args["SERVICE_PORT"])], name
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
