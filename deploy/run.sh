#!/usr/bin/env bash
# Run the whole system locally: install, start PostgreSQL and RabbitMQ when needed, prepare the
# database, certificates and dev secrets, then start the stand-ins and the five services.
# COFFEEPING_SANDBOX=off starts no stand-in and takes the Google/Clerk/KMS endpoints from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install.sh
deploy/ensure_infra.sh
exec .venv/bin/python deploy/run.py
