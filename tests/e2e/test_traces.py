"""One request followed from the gateway to the consumers of the event it caused, as a single trace.

The shared stack exports its traces over OTLP to an in-memory receiver (``otlp``). A deletion request
enters the gateway carrying a load balancer's ``traceparent``; the trace goes on through gRPC to
accounts, its SQL, the outbox relay's publication and the mailer's and the watcher's consumers, each
span the child of the one before it, and the consumers' log lines carry its trace id.
"""

from __future__ import annotations

import json
import secrets

import psycopg
import pytest
import requests

from tests.e2e.journey import (
    CONFIRM,
    add_contact,
    connect_gmail,
    google_email,
    new_user,
    seed,
    start_sequence,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)

EVENT = "account.deletion_requested"


def test_a_deletion_request_is_one_trace_from_the_gateway_to_its_consumers(stack, otlp):
    user = new_user("trace")
    http = stack.session(user)
    seeded = seed(stack, http, "trace", contacts=1, with_drafts=False)
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)

    reply = http.delete("/v1/account", json=CONFIRM, headers={
        "Authorization": f"Bearer {stack.token(user)}", "traceparent": f"00-{trace_id}-{caller_span}-01"})
    assert reply.status_code == 202, reply.text

    consumers = {"coffeeping-mailer", "coffeeping-reply-watcher"}

    def exported() -> bool:  # each process exports its spans in its own batches: wait for a whole tree
        spans = otlp.trace(trace_id)
        ids = {s.span_id for s in spans} | {caller_span}
        return consumers <= {s.service for s in spans if s.kind == "consumer" and EVENT in s.name} and all(
            s.parent_id in ids for s in spans)

    assert wait_until(exported, timeout=60), sorted((s.service, s.name) for s in otlp.trace(trace_id))
    spans = otlp.trace(trace_id)
    by_id = {span.span_id: span for span in spans}

    # The gateway continued the caller's trace: its server span is the child of the caller's span.
    (entry,) = [s for s in spans if s.service == "coffeeping-auth-gateway" and s.kind == "server"]
    assert entry.parent_id == caller_span
    # Every other span hangs off a span of this trace (``exported`` waited for that): one tree.
    assert all(s.parent_id in by_id for s in spans if s is not entry)

    def chain(span) -> list[tuple[str, str]]:
        path = []
        while span is not None:
            path.append((span.service, span.kind))
            span = by_id.get(span.parent_id)
        return path[::-1]

    for consumer in [s for s in spans if s.kind == "consumer" and EVENT in s.name]:
        path = chain(consumer)
        # gateway (HTTP) → gateway's gRPC call → accounts (gRPC) → its producer span → the consumer
        assert path[0] == ("coffeeping-auth-gateway", "server"), path
        assert ("coffeeping-auth-gateway", "client") in path, path
        assert ("coffeeping-accounts", "server") in path, path
        assert path[-2] == ("coffeeping-accounts", "producer"), path
        # The consumer's own work (its SQL) is inside its span.
        assert any(s.parent_id == consumer.span_id and s.attributes.get("db.system") == "postgresql"
                   for s in spans), f"{consumer.service} has no SQL under its consumer span"
    # Accounts' SQL is in the trace, with the statement's placeholders, never its values.
    statements = [str(s.attributes.get("db.statement", "")) for s in spans
                  if s.service == "coffeeping-accounts" and s.attributes.get("db.system") == "postgresql"]
    assert statements, "no SQL span from accounts"

    # Nothing in the trace names the user: neither their id nor their address.
    text = json.dumps([[s.name, s.attributes, s.events] for s in spans], default=str)
    assert user not in text
    assert seeded["email"] not in text and all(contact not in text for contact in seeded["contacts"])

    # The consumers' log lines carry the trace id.
    for service in ("mailer", "reply-watcher"):
        def logged(service: str = service) -> bool:
            lines = (stack.config.log_dir / f"{service}.log").read_text(encoding="utf-8").splitlines()
            return any(f'"trace_id": "{trace_id}"' in line and EVENT in line for line in lines)

        assert wait_until(logged, timeout=10), f"no {service} log line with the trace id"


def test_a_scheduled_send_is_a_trace_from_the_scheduler_through_gmail_to_the_watcher(stack, otlp):
    """The scheduler's due step is a trace of its own: its Gmail requests (by method, never their address)
    and the event it writes, consumed by the watcher, are in it."""
    user = new_user("tracesend")
    http = stack.session(user)
    connect_gmail(stack, http, google_email("tracesend"))
    sequence_id = start_sequence(http, add_contact(http, "grace@example.org", "Grace"))
    with psycopg.connect(stack.database.admin_url) as conn:
        (step_id,) = conn.execute("SELECT id::text FROM mailer.steps WHERE sequence_id = %s AND position = 0",
                                  (sequence_id,)).fetchone()

    def trace_of_the_step() -> list:
        jobs = [s for s in otlp.spans if s.name == "mailer.step process"
                and s.attributes.get("coffeeping.step.id") == step_id]
        return otlp.trace(jobs[0].trace_id) if jobs else []

    def complete() -> bool:
        spans = trace_of_the_step()
        return any(s.service == "coffeeping-reply-watcher" and s.name == "sequence.message_sent process"
                   for s in spans) and any(s.name == "gmail users.messages.send" for s in spans)

    assert wait_until(complete, timeout=60), sorted((s.service, s.name) for s in trace_of_the_step())
    spans = trace_of_the_step()
    (job,) = [s for s in spans if s.name == "mailer.step process"]
    assert job.kind == "consumer" and job.parent_id == ""
    gmail = [s for s in spans if s.name.startswith("gmail ")]
    assert all(s.kind == "client" and s.service == "coffeeping-mailer" for s in gmail)
    assert all("http.url" not in s.attributes and "url.full" not in s.attributes for s in gmail)
    assert {s.attributes.get("http.response.status_code") for s in gmail} == {200}
    text = json.dumps([[s.name, s.attributes] for s in spans], default=str)
    assert "grace@example.org" not in text and user not in text


def test_every_request_is_a_trace_of_its_own_unless_its_caller_says_otherwise(stack):
    """Requests served one after the other by the same gateway threads, refused ones among them: each
    starts its own trace, or continues its caller's, and its log line says which."""
    http = stack.session(new_user("traceeach"))
    sent: dict[str, str | None] = {}
    for i in range(60):
        rid = f"trace-each-{secrets.token_hex(6)}"
        headers = {"X-Request-ID": rid}
        trace_id = secrets.token_hex(16) if i % 3 == 0 else None
        if trace_id:
            headers["traceparent"] = f"00-{trace_id}-{secrets.token_hex(8)}-01"
        if i % 4 == 1:  # refused before the route runs: no session
            reply = requests.get(f"{stack.url}/v1/me", headers=headers, timeout=10)
            assert reply.status_code == 401
        else:
            assert http.get("/v1/me", headers=headers).status_code == 200
        sent[rid] = trace_id

    def logged() -> dict[str, str]:
        lines = (stack.config.log_dir / "auth-gateway.log").read_text(encoding="utf-8").splitlines()
        found = {}
        for line in lines:
            entry = json.loads(line)
            if entry.get("request_id") in sent and entry.get("msg") == "request":
                found[entry["request_id"]] = entry.get("trace_id", "")
        return found

    assert wait_until(lambda: len(logged()) == len(sent), timeout=10)
    traces = logged()
    assert all(traces[rid] == trace_id for rid, trace_id in sent.items() if trace_id)
    assert all(traces[rid] for rid in sent), "a request without a trace id in its log line"
    assert len(set(traces.values())) == len(sent), "two requests logged with one trace id"
