"""The gateway's metrics: never on the public port (a METRICS_PORT equal to GATEWAY_PORT stops the start),
and each request counted under its route template, never the path a client sent."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from coffeeping.common.config import ConfigError
from tests.unit.auth_gateway.console_app import console_app, settings


def test_metrics_on_the_public_port_stop_the_start():
    with pytest.raises(ConfigError, match="METRICS_PORT must differ from GATEWAY_PORT"):
        settings(GATEWAY_PORT="8080", METRICS_PORT="8080")
    assert settings(GATEWAY_PORT="8080", METRICS_PORT="9090").metrics_port == 9090
    assert settings(GATEWAY_PORT="8080").metrics_port == 0  # off unless asked for


def count(route: str, method: str, status: str) -> float:
    return REGISTRY.get_sample_value("coffeeping_http_requests_total",
                                     {"route": route, "method": method, "status": status}) or 0.0


def test_a_request_is_counted_under_its_route_template_and_an_unknown_method_as_other():
    client = console_app().test_client()
    before = count("/v1/sequences/<sequence_id>", "GET", "401")
    assert client.get("/v1/sequences/3f1e0c1a-5b0e-4a43-9d55-6f0a9a2c1b7d").status_code == 401
    assert count("/v1/sequences/<sequence_id>", "GET", "401") == before + 1
    unmatched = count("unmatched", "other", "405") + count("unmatched", "other", "404")
    client.open("/v1/nowhere/user_2abc", method="BREW")
    assert count("unmatched", "other", "405") + count("unmatched", "other", "404") == unmatched + 1
    routes = {s.labels["route"] for m in REGISTRY.collect() if m.name == "coffeeping_http_requests"
              for s in m.samples}
    assert not any("3f1e0c1a" in route or "user_2abc" in route for route in routes)
