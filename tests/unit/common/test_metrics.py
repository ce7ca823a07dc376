"""Shared metrics: a backend refuses METRICS_PORT equal to its gRPC port; Gmail requests are counted by
method and status class with their quota units and 429s, and still reach the access log; sampled gauges
disappear when their source stops answering; an event's age comes from its envelope."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from coffeeping.common.access_log import Sent
from coffeeping.common.config import ConfigError, load
from coffeeping.common.metrics.events import event_age_s
from coffeeping.common.metrics.gmail import GmailRequests
from coffeeping.common.metrics.sampling import Family, Reading, Sampler
from coffeeping.common.runtime import ServiceSettings

BACKEND = {"DATABASE_URL": "postgresql://cp@127.0.0.1/cp", "GRPC_PORT": "50051", "TOMBSTONE_KEY": "t" * 40}
GMAIL = "http://127.0.0.1:8702/gmail/v1/users/me"


def test_a_backend_refuses_metrics_on_its_grpc_port():
    with pytest.raises(ConfigError, match="METRICS_PORT must differ from GRPC_PORT"):
        load(ServiceSettings, {**BACKEND, "METRICS_PORT": "50051"})
    assert load(ServiceSettings, {**BACKEND, "METRICS_PORT": "9090"}).metrics_port == 9090
    assert load(ServiceSettings, BACKEND).metrics_port == 0


class Kept:
    def __init__(self) -> None:
        self.requests: list[Sent] = []

    def sent(self, request: Sent) -> None:
        self.requests.append(request)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def gmail_counts() -> tuple[float, ...]:
    return (value("coffeeping_gmail_requests_total", method="users.messages.send", status_class="2xx"),
            value("coffeeping_gmail_quota_units_total", method="users.messages.send"),
            value("coffeeping_gmail_rate_limited_total", method="users.threads.get"),
            value("coffeeping_gmail_requests_total", method="users.threads.get", status_class="error"))


def test_gmail_requests_are_counted_by_method_and_status_class_and_reach_the_access_log():
    log = Kept()
    counted = GmailRequests(log)
    before = gmail_counts()
    send = Sent("user_1", ("gmail.send",), "POST", f"{GMAIL}/messages/send?alt=json", 200, 0.0, None)
    counted.sent(send)
    counted.sent(Sent("user_1", ("gmail.metadata",), "GET", f"{GMAIL}/threads/t1?format=metadata", 429, 0.0, None))
    counted.sent(Sent("user_1", ("gmail.metadata",), "GET", f"{GMAIL}/threads/t1", None, 0.0, None))  # no answer
    assert gmail_counts() == (before[0] + 1, before[1] + 100, before[2] + 1, before[3] + 1)
    assert len(log.requests) == 3
    GmailRequests(None).sent(send)  # the access log off: counted all the same
    assert gmail_counts()[0] == before[0] + 2


def test_a_sampled_gauge_disappears_when_its_source_stops_answering():
    sampler = Sampler(every_s=0.01)
    registry = CollectorRegistry()
    registry.register(sampler)
    answers = [[Reading("coffeeping_test_depth", 3.0)]]

    def read() -> list[Reading]:
        if not answers:
            raise ConnectionError("away")
        return answers.pop()

    sampler.add("test", [Family("coffeeping_test_depth", "a depth")], read)
    sampler.sample_now()
    assert registry.get_sample_value("coffeeping_test_depth") == 3.0
    errors = value("coffeeping_metrics_sample_errors_total", sample="test")
    sampler.sample_now()  # fails: the last value stays for three rounds, then goes
    assert value("coffeeping_metrics_sample_errors_total", sample="test") == errors + 1
    time.sleep(0.05)
    assert registry.get_sample_value("coffeeping_test_depth") is None


def test_an_events_age_is_read_from_its_envelope():
    now = dt.datetime(2026, 11, 30, 12, 0, 5, tzinfo=dt.UTC)
    assert event_age_s("2026-11-30T12:00:00Z", now) == 5.0
    assert event_age_s("2026-11-30T12:00:10+00:00", now) == 0.0  # a clock ahead never gives a negative age
    assert event_age_s("", now) is None and event_age_s("yesterday", now) is None
