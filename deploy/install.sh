#!/usr/bin/env bash
# Install everything into .venv (idempotent) and generate the gRPC stubs from protos/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -c deploy/constraints.txt -r deploy/requirements-dev.txt
# The stubs first: the packages import them.
.venv/bin/python deploy/gen_protos.py
.venv/bin/python -m pip install -q -c deploy/constraints.txt --no-deps \
  -e libs/coffeeping-common -e deploy/sandbox \
  -e services/auth-gateway -e services/token-vault -e services/mailer \
  -e services/reply-watcher -e services/accounts
