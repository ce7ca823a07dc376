#!/usr/bin/env bash
# Install, start PostgreSQL and RabbitMQ when needed, check the generated stubs, lint, type-check libs/
# (mypy, configured in pyproject.toml), validate docker-compose.yml offline, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install.sh
deploy/ensure_infra.sh
.venv/bin/python deploy/gen_protos.py --check
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
exec .venv/bin/python -m pytest "$@"
