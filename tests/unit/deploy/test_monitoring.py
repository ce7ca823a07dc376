"""The monitoring component (deploy/k8s/components/monitoring), checked offline: every metric an alert or a
dashboard panel reads is one the code defines, with labels it has; every alert has a severity, words for
the on-call engineer and a runbook section that exists in docs/RUNBOOK.md; the dashboard is a Grafana
dashboard; the PodMonitor scrapes the port the Deployments name `metrics`."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from ruamel.yaml import YAML

from coffeeping.common.metrics.sampling import Family

ROOT = Path(__file__).resolve().parents[3]
COMPONENT = ROOT / "deploy" / "k8s" / "components" / "monitoring"
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"
# Every module that defines series (sampled families included).
METRIC_MODULES = [
    "coffeeping.common.metrics.server", "coffeeping.common.metrics.sampling", "coffeeping.common.metrics.rpc",
    "coffeeping.common.metrics.events", "coffeeping.common.metrics.messaging", "coffeeping.common.metrics.gmail",
    "coffeeping_gateway.metrics", "coffeeping_accounts.metrics", "coffeeping_vault.metrics",
    "coffeeping_mailer.metrics", "coffeeping_reply_watcher.metrics",
]
# Labels Prometheus adds to every series of a target (podmonitor.yaml's relabelings included).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "component", "container", "endpoint"}
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
             "gauge": ("",), "summary": ("_count", "_sum", "_created", "")}


def defined_series() -> dict[str, set[str]]:
    """Each series name the code exposes, with its label names."""
    series: dict[str, set[str]] = {"up": set()}
    for name in METRIC_MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            families = value if isinstance(value, tuple) else (value,)
            for family in families:
                if isinstance(family, Family):
                    series[family.name] = set(family.labels)
    for collector in set(REGISTRY._names_to_collectors.values()):  # noqa: SLF001 - the registry's own index
        labels = set(getattr(collector, "_labelnames", ()))
        kind = getattr(collector, "_type", None)
        base = getattr(collector, "_name", None)
        if kind in _SUFFIXES and base:
            for suffix in _SUFFIXES[kind]:
                series[base + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
        else:  # prometheus_client's own collectors (process_*, python_*)
            for family in collector.collect():
                for sample in family.samples:
                    series[sample.name] = set(sample.labels)
    return series


def load_yaml(name: str) -> Any:
    return YAML(typ="safe").load((COMPONENT / name).read_text())


def alerts() -> list[dict[str, Any]]:
    rule = load_yaml("prometheusrule.yaml")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def dashboard_targets() -> list[tuple[str, str]]:
    board = json.loads((COMPONENT / "grafana-dashboard.json").read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel.get("targets", [])]


def runbook_anchors() -> set[str]:
    """GitHub's anchors of docs/RUNBOOK.md's headings."""
    anchors = set()
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


_SELECTOR = re.compile(r"\b((?:coffeeping|process)_[a-z0-9_]+|up)\b\s*(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def problems_of(expr: str, series: dict[str, set[str]]) -> list[str]:
    found = []
    if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}") or expr.count("[") != expr.count("]"):
        found.append("unbalanced brackets")
    names = _SELECTOR.findall(expr)
    if not names:
        found.append("reads no CoffeePing series")
    for name, matchers in names:
        if name not in series:
            found.append(f"{name} is not defined by the code")
            continue
        for label in _MATCHER.findall(matchers):
            if label not in series[name] | TARGET_LABELS:
                found.append(f"{name} has no label {label}")
    return found


@pytest.fixture(scope="module")
def series() -> dict[str, set[str]]:
    return defined_series()


def test_the_component_ships_the_rules_the_pod_monitor_and_the_dashboard():
    kustomization = load_yaml("kustomization.yaml")
    assert kustomization["kind"] == "Component"
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    for resource in kustomization["resources"]:
        assert (COMPONENT / resource).is_file()
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == ["grafana-dashboard.json"]
    assert generator["options"]["labels"] == {"grafana_dashboard": "1"}
    monitor = load_yaml("podmonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/part-of": "coffeeping"}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert {r["targetLabel"] for r in endpoint["relabelings"]} >= {"service"}
    rule = load_yaml("prometheusrule.yaml")
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")


def test_every_alert_reads_series_the_code_defines(series):
    wrong = {rule["alert"]: problems_of(rule["expr"], series) for rule in alerts()}
    assert {name: found for name, found in wrong.items() if found} == {}


def test_every_dashboard_panel_reads_series_the_code_defines(series):
    wrong = {title: problems_of(expr, series) for title, expr in dashboard_targets()}
    assert {title: found for title, found in wrong.items() if found} == {}


def test_every_alert_has_a_severity_words_and_a_runbook_section_that_exists():
    anchors = runbook_anchors()
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    for rule in alerts():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert re.fullmatch(r"\d+m", rule["for"]), rule["alert"]
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "docs/RUNBOOK.md" and anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"docs/RUNBOOK.md has no section {rule['alert']}"


def test_the_alerts_cover_what_an_on_call_engineer_is_promised(series):
    read = " ".join(rule["expr"] for rule in alerts())
    for name in ("coffeeping_outbox_oldest_age_seconds", "coffeeping_outbox_backlog", "coffeeping_dead_letter_messages",
                 "coffeeping_consumer_queue_messages", "coffeeping_mailer_schedule_lateness_seconds_bucket",
                 "coffeeping_mailer_send_failures_total", "coffeeping_gmail_rate_limited_total",
                 "coffeeping_vault_kms_calls_total", "coffeeping_vault_kms_call_duration_seconds_bucket",
                 "coffeeping_vault_google_calls_total", "coffeeping_accounts_deletion_oldest_unfinished_age_seconds",
                 "coffeeping_watcher_poll_duration_seconds_bucket", "coffeeping_ready", "up",
                 "coffeeping_http_requests_total"):
        assert re.search(rf"\b{name}\b", read), name


def test_the_dashboard_is_a_grafana_dashboard():
    board = json.loads((COMPONENT / "grafana-dashboard.json").read_text())
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    assert board["templating"]["list"][0]["type"] == "datasource"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert panel["datasource"]["type"] == "prometheus"
