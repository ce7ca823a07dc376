#!/usr/bin/env bash
# Install everything into .venv (idempotent) and generate the gRPC stubs from protos/; then the browser
# tests' two outside pieces: Debian's chromium (driven by pip's playwright, whose own browser download
# is never used) and axe-core from npm, into var/node (git-ignored).
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

# Browser tests (tests/e2e/test_console*.py skip with the reason when either is missing).
AXE_CORE_VERSION=4.14.1
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "install: chromium could not be installed; the console's browser tests will skip" >&2
fi
if [ ! -f "var/node/node_modules/axe-core/package.json" ] \
  || ! grep -q "\"version\": \"$AXE_CORE_VERSION\"" var/node/node_modules/axe-core/package.json; then
  if command -v npm >/dev/null; then
    mkdir -p var/node
    npm install --silent --no-audit --no-fund --prefix var/node "axe-core@$AXE_CORE_VERSION" >/dev/null \
      || echo "install: axe-core could not be installed; the console's browser tests will skip" >&2
  else
    echo "install: npm is missing, so axe-core is; the console's browser tests will skip" >&2
  fi
fi
