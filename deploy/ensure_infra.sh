#!/usr/bin/env bash
# Start the local PostgreSQL and RabbitMQ (with its management plugin) when they are not answering
# (machines of this kind have both installed; these are the commands that start them).
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if ! pg_up; then
  echo "starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
fi
pg_up || { echo "PostgreSQL is not answering on 127.0.0.1:5432" >&2; exit 1; }

if ! rabbit_up; then
  echo "starting RabbitMQ" >&2
  rabbitmq-server -detached || true
  for _ in $(seq 1 120); do rabbit_up && break; sleep 0.5; done
  rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
rabbit_up || { echo "RabbitMQ is not answering on 127.0.0.1:5672" >&2; exit 1; }

# The management API: deploy/bootstrap_broker.py creates the vhost and the services' logins with it.
management_up() { (exec 3<>/dev/tcp/127.0.0.1/15672) 2>/dev/null; }
if ! management_up; then
  rabbitmq-plugins enable rabbitmq_management >/dev/null
  for _ in $(seq 1 60); do management_up && break; sleep 0.5; done
fi
management_up || { echo "RabbitMQ's management API is not answering on 127.0.0.1:15672" >&2; exit 1; }
