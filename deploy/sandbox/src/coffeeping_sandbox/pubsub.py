"""Cloud Pub/Sub stand-in: topics and PUSH subscriptions, as Gmail push notifications use them.

A message published to a topic is POSTed by every push subscription of that topic to its endpoint, in
Pub/Sub's wrapped JSON format::

    {"message": {"data": base64, "messageId", "message_id", "publishTime", "publish_time"
                 [, "attributes"]},
     "subscription": "projects/P/subscriptions/S"}

with ``Authorization: Bearer <OIDC token>`` when the subscription names a service account (RS256, signed
by the Google key set whose certificates the sandbox serves at ``/oauth2/v1/certs``; claims ``iss``
``https://accounts.google.com``, ``aud`` the subscription's audience (default: the endpoint URL),
``azp``/``sub`` the service account's numeric id, ``email``, ``email_verified``, ``iat``, ``exp`` one
hour later). 102, 200, 201, 202 and 204 acknowledge; any other status, a connection error or no answer
within the ack deadline is a NACK, retried with exponential backoff between the subscription's minimum
and maximum backoff (Pub/Sub's RetryPolicy; the sandbox's defaults are short, for tests).

Each subscription delivers on its own background thread, one request at a time, never inside the call
that published. Faults per subscription (:class:`PushFaults`): delay, duplicate, reorder, drop. Every
attempt is logged (status, timings, no tokens).
"""

from __future__ import annotations

import base64
import heapq
import http.client
import json
import logging
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt

from .google_keys import GoogleKeys, new_rsa_key
from .oauth import subject_for

__all__ = [
    "ACK_STATUSES",
    "GMAIL_PUSH_ACCOUNT",
    "GOOGLE_ISSUER",
    "PubSubSandbox",
    "PushConfig",
    "PushFaults",
    "PushSubscription",
]

log = logging.getLogger("coffeeping_sandbox.pubsub")

GOOGLE_ISSUER = "https://accounts.google.com"
# Pub/Sub treats exactly these answers of a push endpoint as an acknowledgement.
ACK_STATUSES = frozenset({102, 200, 201, 202, 204})
USER_AGENT = "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)"
# The account Gmail publishes as; a topic needs roles/pubsub.publisher granted to it.
GMAIL_PUSH_ACCOUNT = "gmail-api-push@system.gserviceaccount.com"
TOPIC_RE = re.compile(r"^projects/([^/\s]+)/topics/([^/\s]+)$")
SUBSCRIPTION_RE = re.compile(r"^projects/([^/\s]+)/subscriptions/([^/\s]+)$")
DEFAULT_MIN_BACKOFF_S = 0.1
DEFAULT_MAX_BACKOFF_S = 2.0
DEFAULT_ACK_DEADLINE_S = 10.0
_LOG_LIMIT = 10_000
_DUPLICATE_GAP_S = 0.05


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _probability(value: Any, name: str) -> float:
    """A probability 0..1, or ``"every"`` (1.0) / ``"never"`` (0.0)."""
    if value == "every" or value is True:
        return 1.0
    if value in ("never", None) or value is False:
        return 0.0
    if isinstance(value, int | float) and 0.0 <= float(value) <= 1.0:
        return float(value)
    raise ValueError(f'{name} must be a probability between 0 and 1, "every" or "never"')


def _public_url(url: str) -> str:
    """A URL without its query string (which may carry a verification token); other strings unchanged."""
    parts = urlsplit(url)
    if not parts.scheme:
        return url
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


@dataclass
class Topic:
    name: str
    gmail_publisher: bool = True
    created: float = field(default_factory=time.time)
    published: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "gmail_publisher": self.gmail_publisher,
            "publishers": [f"serviceAccount:{GMAIL_PUSH_ACCOUNT}"] if self.gmail_publisher else [],
            "published": self.published,
        }


@dataclass(frozen=True)
class PubsubMessage:
    topic: str
    message_id: str
    data: bytes
    attributes: dict[str, str]
    published_at: float

    def wire(self) -> dict[str, Any]:
        """Pub/Sub's push JSON for the message (both spellings of the id and time, as Pub/Sub sends)."""
        ts = _rfc3339(self.published_at)
        out: dict[str, Any] = {}
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        out["data"] = base64.b64encode(self.data).decode("ascii")
        out.update(messageId=self.message_id, message_id=self.message_id, publishTime=ts, publish_time=ts)
        return out

    def decoded(self) -> Any:
        try:
            return json.loads(self.data)
        except ValueError:
            return None


@dataclass
class PushFaults:
    """Faults of one push subscription. Probabilities are 0..1 (1 = every message)."""

    delay_s: float = 0.0  # every delivery (and redelivery) waits this long first
    duplicate: float = 0.0  # chance a message is delivered twice (same messageId)
    reorder: int = 0  # hold the next N messages, then deliver them newest first
    reorder_window_s: float = 2.0  # release a partial held batch after this long
    drop: float = 0.0  # chance a message is never delivered
    drop_next: int = 0  # never deliver the next N messages
    seed: int | None = None  # for reproducible probabilities

    def validate(self) -> PushFaults:
        self.duplicate = _probability(self.duplicate, "duplicate")
        self.drop = _probability(self.drop, "drop")
        for name in ("delay_s", "reorder_window_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a number >= 0")
            setattr(self, name, float(value))
        for name in ("reorder", "drop_next"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError("seed must be an integer")
        return self


@dataclass(order=True)
class _Item:
    due: float
    seq: int
    message: PubsubMessage = field(compare=False)
    attempts: int = field(default=0, compare=False)
    duplicate: bool = field(default=False, compare=False)


@dataclass
class PushConfig:
    """A push subscription to create at start (also parsed from ``key=value,...`` on the command line)."""

    topic: str
    endpoint: str
    audience: str | None = None
    service_account: str | None = None
    subscription: str | None = None
    ack_deadline_s: float = DEFAULT_ACK_DEADLINE_S
    min_backoff_s: float | None = None
    max_backoff_s: float | None = None
    max_attempts: int | None = None

    _KEYS = {
        "topic": ("topic", str),
        "endpoint": ("endpoint", str),
        "audience": ("audience", str),
        "service_account": ("service_account", str),
        "service-account": ("service_account", str),
        "subscription": ("subscription", str),
        "ack_deadline": ("ack_deadline_s", float),
        "ack-deadline": ("ack_deadline_s", float),
        "min_backoff": ("min_backoff_s", float),
        "min-backoff": ("min_backoff_s", float),
        "max_backoff": ("max_backoff_s", float),
        "max-backoff": ("max_backoff_s", float),
        "max_attempts": ("max_attempts", int),
        "max-attempts": ("max_attempts", int),
    }

    @classmethod
    def parse(cls, spec: str) -> PushConfig:
        """``topic=projects/p/topics/t,endpoint=URL[,audience=A][,service_account=E][,subscription=N]
        [,ack_deadline=S][,min_backoff=S][,max_backoff=S][,max_attempts=N]``."""
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in cls._KEYS:
                raise ValueError(f"unknown or malformed item {part!r} (expected key=value)")
            attr, conv = cls._KEYS[key.strip()]
            try:
                values[attr] = conv(value.strip())
            except ValueError:
                raise ValueError(f"{key} has a malformed value {value!r}") from None
        if "topic" not in values or "endpoint" not in values:
            raise ValueError("topic= and endpoint= are required")
        return cls(**values)


class PushSubscription:
    """One push subscription and its delivery thread."""

    def __init__(
        self,
        name: str,
        topic: str,
        endpoint: str,
        sign: Callable[[str, str], str],
        audience: str | None = None,
        service_account: str | None = None,
        ack_deadline_s: float = DEFAULT_ACK_DEADLINE_S,
        min_backoff_s: float = DEFAULT_MIN_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        max_attempts: int | None = None,
    ) -> None:
        self.name = name
        self.topic = topic
        self.endpoint = endpoint
        self.audience = audience or endpoint  # Pub/Sub's default audience is the endpoint URL
        self.service_account = service_account
        self.ack_deadline_s = ack_deadline_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_attempts = max_attempts
        self._sign = sign
        self.faults = PushFaults()
        self._rng = random.Random()
        self._cond = threading.Condition()
        self._heap: list[_Item] = []
        self._held: list[PubsubMessage] = []
        self._held_since = 0.0
        self._reorder_left = 0
        self._seq = 0
        self._in_flight = 0
        self._log: list[dict[str, Any]] = []
        self._log_seq = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"pubsub-push {name}", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------------- control
    def as_dict(self) -> dict[str, Any]:
        with self._cond:
            pending = len(self._heap) + len(self._held) + self._in_flight
            faults = asdict(self.faults)
        return {
            "name": self.name,
            "topic": self.topic,
            "pushConfig": {
                "pushEndpoint": _public_url(self.endpoint),
                "oidcToken": (
                    {"serviceAccountEmail": self.service_account, "audience": _public_url(self.audience)}
                    if self.service_account
                    else None
                ),
            },
            "ackDeadlineSeconds": self.ack_deadline_s,
            "retryPolicy": {"minimumBackoff": f"{self.min_backoff_s}s", "maximumBackoff": f"{self.max_backoff_s}s"},
            "max_attempts": self.max_attempts,
            "faults": faults,
            "pending": pending,
        }

    def set_faults(self, faults: PushFaults) -> None:
        faults.validate()
        with self._cond:
            self.faults = faults
            self._rng = random.Random(faults.seed)
            self._reorder_left = faults.reorder
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._held.clear()
            self._cond.notify_all()
        self._thread.join(0.2)

    def log(self) -> list[dict[str, Any]]:
        with self._cond:
            return [dict(e) for e in self._log]

    def idle(self) -> bool:
        with self._cond:
            return not (self._heap or self._held or self._in_flight)

    # ----------------------------------------------------------------------------------- intake
    def enqueue(self, message: PubsubMessage) -> None:
        """Called by the publisher: apply faults and schedule; never blocks on delivery."""
        with self._cond:
            if self._stopped:
                return
            f = self.faults
            if f.drop_next > 0 or (f.drop and self._rng.random() < f.drop):
                if f.drop_next > 0:
                    f.drop_next -= 1
                self._record(message, attempt=0, duplicate=False, outcome="dropped")
                return
            copies = 2 if f.duplicate and self._rng.random() < f.duplicate else 1
            if self._reorder_left > 0:
                self._reorder_left -= 1
                if not self._held:
                    self._held_since = time.time()
                self._held.extend([message] * copies)
                if self._reorder_left == 0:
                    self._release_held()
                self._cond.notify_all()
                return
            now = time.time()
            for i in range(copies):
                self._push(_Item(now + f.delay_s + i * _DUPLICATE_GAP_S, self._next_seq(), message, 0, i > 0))
            self._cond.notify_all()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _push(self, item: _Item) -> None:
        heapq.heappush(self._heap, item)

    def _release_held(self) -> None:
        """Deliver the held batch newest first (duplicates of a message stay adjacent)."""
        now = time.time() + self.faults.delay_s
        seen: set[str] = set()
        for msg in reversed(self._held):
            dup = msg.message_id in seen
            seen.add(msg.message_id)
            self._push(_Item(now, self._next_seq(), msg, 0, dup))
        self._held.clear()
        self._reorder_left = 0

    # ----------------------------------------------------------------------------------- delivery
    def _run(self) -> None:
        while True:
            with self._cond:
                item = None
                while item is None:
                    if self._stopped:
                        return
                    now = time.time()
                    wait: float | None = None
                    if self._held:
                        release_at = self._held_since + self.faults.reorder_window_s
                        if now >= release_at:
                            self._release_held()
                            continue
                        wait = release_at - now
                    if self._heap and self._heap[0].due <= now:
                        item = heapq.heappop(self._heap)
                        self._in_flight += 1
                        break
                    if self._heap:
                        due_in = self._heap[0].due - now
                        wait = due_in if wait is None else min(wait, due_in)
                    self._cond.wait(wait)
            try:
                self._deliver(item)
            except Exception:  # a sandbox bug must not kill the delivery thread
                log.exception("push delivery failed unexpectedly")
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()

    def _deliver(self, item: _Item) -> None:
        body = json.dumps({"message": item.message.wire(), "subscription": self.name}).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "From": "noreply@google.com",
            "Accept": "*/*",
        }
        if self.service_account:
            headers["Authorization"] = "Bearer " + self._sign(self.audience, self.service_account)
        attempt = item.attempts + 1
        sent = time.time()
        status: int | None = None
        error: str | None = None
        try:
            status = _post(self.endpoint, body, headers, self.ack_deadline_s)
        except TimeoutError:
            error = f"no answer within the ack deadline ({self.ack_deadline_s:g}s)"
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
        done = time.time()
        if status in ACK_STATUSES:
            outcome, retry_in = "ack", None
        elif self.max_attempts is not None and attempt >= self.max_attempts:
            outcome, retry_in = "abandoned", None
        else:
            outcome = "nack" if status is not None else "error"
            retry_in = min(self.max_backoff_s, self.min_backoff_s * (2 ** (attempt - 1)))
        with self._cond:
            if self._stopped:
                return
            self._record(
                item.message,
                attempt=attempt,
                duplicate=item.duplicate,
                outcome=outcome,
                status=status,
                error=error,
                sent_at=sent,
                duration_ms=round((done - sent) * 1000, 1),
                retry_in_s=retry_in,
            )
            if retry_in is not None:
                due = done + retry_in + self.faults.delay_s
                self._push(_Item(due, self._next_seq(), item.message, attempt, item.duplicate))
                self._cond.notify_all()

    def _record(self, message: PubsubMessage, *, attempt: int, duplicate: bool, outcome: str, **kw: Any) -> None:
        self._log_seq += 1
        entry: dict[str, Any] = {
            "seq": self._log_seq,
            "subscription": self.name,
            "message_id": message.message_id,
            "attempt": attempt,
            "duplicate": duplicate,
            "outcome": outcome,
            "status": kw.get("status"),
            "error": kw.get("error"),
            "published_at": message.published_at,
            "sent_at": kw.get("sent_at"),
            "duration_ms": kw.get("duration_ms"),
            "latency_ms": (
                round((kw["sent_at"] - message.published_at) * 1000, 1) if kw.get("sent_at") else None
            ),
            "retry_in_s": kw.get("retry_in_s"),
            "endpoint": _public_url(self.endpoint),
            "audience": _public_url(self.audience),
            "authenticated": bool(self.service_account),
            "data": message.decoded(),
            "attributes": dict(message.attributes),
        }
        if len(self._log) < _LOG_LIMIT:
            self._log.append(entry)


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """One POST, no redirects followed (Pub/Sub does not follow them); returns the status."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


class PubSubSandbox:
    """Topics, push subscriptions and OIDC token minting. Thread safe."""

    def __init__(
        self,
        keys: GoogleKeys,
        topics: Iterable[str] = (),
        push: Iterable[PushConfig] = (),
        min_backoff_s: float = DEFAULT_MIN_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
    ) -> None:
        if not 0 <= min_backoff_s <= max_backoff_s:
            raise ValueError("backoff must satisfy 0 <= min <= max")
        self.keys = keys
        self.min_backoff_s = float(min_backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self._initial_topics = list(topics)
        self._initial_push = list(push)
        self._lock = threading.RLock()
        self._topics: dict[str, Topic] = {}
        self._subs: dict[str, PushSubscription] = {}
        self._messages: list[PubsubMessage] = []
        self._next_id = 0
        self._forger = new_rsa_key()  # signs forged tokens: never published
        self.reset()

    # ----------------------------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget topics, subscriptions, messages and faults; re-create the ones configured at start."""
        with self._lock:
            subs = list(self._subs.values())
            self._subs.clear()
            self._topics.clear()
            self._messages.clear()
            self._next_id = 10**15 + secrets.randbelow(9 * 10**15)
        for sub in subs:
            sub.stop()
        for name in self._initial_topics:
            self.create_topic(name)
        for cfg in self._initial_push:
            self.create_topic(cfg.topic, exist_ok=True)
            self.create_push_subscription(
                cfg.subscription or self.default_subscription_name(cfg.topic),
                cfg.topic,
                cfg.endpoint,
                audience=cfg.audience,
                service_account=cfg.service_account,
                ack_deadline_s=cfg.ack_deadline_s,
                min_backoff_s=cfg.min_backoff_s,
                max_backoff_s=cfg.max_backoff_s,
                max_attempts=cfg.max_attempts,
            )

    def stop(self) -> None:
        with self._lock:
            subs = list(self._subs.values())
            self._subs.clear()
        for sub in subs:
            sub.stop()

    @staticmethod
    def default_subscription_name(topic: str) -> str:
        m = TOPIC_RE.match(topic)
        if not m:
            raise ValueError("topic must look like projects/PROJECT/topics/TOPIC")
        return f"projects/{m.group(1)}/subscriptions/{m.group(2)}"

    # ----------------------------------------------------------------------------------- topics
    def create_topic(self, name: str, gmail_publisher: bool = True, exist_ok: bool = True) -> dict[str, Any]:
        """Register a topic; ``gmail_publisher`` grants roles/pubsub.publisher to Gmail's push account."""
        if not isinstance(name, str) or not TOPIC_RE.match(name):
            raise ValueError("topic must look like projects/PROJECT/topics/TOPIC")
        with self._lock:
            topic = self._topics.get(name)
            if topic is not None:
                if not exist_ok:
                    raise ValueError(f"topic {name} already exists")
                topic.gmail_publisher = gmail_publisher or topic.gmail_publisher
            else:
                topic = self._topics[name] = Topic(name, gmail_publisher)
            return topic.as_dict()

    def set_gmail_publisher(self, name: str, granted: bool) -> dict[str, Any]:
        with self._lock:
            topic = self._topics.get(name)
            if topic is None:
                raise LookupError(f"no topic {name}")
            topic.gmail_publisher = bool(granted)
            return topic.as_dict()

    def delete_topic(self, name: str) -> None:
        """Delete a topic; its subscriptions stay but receive nothing (as in Pub/Sub: ``_deleted-topic_``)."""
        with self._lock:
            if self._topics.pop(name, None) is None:
                raise LookupError(f"no topic {name}")

    def topics(self) -> list[dict[str, Any]]:
        with self._lock:
            return [t.as_dict() for t in self._topics.values()]

    def gmail_can_publish(self, name: str) -> bool:
        with self._lock:
            topic = self._topics.get(name)
            return topic is not None and topic.gmail_publisher

    # ----------------------------------------------------------------------------------- subscriptions
    def create_push_subscription(
        self,
        name: str,
        topic: str,
        endpoint: str,
        *,
        audience: str | None = None,
        service_account: str | None = None,
        ack_deadline_s: float = DEFAULT_ACK_DEADLINE_S,
        min_backoff_s: float | None = None,
        max_backoff_s: float | None = None,
        max_attempts: int | None = None,
    ) -> dict[str, Any]:
        """A push subscription of ``topic`` to ``endpoint``; ``service_account`` turns on OIDC tokens.

        ``name`` is ``projects/P/subscriptions/S`` (a bare ``S`` takes the topic's project). The
        audience defaults to the endpoint URL, as in Pub/Sub. Backoffs default to the sandbox's.
        """
        m = TOPIC_RE.match(topic or "")
        if not m:
            raise ValueError("topic must look like projects/PROJECT/topics/TOPIC")
        if name and "/" not in name:
            name = f"projects/{m.group(1)}/subscriptions/{name}"
        if not name or not SUBSCRIPTION_RE.match(name):
            raise ValueError("subscription must look like projects/PROJECT/subscriptions/NAME")
        parts = urlsplit(endpoint or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("endpoint must be an http(s) URL")
        lo = self.min_backoff_s if min_backoff_s is None else float(min_backoff_s)
        hi = self.max_backoff_s if max_backoff_s is None else float(max_backoff_s)
        if not 0 <= lo <= hi:
            raise ValueError("backoff must satisfy 0 <= min_backoff_s <= max_backoff_s")
        if not 0 < float(ack_deadline_s) <= 600:
            raise ValueError("ack_deadline_s must be in (0, 600]")
        if max_attempts is not None and (not isinstance(max_attempts, int) or max_attempts < 1):
            raise ValueError("max_attempts must be a positive integer")
        if service_account is not None and "@" not in service_account:
            raise ValueError("service_account must be an email address")
        with self._lock:
            if topic not in self._topics:
                raise LookupError(f"no topic {topic}")
            if name in self._subs:
                raise ValueError(f"subscription {name} already exists")
            sub = PushSubscription(
                name,
                topic,
                endpoint,
                self._push_token,
                audience=audience,
                service_account=service_account,
                ack_deadline_s=float(ack_deadline_s),
                min_backoff_s=lo,
                max_backoff_s=hi,
                max_attempts=max_attempts,
            )
            self._subs[name] = sub
            return sub.as_dict()

    def delete_subscription(self, name: str) -> None:
        with self._lock:
            sub = self._subs.pop(name, None)
        if sub is None:
            raise LookupError(f"no subscription {name}")
        sub.stop()

    def subscription(self, name: str) -> PushSubscription:
        with self._lock:
            sub = self._subs.get(name)
        if sub is None:
            raise LookupError(f"no subscription {name}")
        return sub

    def subscriptions(self) -> list[dict[str, Any]]:
        with self._lock:
            subs = list(self._subs.values())
        return [s.as_dict() for s in subs]

    # ----------------------------------------------------------------------------------- faults / log
    def set_faults(self, subscription: str, **faults: Any) -> dict[str, Any]:
        """Replace the subscription's faults: ``delay_s``, ``duplicate``, ``reorder``, ``reorder_window_s``,
        ``drop``, ``drop_next``, ``seed`` (see :class:`PushFaults`); no arguments clears them."""
        unknown = set(faults) - set(PushFaults.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        sub = self.subscription(subscription)
        sub.set_faults(PushFaults(**faults))
        return asdict(sub.faults)

    def clear_faults(self, subscription: str | None = None) -> None:
        with self._lock:
            subs = [self.subscription(subscription)] if subscription else list(self._subs.values())
        for sub in subs:
            sub.set_faults(PushFaults())

    def deliveries(self, subscription: str | None = None) -> list[dict[str, Any]]:
        """Every attempt (and drop), oldest first: outcome, status, error, timings, decoded data."""
        with self._lock:
            subs = [self.subscription(subscription)] if subscription else list(self._subs.values())
        out = [e for s in subs for e in s.log()]
        return sorted(out, key=lambda e: (e["sent_at"] or e["published_at"], e["seq"]))

    def wait_for_deliveries(
        self, subscription: str | None = None, count: int = 1, outcome: str | None = "ack", timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` log entries with ``outcome`` (None: any) exist; returns those entries.

        Raises ``TimeoutError`` with what was seen when the time runs out.
        """
        deadline = time.monotonic() + timeout
        while True:
            entries = [e for e in self.deliveries(subscription) if outcome is None or e["outcome"] == outcome]
            if len(entries) >= count:
                return entries
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{len(entries)} of {count} {outcome or 'any'} deliveries after {timeout}s: "
                    f"{self.deliveries(subscription)}"
                )
            time.sleep(0.01)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no subscription has a queued, held or in-flight delivery."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                subs = list(self._subs.values())
            if all(s.idle() for s in subs):
                return True
            time.sleep(0.01)
        return False

    def messages(self, topic: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            msgs = [m for m in self._messages if topic is None or m.topic == topic]
        return [
            {
                "topic": m.topic,
                "message_id": m.message_id,
                "published_at": m.published_at,
                "data": m.decoded(),
                "attributes": dict(m.attributes),
            }
            for m in msgs
        ]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            subs = list(self._subs.values())
            published = len(self._messages)
            topics = len(self._topics)
        outcomes: dict[str, int] = {}
        for s in subs:
            for e in s.log():
                outcomes[e["outcome"]] = outcomes.get(e["outcome"], 0) + 1
        return {"topics": topics, "subscriptions": len(subs), "published": published, **outcomes}

    # ----------------------------------------------------------------------------------- publishing
    def publish(self, topic: str, data: bytes | str | dict[str, Any], attributes: dict[str, str] | None = None) -> str:
        """Publish a message; every push subscription of the topic delivers it. Returns the messageId."""
        if isinstance(data, dict):
            data = json.dumps(data, separators=(",", ":"))
        if isinstance(data, str):
            data = data.encode()
        attributes = dict(attributes or {})
        if not data and not attributes:
            raise ValueError("a message needs data or attributes")
        with self._lock:
            t = self._topics.get(topic)
            if t is None:
                raise LookupError(f"no topic {topic}")
            self._next_id += 1
            msg = PubsubMessage(topic, str(self._next_id), bytes(data), attributes, time.time())
            t.published += 1
            if len(self._messages) < _LOG_LIMIT:
                self._messages.append(msg)
            subs = [s for s in self._subs.values() if s.topic == topic]
        for sub in subs:
            sub.enqueue(msg)
        return msg.message_id

    def publish_as_gmail(self, topic: str, data: dict[str, Any]) -> tuple[str | None, str | None]:
        """Gmail's publish: (messageId, None), or (None, why) when the topic is gone or forbids Gmail."""
        with self._lock:
            t = self._topics.get(topic)
            if t is None:
                return None, "topic does not exist"
            if not t.gmail_publisher:
                return None, f"{GMAIL_PUSH_ACCOUNT} may not publish"
            return self.publish(topic, data), None

    # ----------------------------------------------------------------------------------- OIDC tokens
    def oidc_claims(
        self,
        audience: str,
        email: str,
        *,
        email_verified: bool = True,
        issuer: str = GOOGLE_ISSUER,
        lifetime_s: int = 3600,
        iat: int | None = None,
        sub: str | None = None,
        claims: dict[str, Any] | None = None,
        omit: Iterable[str] = (),
    ) -> dict[str, Any]:
        now = int(time.time()) if iat is None else int(iat)
        subject = sub or subject_for(email)
        out: dict[str, Any] = {
            "aud": audience,
            "azp": subject,
            "email": email,
            "email_verified": email_verified,
            "exp": now + int(lifetime_s),
            "iat": now,
            "iss": issuer,
            "sub": subject,
        }
        out.update(claims or {})
        for key in omit:
            out.pop(key, None)
        return out

    def mint_oidc_token(
        self, audience: str, email: str, *, forged: bool = False, kid: str | None = None, **options: Any
    ) -> str:
        """An OIDC token as a push subscription sends it, with any claim changed for refusal tests.

        ``iat`` (epoch seconds) in the past with a short ``lifetime_s`` gives an expired token;
        ``forged`` signs with a key that is NOT in the served certificates (by default under the real
        current ``kid``, so only the signature check catches it); ``kid`` overrides the header's kid.
        """
        body = self.oidc_claims(audience, email, **options)  # options: those of ``oidc_claims``
        if forged:
            return jwt.encode(
                body, self._forger, algorithm="RS256", headers={"kid": kid or self.keys.current.kid, "typ": "JWT"}
            )
        return self.keys.sign(body, kid=kid)

    def _push_token(self, audience: str, email: str) -> str:
        return self.mint_oidc_token(audience, email)
