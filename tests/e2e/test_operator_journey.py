"""``COFFEEPING_SANDBOX=off``: the services take every setting from the operator's environment, here
the sandbox's own endpoints given as an operator would give Google's, Clerk's and KMS's, and a person's
journey works end to end (Gmail connected, an email sent with its follow-up drafted, a reply that stops
it)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
from bootstrap_broker import delete_broker
from stack import GOOGLE_CLIENT_ID, Stack, StackConfig, dev_secrets

from tests.conftest import Database, RunningStack, _drop_database
from tests.e2e.test_replies import (
    active_thread,
    connect_gmail,
    deliver,
    mailbox,
    start_sequence,
    stopped,
    unique,
    wait_for,
)


@pytest.fixture(scope="module")
def operator_stack(pg_admin_url: str, amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    var = tmp_path_factory.mktemp("operator")
    name, prefix = f"cp_operator_{uuid.uuid4().hex[:10]}", f"cpop{uuid.uuid4().hex[:8]}"
    # The stand-ins play Google, Clerk and KMS; the operator's environment names their addresses.
    stand_ins = Stack(StackConfig.ephemeral(var / "stand-ins", name, prefix))
    endpoints = stand_ins.config
    secrets = dev_secrets(endpoints.var_dir / "dev-secrets.env")
    environ = {
        "PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"), "LOG_LEVEL": "INFO",
        **endpoints.sandbox_env(),
        "GOOGLE_CLIENT_ID": GOOGLE_CLIENT_ID, "GOOGLE_CLIENT_SECRET": secrets["GOOGLE_CLIENT_SECRET"],
        "GOOGLE_REDIRECT_URI": endpoints.redirect_uri, "APP_URL": "https://app.example.com",
        "CORS_ALLOWED_ORIGINS": "https://app.example.com", "CLERK_AUTHORIZED_PARTIES": "http://localhost:3000",
        "OAUTH_STATE_SECRET": "s" * 48, "CLERK_WEBHOOK_SECRET": "whsec_" + "c" * 32, "TOMBSTONE_KEY": "t" * 48,
        "GATEWAY_PORT": str(endpoints.ports["auth-gateway"]),
        "MAILER_SCHEDULER_INTERVAL_S": "0.5", "REPLY_WATCHER_POLL_INTERVAL_S": "1",
    }
    config = StackConfig.ephemeral(var / "operator", name, prefix)
    config.ports, config.sandbox_ports = endpoints.ports, endpoints.sandbox_ports
    config.sandbox, config.environ = False, environ
    config.admin_url, config.rabbitmq_url = pg_admin_url, amqp_url
    assert config.settings_problems() == []  # nothing the services need is missing
    running = Stack(config)
    try:
        running.prepare()  # this machine's database, broker logins and certificates, as deploy/run.sh does
        stand_ins.start_sandbox()
        running.start()
        yield RunningStack(running, config, Database(name, pg_admin_url.rsplit("/", 1)[0] + f"/{name}",
                                                     pg_admin_url))
    finally:
        running.stop()
        stand_ins.stop()
        with contextlib.suppress(Exception):
            delete_broker(config.rabbitmq_management_url, config.rabbitmq_vhost, prefix)
        _drop_database(pg_admin_url, name)


def test_a_persons_journey_with_every_setting_from_the_environment(operator_stack):
    stack = operator_stack
    assert "COFFEEPING_ENV" not in stack.config.env("auth-gateway")  # production: nothing of development
    user, email, contact = unique("user_op"), f"{unique('op')}@example.com", f"{unique('lee')}@contact.example"
    session = stack.session(user)
    connect_gmail(stack, session, email)
    assert session.get("/v1/me").json()["gmail"]["email"] == email
    _, sequence_id = start_sequence(session, contact, [{"body": "Bumping this", "delay": "P3D"}])
    thread_id = active_thread(session, sequence_id)
    wait_for(lambda: len(mailbox(stack, email)["drafts"]) == 1, what="the follow-up mirrored as a draft")
    deliver(stack, to=email, **{"from": f"Lee <{contact}>"}, thread_id=thread_id, body="Yes!")
    assert stopped(session, sequence_id, timeout=30)["stop_reason"] == "replied"
    wait_for(lambda: mailbox(stack, email)["drafts"] == [], timeout=30, what="the draft to go")
