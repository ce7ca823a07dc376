"""docker-compose.yml and the Dockerfiles, checked offline (no Docker engine here).

The compose file must run the same system as ``deploy/stack.py``: the same settings for every service,
health checks everywhere, and start-up ordered by ``depends_on`` conditions that name real services.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy"))

from stack import SERVICES, dev_secrets  # noqa: E402

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


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


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


def test_each_service_gets_every_setting_the_run_command_gives_it(services, tmp_path):
    secrets = set(dev_secrets(tmp_path / "dev-secrets.env"))
    for name in SERVICES:
        from stack import StackConfig

        wanted = set(StackConfig(var_dir=tmp_path).env(name)) - PROCESS_ONLY
        env = services[name]["environment"]
        provided = set(env) | secrets
        assert wanted <= provided, f"{name} lacks {sorted(wanted - provided)}"
        # Secrets come from the generated file, never from the compose file itself.
        assert not secrets & set(env), f"{name} inlines {sorted(secrets & set(env))}"
        assert "dev-secrets.env" in " ".join(services[name]["entrypoint"])


def test_service_addresses_certificates_and_databases_point_at_the_right_containers(services):
    ports = {name: services[name]["environment"].get("GRPC_PORT") for name in SERVICES}
    env = services["auth-gateway"]["environment"]
    for variable, target in (("ACCOUNTS_GRPC_ADDR", "accounts"), ("VAULT_GRPC_ADDR", "token-vault"),
                             ("MAILER_GRPC_ADDR", "mailer"), ("WATCHER_GRPC_ADDR", "reply-watcher")):
        # The host name must be the service name: it is a SAN of that service's certificate.
        assert env[variable] == f"{target}:{ports[target]}"
    for name, (_module, schema, _port) in SERVICES.items():
        service_env = services[name]["environment"]
        assert service_env["TLS_CERT"].endswith(f"/certs/{name}.pem")
        assert service_env["TLS_KEY"].endswith(f"/certs/{name}-key.pem")
        if schema:
            assert service_env["DATABASE_URL"].startswith(f"postgresql://cp_{schema}:")
            assert service_env["DATABASE_URL"].endswith("@postgres:5432/coffeeping")


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
