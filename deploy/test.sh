#!/usr/bin/env bash
# Install, start PostgreSQL and RabbitMQ when needed, check the generated stubs, lint, type-check libs/
# (mypy, configured in pyproject.toml), validate docker-compose.yml offline and the gateway's OpenAPI document,
# and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install.sh
deploy/ensure_infra.sh
.venv/bin/python deploy/gen_protos.py --check
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
# The gateway's OpenAPI document, built in process, must be valid OpenAPI 3.1 (a dangling $ref fails too).
.venv/bin/python - <<'PY'
import sys

from openapi_spec_validator import OpenAPIV31SpecValidator

from coffeeping_gateway.openapi import document

validator = OpenAPIV31SpecValidator(document())
errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors()]
if errors:
    sys.exit("the gateway's OpenAPI document is invalid:\n" + "\n".join(errors))
PY
# tests/unit, tests/integration and tests/e2e (pyproject.toml's testpaths); arguments go to pytest,
# e.g. deploy/test.sh tests/unit for the quick pass.
exec .venv/bin/pytest "$@"
