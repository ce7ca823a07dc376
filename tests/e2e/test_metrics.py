"""Prometheus metrics, scraped from every process's own metrics port during and after a person's journey
(Gmail connected, an email sent and its follow-up, a reply that stops the sequence, the account deleted):
the series an on-call engineer reads are there with sensible values, no label carries the user's id or
any address or Gmail id, and the gateway's public port never serves /metrics."""

from __future__ import annotations

from collections import defaultdict

import requests
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from stack import SERVICES

from tests.e2e.journey import CONFIRM, wait_completed, wait_until
from tests.e2e.test_replies import active_thread, connect_gmail, deliver, mailbox, start_sequence, stopped, unique

BACKENDS = [name for name, (_, schema, _) in SERVICES.items() if schema]


def scrape(stack, service: str) -> dict[str, list[Sample]]:
    reply = requests.get(stack.config.metrics_url(service), timeout=10)
    assert reply.status_code == 200, reply.text
    samples: dict[str, list[Sample]] = defaultdict(list)
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[sample.name].append(sample)
    return samples


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float | None:
    """The sum of ``name``'s samples whose labels include ``labels`` (None when there is none)."""
    found = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found) if found else None


def test_the_public_port_never_serves_metrics(stack):
    reply = requests.get(f"{stack.url}/metrics", timeout=10)
    assert reply.status_code == 404 and "coffeeping_" not in reply.text
    ports = stack.config.ports
    assert all(stack.config.metrics_ports[name] != ports[name] for name in SERVICES)
    assert value(scrape(stack, "auth-gateway"), "coffeeping_http_requests_total", route="unmatched",
                 status="404") is not None


def test_every_process_reports_the_series_of_a_persons_journey_and_no_label_names_the_person(stack):
    user, email, contact = unique("user_metrics"), f"{unique('metrics')}@example.com", f"{unique('ida')}@contact.example"
    session = stack.session(user)
    connect_gmail(stack, session, email)
    assert session.get("/v1/me").status_code == 200
    before = value(scrape(stack, "auth-gateway"), "coffeeping_http_requests_total", route="/healthz") or 0
    for _ in range(20):  # whichever gunicorn worker answers, the master's one scrape counts it
        assert requests.get(f"{stack.url}/healthz", timeout=10).status_code == 200
    _, sequence_id = start_sequence(session, contact, [{"body": "Bumping this", "delay": "PT2S"},
                                                       {"body": "Last try", "delay": "P3D"}])
    thread_id = active_thread(session, sequence_id)

    def follow_up_sent() -> bool:
        thread = next(t for t in mailbox(stack, email)["threads"] if t["id"] == thread_id)
        return len([m for m in thread["messages"] if "SENT" in m["labelIds"]]) >= 2

    assert wait_until(follow_up_sent, timeout=30), "the first follow-up did not go out"
    # During the journey: the mailer's scheduler has measured both sends.
    mailer = scrape(stack, "mailer")
    assert value(mailer, "coffeeping_mailer_schedule_lateness_seconds_count", step="first") >= 1
    assert value(mailer, "coffeeping_mailer_schedule_lateness_seconds_count", step="follow_up") >= 1
    deliver(stack, to=email, **{"from": f"Ida <{contact}>"}, thread_id=thread_id, body="Happy to")
    assert stopped(session, sequence_id)["stop_reason"] == "replied"
    assert session.delete("/v1/account", json=CONFIRM).status_code == 202
    wait_completed(session)

    # The sampled gauges are read every 15 s: wait for a reading taken after the deletion completed.
    assert wait_until(lambda: (value(scrape(stack, "accounts"), "coffeeping_accounts_deletions",
                                     state="completed") or 0) >= 1, timeout=45), "deletions by state not sampled"
    for service in BACKENDS:  # (a service another test restarted may have been sampled while it reconnected)
        assert wait_until(lambda name=service: (value(scrape(stack, name), "coffeeping_consumer_queue_consumers")
                                                or 0) >= 1, timeout=45), f"{service}: queue depths not sampled"
    scraped = {service: scrape(stack, service) for service in SERVICES}

    gateway = scraped["auth-gateway"]
    assert value(gateway, "coffeeping_http_requests_total", route="/v1/me", method="GET", status="200") >= 1
    assert value(gateway, "coffeeping_http_request_duration_seconds_count", route="/v1/me") >= 1
    assert value(gateway, "coffeeping_http_requests_total", route="/v1/sequences/<sequence_id>/send",
                 method="POST") >= 1
    assert value(gateway, "coffeeping_http_requests_total", route="/healthz") >= before + 20
    assert all(s.labels["route"].startswith("/") or s.labels["route"] == "unmatched"
               for s in gateway["coffeeping_http_requests_total"])

    for service in BACKENDS:
        samples = scraped[service]
        assert value(samples, "coffeeping_ready") == 1 and value(samples, "coffeeping_live") == 1, service
        assert value(samples, "coffeeping_outbox_backlog") is not None, service
        assert value(samples, "coffeeping_outbox_oldest_age_seconds") >= 0, service
        assert value(samples, "coffeeping_dead_letter_messages") is not None, service
        assert value(samples, "coffeeping_consumer_queue_messages") is not None, service
        assert value(samples, "coffeeping_consumer_queue_consumers") >= 1, service
        assert value(samples, "coffeeping_events_consumed_total", outcome="handled") >= 1, service
        assert value(samples, "coffeeping_event_age_seconds_count") >= 1, service
        assert value(samples, "process_cpu_seconds_total") > 0, service  # prometheus_client's own collectors
        served = {s.labels["method"] for s in samples["coffeeping_grpc_server_requests_total"]}
        assert served, service

    accounts = scraped["accounts"]
    assert value(accounts, "coffeeping_grpc_server_requests_total", method="/coffeeping.accounts.v1.Accounts/GetMe",
                 code="OK") >= 1
    assert value(accounts, "coffeeping_grpc_server_request_duration_seconds_count",
                 method="/coffeeping.accounts.v1.Accounts/RequestDeletion") >= 1
    assert value(accounts, "coffeeping_accounts_deletion_oldest_unfinished_age_seconds") >= 0
    assert "coffeeping_accounts_deletion_steps_unfinished" in accounts or value(
        accounts, "coffeeping_accounts_deletions", state="in_progress") is not None

    vault = scraped["token-vault"]
    assert value(vault, "coffeeping_grpc_server_requests_total", method="/coffeeping.vault.v1.TokenVault/GetAccessToken",
                 code="OK") >= 1
    assert value(vault, "coffeeping_vault_google_calls_total", call="exchange", outcome="ok") >= 1
    assert value(vault, "coffeeping_vault_google_calls_total", call="refresh", outcome="ok") >= 1
    assert value(vault, "coffeeping_vault_google_calls_total", call="revoke", outcome="ok") >= 1
    assert value(vault, "coffeeping_vault_kms_calls_total", operation="encrypt", outcome="ok") >= 1
    assert value(vault, "coffeeping_vault_kms_call_duration_seconds_count", operation="encrypt") >= 1
    assert value(vault, "coffeeping_vault_revocations_pending") is not None

    mailer = scraped["mailer"]
    assert value(mailer, "coffeeping_mailer_sends_total", step="first") >= 1
    assert value(mailer, "coffeeping_mailer_sends_total", step="follow_up") >= 1
    assert value(mailer, "coffeeping_mailer_send_failures_total") is not None
    assert value(mailer, "coffeeping_mailer_jobs_due") is not None
    assert value(mailer, "coffeeping_gmail_requests_total", method="users.messages.send", status_class="2xx") >= 1
    assert value(mailer, "coffeeping_gmail_requests_total", method="users.drafts.send", status_class="2xx") >= 1
    assert value(mailer, "coffeeping_gmail_quota_units_total", method="users.messages.send") >= 100
    assert value(mailer, "coffeeping_gmail_rate_limited_total", method="users.messages.send") is not None

    watcher = scraped["reply-watcher"]
    assert value(watcher, "coffeeping_watcher_poll_duration_seconds_count", outcome="polled") >= 1
    assert value(watcher, "coffeeping_watcher_detections_total", outcome="reply") >= 1
    assert value(watcher, "coffeeping_watcher_history_resyncs_total") is not None
    assert value(watcher, "coffeeping_watcher_oldest_due_poll_age_seconds") is not None
    assert value(watcher, "coffeeping_gmail_requests_total", method="users.history.list") >= 1
    assert value(watcher, "coffeeping_gmail_quota_units_total", method="users.history.list") >= 2

    # Labels name routes, methods, codes and fixed words: never the person, their addresses or Gmail ids.
    needles = [user, email, contact, sequence_id, thread_id, email.split("@")[0]]
    for service, samples in scraped.items():
        for series in samples.values():
            for sample in series:
                for label, text in sample.labels.items():
                    assert not any(needle in text for needle in needles), (service, sample.name, label, text)
