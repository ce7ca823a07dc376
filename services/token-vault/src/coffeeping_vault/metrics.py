"""The token vault's metrics: Google's OAuth endpoints (token refreshes and code exchanges, revocations,
userinfo) and Cloud KMS calls by outcome with their latency, the data-key cache, and (sampled) the
revocations still waiting for Google's confirmation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import Counter, Histogram
from sqlalchemy import Engine

from coffeeping.common.metrics.sampling import Family, watch_rows
from coffeeping_vault.models import revocations

T = TypeVar("T")

GOOGLE_CALLS = Counter(
    "coffeeping_vault_google_calls",
    "Calls to Google's OAuth endpoints, retries included in one call, by call (refresh, exchange: the token "
    "endpoint; revoke; userinfo) and outcome (ok, invalid_grant: the user must reconnect, refused, "
    "unavailable: timeouts, 429 or 5xx after the retries, error)", ["call", "outcome"])
GOOGLE_DURATION = Histogram("coffeeping_vault_google_call_duration_seconds",
                            "Time of a call to Google's OAuth endpoints, retries included, by call", ["call"],
                            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
KMS_CALLS = Counter(
    "coffeeping_vault_kms_calls",
    "Cloud KMS calls, by operation (encrypt, decrypt, get_crypto_key) and outcome (ok, unavailable: an "
    "outage or a timeout, integrity_error: a refused key or a failed checksum, error)", ["operation", "outcome"])
KMS_DURATION = Histogram("coffeeping_vault_kms_call_duration_seconds", "Time of a Cloud KMS call, by operation",
                         ["operation"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
DATA_KEYS = Counter("coffeeping_vault_data_key_cache", "Data-key lookups, by result (hit: no KMS call, miss)",
                    ["result"])

REVOCATIONS = (
    Family("coffeeping_vault_revocations_pending", "Account deletions' revocations not yet confirmed by Google"),
    Family("coffeeping_vault_oldest_revocation_age_seconds",
           "Age of the oldest revocation not yet confirmed by Google (0 when none)"),
)

_hits, _misses = DATA_KEYS.labels("hit"), DATA_KEYS.labels("miss")


def measured(calls: Counter, duration: Histogram, name: str, outcome_of: Callable[[BaseException], str],
             run: Callable[[], T]) -> T:
    """``run()``, counted under ``name`` with its outcome (``ok``, or ``outcome_of`` its exception) and timed."""
    started, outcome = time.perf_counter(), "ok"
    try:
        return run()
    except BaseException as exc:
        outcome = outcome_of(exc)
        raise
    finally:
        duration.labels(name).observe(time.perf_counter() - started)
        calls.labels(name, outcome).inc()


def data_key(hit: bool) -> None:
    (_hits if hit else _misses).inc()


def watch_revocations(engine: Engine) -> None:
    """Sample the revocations Google has not confirmed yet, and the oldest one's age."""
    watch_rows("vault-revocations", engine, REVOCATIONS, revocations.c.created_at)


__all__ = ["DATA_KEYS", "GOOGLE_CALLS", "GOOGLE_DURATION", "KMS_CALLS", "KMS_DURATION", "REVOCATIONS", "data_key",
           "measured", "watch_revocations"]
