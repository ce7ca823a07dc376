"""One request followed from the gateway to the consumers of the event it caused, as a single trace.

The shared stack exports its traces over OTLP to an in-memory receiver (``otlp``). A deletion request
enters the gateway carrying a load balancer's ``traceparent``; the trace goes on through gRPC to
accounts, its SQL, the outbox relay's publication and the mailer's and the watcher's consumers, each
span the child of the one before it, and the consumers' log lines carry its trace id.
"""

from __future__ import annotations

import json
import secrets

import pytest

from tests.e2e.journey import CONFIRM, new_user, seed, wait_until

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
