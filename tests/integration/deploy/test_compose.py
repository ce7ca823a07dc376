"""docker-compose.yml and the Dockerfiles, checked offline (no Docker engine here).

The five services are built from one Dockerfile, deploy/Dockerfile, with build arguments: each compose
service passes its own (its folder, its module, its port, its health probe), and the tests work out
the image those arguments make. Only the sandbox and the bootstrap keep a Dockerfile of their own.

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
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[3]
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

from coffeeping.common import services as registry  # noqa: E402

# The five services' images all come from this one Dockerfile, with build arguments.
SERVICE_DOCKERFILE = "deploy/Dockerfile"
# The images that keep a Dockerfile of their own: compose service -> (its Dockerfile, module its CMD runs).
OWN_DOCKERFILES = {
    "sandbox": ("deploy/sandbox/Dockerfile", "coffeeping_sandbox"),
    "bootstrap": ("deploy/bootstrap/Dockerfile", None),
}
GRPC_PROBE = ["CMD", "python", "/app/grpc_health_probe.py"]
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


def dockerfile(path: str) -> str:
    return (ROOT / path).read_text()


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


def substitute(text: str, scope: dict[str, str]) -> str:
    """Docker's ${NAME} / $NAME substitution (a name that is not set becomes empty)."""
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: scope.get(m.group(1) or m.group(2), ""), text)


def stages(text: str) -> tuple[dict[str, str], list[tuple[str | None, str, list[tuple[str, str]]]]]:
    """The ARGs declared before the first FROM (with their defaults) and each stage: (name, FROM, steps)."""
    global_args: dict[str, str] = {}
    found: list[tuple[str | None, str, list[tuple[str, str]]]] = []
    for word, args in instructions(text):
        if word == "FROM":
            base, _, name = args.partition(" AS ") if " AS " in args else args.partition(" as ")
            found.append((name.strip() or None, base.strip(), []))
        elif not found:
            assert word == "ARG", f"{word} before the first FROM"
            key, _, default = args.partition("=")
            global_args[key] = default
        else:
            found[-1][2].append((word, args))
    return global_args, found


def built_image(text: str, build_args: dict[str, str]) -> tuple[str, list[tuple[str, str]], dict[str, str]]:
    """What `docker build` makes of a Dockerfile with these build arguments: the base image, the steps of
    the final stage and of the stages it is built FROM (in order, ARG and ENV substituted), and its ENV.
    An ARG is visible only in the stage that declares it; ENV is inherited from the stage built upon."""
    global_args, found = stages(text)
    global_scope = {key: build_args.get(key, default) for key, default in global_args.items()}
    named = {name: (base, steps) for name, base, steps in found if name}
    chain = []
    base, steps = found[-1][1], found[-1][2]
    while True:
        chain.insert(0, steps)
        base = substitute(base, global_scope)
        if base not in named:
            break
        base, steps = named[base]
    env: dict[str, str] = {}
    resolved = []
    for steps in chain:
        scope = dict(env)
        for word, args in steps:
            if word == "ARG":
                key, _, default = args.partition("=")
                scope[key] = build_args.get(key, global_scope.get(key, default))
                continue
            if word in ("ENV", "EXPOSE", "LABEL", "COPY", "USER", "WORKDIR"):
                args = substitute(args, scope)
            if word == "ENV":
                for key, value in re.findall(r"(\w+)=(\S+)", args):
                    env[key] = scope[key] = value
            resolved.append((word, args))
    return base, resolved, env


def run_command(cmd: list[str], env: dict[str, str]) -> list[str]:
    """The argv that an exec-form CMD ends up running; a `/bin/sh -c "exec ..."` one is expanded."""
    if cmd[:2] in (["/bin/sh", "-c"], ["sh", "-c"]):
        words = shlex.split(substitute(cmd[2], env))
        assert words[0] == "exec", f"the shell must exec the service so that it gets SIGTERM: {cmd}"
        return words[1:]
    return cmd


def service_build_args(spec: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in spec["build"].get("args", {}).items()}


def expected_build_args(service: registry.Service) -> dict[str, str]:
    return {"SERVICE": service.name, "SERVICE_MODULE": service.package, "SERVICE_PORT": str(service.port),
            "HEALTH_PROBE": "http" if service is registry.GATEWAY else "grpc"}


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


def test_every_service_is_built_from_the_one_dockerfile_with_its_own_arguments(services):
    assert {service.name for service in registry.ALL} == set(SERVICES)
    declared = {args.partition("=")[0] for word, args in instructions(dockerfile(SERVICE_DOCKERFILE)) if word == "ARG"}
    for service in registry.ALL:
        build = services[service.name]["build"]
        assert {key: value for key, value in build.items() if key != "args"} == {
            "context": ".", "dockerfile": SERVICE_DOCKERFILE}, service.name
        args = service_build_args(services[service.name])
        assert args == expected_build_args(service), service.name
        assert set(args) == declared, f"{service.name} passes {sorted(args)}, the Dockerfile takes {sorted(declared)}"
        assert services[service.name]["image"] == f"coffeeping/{service.name}:dev"


def test_the_arguments_name_an_existing_service_folder_and_the_module_it_runs(services):
    for name in SERVICES:
        args = service_build_args(services[name])
        folder = ROOT / "services" / args["SERVICE"]
        assert (folder / "pyproject.toml").is_file(), f"{name}: no service folder services/{args['SERVICE']}"
        module = args["SERVICE_MODULE"]
        assert (folder / "src" / module / "__main__.py").is_file(), f"{name}: {module} is not runnable in {folder}"
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, f"{module} is not importable"
        assert Path(spec.origin).resolve().is_relative_to((folder / "src").resolve()), (module, spec.origin)
        # Its console script runs the same module.
        scripts = tomllib.loads((folder / "pyproject.toml").read_text())["project"]["scripts"]
        assert [target.split(":")[0] for target in scripts.values()] == [f"{module}.__main__"], (name, scripts)


def test_each_service_image_runs_its_module_on_its_port_with_its_probe_as_a_non_root_user(services):
    text = dockerfile(SERVICE_DOCKERFILE)
    for name in SERVICES:
        args = service_build_args(services[name])
        base, steps, env = built_image(text, args)
        assert base == "python:3.11-slim", name
        cmd = exec_form(next(value for word, value in reversed(steps) if word == "CMD"))
        assert run_command(cmd, env) == ["python", "-m", args["SERVICE_MODULE"]], (name, cmd)
        # The compose entrypoint clears the image CMD, so the service's command says the same.
        assert services[name]["command"] == ["python", "-m", args["SERVICE_MODULE"]], name
        assert [value.split() for word, value in steps if word == "EXPOSE"] == [[args["SERVICE_PORT"]]], name
        users = [value for word, value in steps if word == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{name} runs as root"
        healthcheck = exec_form(next(value for word, value in reversed(steps) if word == "HEALTHCHECK")
                                .split(" CMD ", 1)[1])
        copies = [value for word, value in steps if word == "COPY"]
        listens_on = services[name]["environment"].get("GRPC_PORT") or services[name]["environment"].get("GATEWAY_PORT")
        assert listens_on == args["SERVICE_PORT"], name
        if args["HEALTH_PROBE"] == "grpc":
            assert ["CMD", *healthcheck] == GRPC_PROBE, name
            assert "deploy/grpc_health_probe.py /app/grpc_health_probe.py" in copies, name
            assert services[name]["healthcheck"]["test"] == GRPC_PROBE, name
        else:
            assert "/healthz" in " ".join(healthcheck) and env["GATEWAY_PORT"] == args["SERVICE_PORT"], name
            assert f"127.0.0.1:{args['SERVICE_PORT']}/healthz" in " ".join(services[name]["healthcheck"]["test"])
            assert not any("grpc_health_probe" in copy for copy in copies), name


def test_the_service_build_installs_dependencies_before_the_source():
    _global_args, found = stages(dockerfile(SERVICE_DOCKERFILE))
    (build,) = [steps for name, _base, steps in found if name == "build"]
    runs = [args for word, args in build if word == "RUN"]
    # The first layers are the same for every service: no build argument is declared before them.
    assert "grpcio-tools" in runs[0], "the stub generator comes first"
    assert not any(word == "ARG" for word, _args in build[:build.index(("RUN", runs[0]))]), "an ARG comes first"
    position: dict[str, int] = {}  # where each step first appears
    for index, (_word, args) in enumerate(build):
        position.setdefault(args, index)
    deps = next(args for args in runs if "-r /tmp/requirements.txt" in args)
    for source in ("protos/ protos/", "libs/coffeeping-common/ libs/coffeeping-common/",
                   "services/${SERVICE}/ services/${SERVICE}/"):
        assert position[source] > position[deps], f"COPY {source} comes before the dependencies"
    for manifest in ("libs/coffeeping-common/pyproject.toml libs/coffeeping-common/",
                     "services/${SERVICE}/pyproject.toml services/${SERVICE}/"):
        assert position[manifest] < position[deps], manifest
    install = next(args for args in runs if "--no-deps" in args)
    assert "python deploy/gen_protos.py" in install and "pip check" in install
    assert position[install] > position["services/${SERVICE}/ services/${SERVICE}/"]


def test_the_images_with_their_own_dockerfile_run_their_module(services):
    for name, (path, module) in OWN_DOCKERFILES.items():
        assert services[name]["build"] == {"context": ".", "dockerfile": path}, name
        if module is None:
            continue
        assert importlib.util.find_spec(module) is not None, f"{module} is not importable"
        cmd = exec_form(next(args for word, args in reversed(final_stage(dockerfile(path))) if word == "CMD"))
        assert cmd[:3] == ["python", "-m", module], f"{path} CMD is {cmd}"
        command = services[name].get("command")
        if command is not None:
            assert f"python -m {module}" in " ".join(command)


def test_images_build_from_python_311_slim_and_run_as_a_non_root_user():
    for path in [SERVICE_DOCKERFILE, *(path for path, _module in OWN_DOCKERFILES.values())]:
        steps = instructions(dockerfile(path))
        global_args, found = stages(dockerfile(path))
        for index, (_name, base, _steps) in enumerate(found):
            # Every stage starts from the base image or from an earlier stage (with the default arguments;
            # the services' own arguments are resolved in the test above).
            earlier = {name for name, _base, _steps in found[:index] if name}
            assert substitute(base, global_args) in earlier | {"python:3.11-slim"}, (path, base)
        users = [args for word, args in final_stage(dockerfile(path)) if word == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{path} runs as root"
        runs = " ".join(args for word, args in steps if word == "RUN")
        assert "-e " not in runs and "--editable" not in runs, f"{path} installs in editable mode"
        if path != OWN_DOCKERFILES["sandbox"][0]:
            assert "grpcio-tools" in runs and "python deploy/gen_protos.py" in runs, path
            copied = " ".join(args for word, args in steps if word == "COPY")
            assert "protos/" in copied and "libs/coffeeping-common/" in copied, path


def test_every_dockerfile_compose_builds_exists_and_no_service_has_one_of_its_own(services):
    for name, spec in services.items():
        if "build" in spec:
            assert (ROOT / spec["build"]["context"] / spec["build"]["dockerfile"]).is_file(), name
    own = [folder.name for folder in (ROOT / "services").iterdir() if (folder / "Dockerfile").exists()]
    assert not own, f"{own} have a Dockerfile of their own; the services are built from {SERVICE_DOCKERFILE}"


def repository_text_files() -> list[Path]:
    """The repository's files (tracked, and new ones not ignored), or every file when git is absent."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
        paths = [ROOT / name for name in listed if name]
    except (OSError, subprocess.SubprocessError):
        skip = {".git", ".venv", "var", "__pycache__", ".ruff_cache", ".pytest_cache"}
        paths = [path for path in ROOT.rglob("*") if not skip & set(path.relative_to(ROOT).parts)]
    return [path for path in paths if path.is_file()]


def test_nothing_refers_to_a_per_service_dockerfile():
    # A path to a Dockerfile inside a service's folder, written with a name, a placeholder or a glob.
    pattern = re.compile("services/" + r"[^/\s`'\"()]+" + "/Dockerfile")
    found = []
    for path in repository_text_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        found += [f"{path.relative_to(ROOT)}: {match.group(0)}" for match in pattern.finditer(text)]
    assert not found, found


def test_each_service_gets_every_setting_the_run_command_gives_it(services, dev_state, tmp_path):
    _state, generated = dev_state
    for name in SERVICES:
        local = set(StackConfig(var_dir=tmp_path, console=True).env(name)) - PROCESS_ONLY  # as run.py
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
    for variable, target in (("ACCOUNTS_GRPC_ADDR", "accounts"), ("TOKEN_VAULT_GRPC_ADDR", "token-vault"),
                             ("MAILER_GRPC_ADDR", "mailer"), ("REPLY_WATCHER_GRPC_ADDR", "reply-watcher")):
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
    # The mailer's scheduler is the mailer (MAILER_ROLE=scheduler): its certificate and secrets.
    folder = {"mailer-scheduler": "mailer"}
    for name, spec in services.items():
        if name == "bootstrap":
            continue
        for mount in devstate_mounts(spec):
            # Its own folder only, read-only: never certs/ (the CA key) or dev-secrets.env (every secret).
            assert mount["type"] == "volume", name
            assert mount.get("volume", {}).get("subpath") == folder.get(name, name), f"{name} mounts {mount}"
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
    text = dockerfile(OWN_DOCKERFILES["bootstrap"][0])
    steps = final_stage(text)
    copied = " ".join(args for word, args in steps if word == "COPY")
    assert "deploy/bootstrap_db.py" in copied and "deploy/bootstrap_broker.py" in copied
    assert "requests" in " ".join(args for word, args in instructions(text) if word == "RUN")
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
