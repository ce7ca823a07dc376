"""docker-compose.yml and the Dockerfiles, checked offline (no Docker engine here).

The compose file must run the same system as ``deploy/stack.py``: the same settings for every service,
health checks everywhere, and start-up ordered by ``depends_on`` conditions that name real services.
And each container holds only what it needs: its own certificate and key, the CA certificate (never the
CA key) and its own secrets, from its own folder of the ``devstate`` volume, which the bootstrap writes
(``deploy/bootstrap_db.py --dev --dev-state``; the tests below run that code into a temporary folder).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy"))

from bootstrap_db import (  # noqa: E402
    BACKEND_SCHEMAS,
    CONTAINER_SECRETS,
    MTLS_CONTAINERS,
    password_variable,
    roles,
    write_dev_state,
)
from stack import SERVICES, StackConfig  # noqa: E402

# compose service name -> (folder with its Dockerfile, module its CMD runs)
IMAGES = {
    "accounts": ("services/accounts", "coffeeping_accounts"),
    "token-vault": ("services/token-vault", "coffeeping_vault"),
    "mailer": ("services/mailer", "coffeeping_mailer"),
    "reply-watcher": ("services/reply-watcher", "coffeeping_watcher"),
    "auth-gateway": ("services/auth-gateway", "coffeeping_gateway"),
    "sandbox": ("deploy/sandbox", "coffeeping_sandbox"),
}
ONE_SHOT = {"bootstrap"}
# Set by the image itself, or only meaningful for child processes on this machine.
PROCESS_ONLY = {"PATH", "HOME", "PYTHONUNBUFFERED"}
STATE = "/var/lib/coffeeping"  # the bootstrap's view of the devstate volume
OWN = "/etc/coffeeping"  # where every other container mounts its own folder of it


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def bootstrap_env(services: dict[str, Any]) -> dict[str, str]:
    return services["bootstrap"]["environment"]


@pytest.fixture(scope="module")
def dev_state(tmp_path_factory: pytest.TempPathFactory, bootstrap_env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """What the compose bootstrap writes into the devstate volume, with the bootstrap's own settings."""
    state = tmp_path_factory.mktemp("devstate")
    values = write_dev_state(state, bootstrap_env["ADMIN_DATABASE_URL"], bootstrap_env["COFFEEPING_DB"],
                             bootstrap_env["RABBITMQ_URL"], bootstrap_env["RABBITMQ_VHOST"],
                             bootstrap_env["MESSAGING_PREFIX"])
    return state, values


def read_secrets(path: Path) -> dict[str, str]:
    """A secrets.env as the container's shell sources it."""
    found = {}
    for line in path.read_text().splitlines():
        (assignment,) = shlex.split(line)
        key, _, value = assignment.partition("=")
        found[key] = value
    return found


def devstate_mounts(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every mount of the devstate volume, in long syntax."""
    mounts = []
    for volume in spec.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            volume = {"type": "volume", "source": source, "target": target, "read_only": mode == ["ro"]}
        if volume.get("source") == "devstate":
            mounts.append(volume)
    return mounts


def dockerfile(folder: str) -> str:
    return (ROOT / folder / "Dockerfile").read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def final_stage(text: str) -> list[tuple[str, str]]:
    steps = instructions(text)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return value


def test_the_five_services_the_stand_ins_and_the_infrastructure_are_all_present(services):
    assert set(SERVICES) | {"postgres", "rabbitmq", "sandbox", "bootstrap"} <= set(services)


def test_every_long_running_service_has_a_healthcheck(services):
    for name, spec in services.items():
        if name in ONE_SHOT:
            continue
        check = spec.get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), f"{name} has no healthcheck"


def test_depends_on_names_existing_services_with_conditions_they_can_meet(services):
    for name, spec in services.items():
        for dependency, rule in (spec.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert services[dependency].get("healthcheck"), f"{name} waits for {dependency}'s missing healthcheck"
            elif condition == "service_completed_successfully":
                assert services[dependency].get("restart") == "no", f"{dependency} is not a one-shot job"
            else:
                pytest.fail(f"{name} waits for {dependency} with weak condition {condition}")


def test_services_wait_for_bootstrap_and_healthy_infrastructure_and_the_gateway_for_its_backends(services):
    for name in SERVICES:
        needs = services[name]["depends_on"]
        assert needs["bootstrap"]["condition"] == "service_completed_successfully"
        for infra in ("postgres", "rabbitmq", "sandbox"):
            assert needs[infra]["condition"] == "service_healthy", (name, infra)
    gateway_needs = services["auth-gateway"]["depends_on"]
    for backend in set(SERVICES) - {"auth-gateway"}:
        assert gateway_needs[backend]["condition"] == "service_healthy"


def test_each_image_has_a_dockerfile_whose_cmd_runs_the_module_and_compose_runs_the_same(services):
    for name, (folder, module) in IMAGES.items():
        assert importlib.util.find_spec(module) is not None, f"{module} is not importable"
        steps = final_stage(dockerfile(folder))
        cmd = exec_form(next(args for word, args in reversed(steps) if word == "CMD"))
        assert cmd[:3] == ["python", "-m", module], f"{folder}/Dockerfile CMD is {cmd}"
        spec = services[name]
        assert spec["build"] == {"context": ".", "dockerfile": f"{folder}/Dockerfile"}
        command = spec.get("command")
        if name in SERVICES:
            # The compose entrypoint clears the image CMD, so it must be repeated exactly.
            assert command == cmd
        elif command is not None:
            assert f"python -m {module}" in " ".join(command)


def test_images_build_from_python_311_slim_generate_the_stubs_and_run_as_a_non_root_user():
    for folder, _module in [*IMAGES.values(), ("deploy/bootstrap", "")]:
        steps = instructions(dockerfile(folder))
        assert all(args.split()[0] == "python:3.11-slim" for word, args in steps if word == "FROM"), folder
        users = [args for word, args in final_stage(dockerfile(folder)) if word == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{folder} runs as root"
        runs = " ".join(args for word, args in steps if word == "RUN")
        assert "-e " not in runs and "--editable" not in runs, f"{folder} installs in editable mode"
        if folder.startswith("services/") or folder == "deploy/bootstrap":
            assert "grpcio-tools" in runs and "python deploy/gen_protos.py" in runs, folder
            copied = " ".join(args for word, args in steps if word == "COPY")
            assert "protos/" in copied and "libs/coffeeping-common/" in copied, folder


def test_grpc_images_carry_the_health_probe_their_healthcheck_runs(services):
    probe = ROOT / "deploy" / "grpc_health_probe.py"
    assert probe.exists()
    for name in set(SERVICES) - {"auth-gateway"}:
        folder = IMAGES[name][0]
        copies = [args for word, args in final_stage(dockerfile(folder)) if word == "COPY"]
        assert "deploy/grpc_health_probe.py /app/grpc_health_probe.py" in copies, folder
        assert services[name]["healthcheck"]["test"] == ["CMD", "python", "/app/grpc_health_probe.py"]


def test_each_service_gets_every_setting_the_run_command_gives_it(services, dev_state, tmp_path):
    _state, generated = dev_state
    for name in SERVICES:
        local = set(StackConfig(var_dir=tmp_path).env(name)) - PROCESS_ONLY
        # The local stack hands every process every generated secret; a container gets its own only.
        wanted = (local - set(generated)) | (local & set(CONTAINER_SECRETS[name]))
        env = services[name]["environment"]
        own = set(read_secrets(_state / name / "secrets.env"))
        provided = set(env) | own
        assert wanted <= provided, f"{name} lacks {sorted(wanted - provided)}"
        # Secrets and URLs with passwords come from the container's own secrets.env, never from the
        # compose file itself.
        inlined = (set(generated) | {"DATABASE_URL", "RABBITMQ_URL"}) & set(env)
        assert not inlined, f"{name} inlines {sorted(inlined)}"


def test_service_addresses_and_certificates_point_at_the_right_containers_and_files(services):
    ports = {name: services[name]["environment"].get("GRPC_PORT") for name in SERVICES}
    env = services["auth-gateway"]["environment"]
    for variable, target in (("ACCOUNTS_GRPC_ADDR", "accounts"), ("VAULT_GRPC_ADDR", "token-vault"),
                             ("MAILER_GRPC_ADDR", "mailer"), ("WATCHER_GRPC_ADDR", "reply-watcher")):
        # The host name must be the service name: it is a SAN of that service's certificate.
        assert env[variable] == f"{target}:{ports[target]}"
    for name in SERVICES:
        service_env = services[name]["environment"]
        # Its own folder holds its own certificate under these names (see the dev-state tests).
        assert (service_env["TLS_CA_CERT"], service_env["TLS_CERT"], service_env["TLS_KEY"]) == (
            f"{OWN}/ca.crt", f"{OWN}/tls.crt", f"{OWN}/tls.key")


def test_only_the_bootstrap_mounts_the_whole_devstate_volume(services):
    (mount,) = devstate_mounts(services["bootstrap"])
    assert mount["target"] == STATE and not mount.get("volume", {}).get("subpath")
    for name, spec in services.items():
        if name == "bootstrap":
            continue
        for mount in devstate_mounts(spec):
            # Its own folder only, read-only: never certs/ (the CA key) or dev-secrets.env (every secret).
            assert mount["type"] == "volume", name
            assert mount.get("volume", {}).get("subpath") == name, f"{name} mounts {mount}"
            assert mount["read_only"] is True, name
            assert mount["target"] == OWN, name


def test_every_container_with_secrets_sources_its_own_secrets_file_and_nothing_else(services):
    for name in CONTAINER_SECRETS:
        spec = services[name]
        (mount,) = devstate_mounts(spec)
        assert mount["volume"]["subpath"] == name
        entrypoint = spec["entrypoint"]
        assert entrypoint[:2] == ["/bin/sh", "-c"]
        script = entrypoint[2]
        assert re.findall(r"\.\s+(\S+)", script) == [f"{OWN}/secrets.env"], script
        assert STATE not in " ".join(entrypoint) and "dev-secrets.env" not in " ".join(entrypoint)


def test_the_dev_state_gives_each_container_its_own_certificate_and_the_ca_certificate_never_the_ca_key(dev_state):
    state, _ = dev_state
    certs = state / "certs"
    ca_key = (certs / "ca-key.pem").read_bytes()
    other_keys = {path.name: path.read_bytes() for path in certs.glob("*-key.pem")}
    for container in CONTAINER_SECRETS:
        folder = state / container
        files = {path.name for path in folder.iterdir()}
        if container in MTLS_CONTAINERS:
            assert files == {"ca.crt", "tls.crt", "tls.key", "secrets.env"}, container
            assert (folder / "ca.crt").read_bytes() == (certs / "ca.pem").read_bytes()
            assert (folder / "tls.crt").read_bytes() == (certs / f"{container}.pem").read_bytes()
            assert (folder / "tls.key").read_bytes() == (certs / f"{container}-key.pem").read_bytes()
            assert (folder / "tls.key").stat().st_mode & 0o077 == 0, container
        else:
            assert files == {"secrets.env"}, container
        assert (folder / "secrets.env").stat().st_mode & 0o077 == 0, container
        for path in folder.iterdir():
            data = path.read_bytes()
            assert ca_key not in data, f"{container}/{path.name} holds the CA key"
            for key_name, key in other_keys.items():
                if key_name != f"{container}-key.pem":
                    assert key not in data, f"{container}/{path.name} holds {key_name}"


def test_the_dev_state_gives_each_container_only_its_own_secrets(dev_state):
    state, generated = dev_state
    for container, names in CONTAINER_SECRETS.items():
        own = read_secrets(state / container / "secrets.env")
        expected = set(names)
        if container in BACKEND_SCHEMAS:
            expected |= {"DATABASE_URL", "RABBITMQ_URL", password_variable(f"cp_{BACKEND_SCHEMAS[container]}"),
                         "RABBITMQ_PASSWORD_" + container.upper().replace("-", "_")}
        assert set(own) == expected, container
        for key in set(own) & set(generated):
            assert own[key] == generated[key], (container, key)
        # No value of a secret it was not given hides in another variable (a URL, say).
        text = (state / container / "secrets.env").read_text()
        for key, value in generated.items():
            if key not in own:
                assert value not in text, f"{container} holds the value of {key}"


def test_each_backend_reaches_the_database_and_the_broker_as_its_own_login_and_the_gateway_not_at_all(
        services, dev_state, bootstrap_env):
    state, generated = dev_state
    for container, schema in BACKEND_SCHEMAS.items():
        own = read_secrets(state / container / "secrets.env")
        database = urlsplit(own["DATABASE_URL"])
        assert database.username == f"cp_{schema}"
        assert unquote(database.password) == generated[password_variable(f"cp_{schema}")]
        assert (database.hostname, database.port, database.path) == ("postgres", 5432, "/coffeeping")
        broker = urlsplit(own["RABBITMQ_URL"])
        assert broker.scheme == "amqp"
        assert broker.username == f"coffeeping-{container}"
        assert unquote(broker.password) == own["RABBITMQ_PASSWORD_" + container.upper().replace("-", "_")]
        assert (broker.hostname, broker.port, broker.path) == ("rabbitmq", 5672, f"/{bootstrap_env['RABBITMQ_VHOST']}")
    gateway = read_secrets(state / "auth-gateway" / "secrets.env")
    for variable in ("RABBITMQ_URL", "DATABASE_URL"):
        assert variable not in gateway and variable not in services["auth-gateway"]["environment"]
    assert not any(key.startswith(("RABBITMQ_", "PG_PASSWORD_")) for key in gateway)


def test_the_bootstrap_prepares_the_dev_state_then_the_database_then_the_broker(services, bootstrap_env):
    spec = services["bootstrap"]
    script = spec["command"][-1]
    steps = [step.strip() for step in script.split("&&")]
    db = steps.index(f"python deploy/bootstrap_db.py --dev --dev-state {STATE}")
    broker = next(i for i, step in enumerate(steps) if step.endswith("python deploy/bootstrap_broker.py --dev"))
    # The broker script gets the generated passwords (RABBITMQ_PASSWORD_<LOGIN>) from the environment.
    sourced = steps.index(f". {STATE}/dev-secrets.env")
    assert db < sourced < broker and steps[sourced - 1] == "set -a"
    management = urlsplit(bootstrap_env["RABBITMQ_MANAGEMENT_URL"])
    assert (management.hostname, management.port) == ("rabbitmq", 15672)
    # guest may only log in from inside the broker's container: the administrator is the default user.
    rabbitmq = services["rabbitmq"]
    assert rabbitmq["image"] == "rabbitmq:3.13-management"
    assert (management.username, management.password) == (
        rabbitmq["environment"]["RABBITMQ_DEFAULT_USER"], rabbitmq["environment"]["RABBITMQ_DEFAULT_PASS"])
    assert spec["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert spec["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert bootstrap_env["RABBITMQ_VHOST"] == "coffeeping"
    for name in SERVICES:
        assert services[name]["environment"]["MESSAGING_PREFIX"] == bootstrap_env["MESSAGING_PREFIX"]


def test_the_bootstrap_image_carries_both_scripts_and_its_default_command_is_not_for_development():
    steps = final_stage(dockerfile("deploy/bootstrap"))
    copied = " ".join(args for word, args in steps if word == "COPY")
    assert "deploy/bootstrap_db.py" in copied and "deploy/bootstrap_broker.py" in copied
    assert "requests" in " ".join(args for word, args in instructions(dockerfile("deploy/bootstrap")) if word == "RUN")
    cmd = exec_form(next(args for word, args in reversed(steps) if word == "CMD"))
    assert cmd == ["python", "deploy/bootstrap_db.py"]


def test_the_dev_state_is_idempotent_and_keeps_its_passwords(dev_state, bootstrap_env):
    state, generated = dev_state
    again = write_dev_state(state, bootstrap_env["ADMIN_DATABASE_URL"], bootstrap_env["COFFEEPING_DB"],
                            bootstrap_env["RABBITMQ_URL"], bootstrap_env["RABBITMQ_VHOST"],
                            bootstrap_env["MESSAGING_PREFIX"])
    assert again == generated
    assert {password_variable(role) for role in roles()} <= set(generated)


def test_gateway_trusts_the_issuer_the_clerk_stand_in_mints_and_the_sandbox_knows_the_oauth_client(services):
    env = services["auth-gateway"]["environment"]
    # Compose turns "$$" into a literal "$" for the container's shell.
    command = shlex.split(services["sandbox"]["command"][-1].replace("$$", "$"))
    assert command[command.index("--clerk-issuer") + 1] == env["CLERK_ISSUER"]
    client = command[command.index("--client") + 1]
    client_id, secret, redirect = client.split(":", 2)
    assert client_id == env["GOOGLE_CLIENT_ID"]
    assert secret == "${GOOGLE_CLIENT_SECRET}"  # the generated dev secret, expanded by the shell
    assert redirect == env["GOOGLE_REDIRECT_URI"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
