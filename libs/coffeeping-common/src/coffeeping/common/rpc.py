"""gRPC servers and channels with mutual TLS, per-method authorisation and graceful drain.

Servers require a client certificate signed by our CA; the certificate's common name is the calling
service. ``AuthInterceptor`` checks it against each method's allow-list, so servicers never parse
credentials. The end user's id (``x-user-id``) is trusted only from the callers a method names for
it; the request id (``x-request-id``) is carried into the logging context.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coffeeping.common.config import setting
from coffeeping.common.db import InvalidUserId, validate_user_id
from coffeeping.common.logging import accepted_request_id, current_request_id, request_id_var
from coffeeping.common.rpc_reload import ReloadingChannel, ServerCertificates

log = logging.getLogger(__name__)

USER_ID_KEY = "x-user-id"
REQUEST_ID_KEY = "x-request-id"
GATEWAY = "auth-gateway"

caller_var: contextvars.ContextVar[str] = contextvars.ContextVar("rpc_caller", default="")
user_var: contextvars.ContextVar[str] = contextvars.ContextVar("rpc_user", default="")

# Health and reflection answer any authenticated peer (probes run with a service certificate).
_OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                  "/grpc.reflection.v1.ServerReflection/")


@dataclass(frozen=True)
class TlsSettings:
    ca_cert: str = setting("TLS_CA_CERT", default="var/certs/ca.pem")
    cert: str = setting("TLS_CERT", default="")
    key: str = setting("TLS_KEY", default="")

    def for_service(self, service: str) -> TlsFiles:
        base = Path(self.ca_cert).parent
        return TlsFiles(
            ca=Path(self.ca_cert),
            cert=Path(self.cert) if self.cert else base / f"{service}.pem",
            key=Path(self.key) if self.key else base / f"{service}-key.pem",
        )


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()


@dataclass(frozen=True)
class Allow:
    """Who may call a method, and whose ``x-user-id`` the method believes.

    ``user_from`` defaults to the gateway only: other services pass a user id when they act on a
    stored row or event of that user, and must be named for the method explicitly.
    """

    callers: frozenset[str]
    user_from: frozenset[str] = field(default_factory=lambda: frozenset({GATEWAY}))
    needs_user: bool = True


def allow(*callers: str, user_from: Iterable[str] | None = None, needs_user: bool = True) -> Allow:
    trusted = frozenset(user_from) if user_from is not None else frozenset({GATEWAY}) & frozenset(callers)
    return Allow(frozenset(callers), trusted, needs_user)


def current_caller() -> str:
    return caller_var.get()


def current_user() -> str:
    """The verified end user of this call (empty when the method needs none)."""
    return user_var.get()


class MethodObserver(Protocol):
    def observe(self, code: str, seconds: float) -> None: ...


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates and authorizes every call, and reports it: a log line (not for health and reflection)
    and, given ``observer_for`` (a method's full name → its observer), its status code and duration."""

    def __init__(self, policy: Mapping[str, Allow],
                 observer_for: Callable[[str], MethodObserver] | None = None) -> None:
        # Keys are full method names: "/coffeeping.vault.v1.TokenVault/GetAccessToken".
        self.policy = dict(policy)
        self.observer_for = observer_for

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        open_method = method.startswith(_OPEN_SERVICES)
        rule = self.policy.get(method)

        def guard(context: grpc.ServicerContext) -> None:
            # gRPC maps each auth property to a list of values; the stubs (types-grpcio) say ``bytes``.
            auth = cast("Mapping[str, Sequence[bytes]]", context.auth_context())
            names = auth.get("x509_common_name") or []
            caller = names[0].decode() if names else ""
            if not caller:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "client certificate required")
            caller_var.set(caller)
            user_var.set("")
            metadata = dict(context.invocation_metadata())
            request_id_var.set(accepted_request_id(str(metadata.get(REQUEST_ID_KEY, ""))))
            if open_method:
                return
            if rule is None or caller not in rule.callers:
                log.warning("rpc refused", extra={"rpc_method": method, "caller": caller})
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "caller not allowed")
            user = metadata.get(USER_ID_KEY)
            if rule.needs_user:
                if not user or caller not in rule.user_from:
                    context.abort(grpc.StatusCode.PERMISSION_DENIED, "user not asserted by a trusted caller")
                try:
                    user_var.set(validate_user_id(str(user)))
                except InvalidUserId:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid user id")

        # Health and reflection get no log line: probes call every few seconds.
        observer = self.observer_for(method) if self.observer_for is not None else None
        return _wrap(handler, guard, "" if open_method else method, observer)


def _wrap(handler: grpc.RpcMethodHandler[Any, Any], guard: Callable[[grpc.ServicerContext], None],
          method: str, observer: MethodObserver | None) -> grpc.RpcMethodHandler[Any, Any]:
    """Run ``guard`` before the servicer, then report the call: a log line (method, caller, status code,
    time) unless ``method`` is empty, and its status code and duration to ``observer``."""

    def finish(context: grpc.ServicerContext, started: float, failed: BaseException | None) -> None:
        seconds = time.perf_counter() - started
        code = getattr(context, "code", lambda: None)()
        if isinstance(code, grpc.StatusCode):
            outcome = code.name
        else:  # the servicer returned, or raised (gRPC answers UNKNOWN), or the client went away
            outcome = "OK" if failed is None else "CANCELLED" if isinstance(failed, GeneratorExit) else "UNKNOWN"
        if observer is not None:
            observer.observe(outcome, seconds)
        if method:
            log.info("rpc", extra={"rpc_method": method, "caller": caller_var.get(), "code": outcome,
                                   "ms": round(seconds * 1000, 2)})

    @contextlib.contextmanager
    def guarded(context: grpc.ServicerContext) -> Iterator[None]:
        """The guard, then the call's body; its log line however it ends (a refusal included)."""
        started, failed = time.perf_counter(), None
        try:
            guard(context)
            yield
        except BaseException as exc:
            failed = exc
            raise
        finally:
            finish(context, started, failed)

    def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            with guarded(context):
                return behavior(request, context)

        return call

    def streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            with guarded(context):
                yield from behavior(request, context)

        return call

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kwargs)
    assert handler.stream_stream is not None  # gRPC's handlers carry exactly one of the four behaviours
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **kwargs)


# The health service name a liveness probe asks for; "" (and each service's own name) is readiness.
LIVENESS = "liveness"


@dataclass
class RunningServer:
    server: grpc.Server
    health: health.HealthServicer
    port: int
    grace: float
    names: tuple[str, ...] = ()  # the services it serves: their health follows readiness

    def report(self, live: bool, ready: bool) -> None:
        """Liveness (the process and its worker threads) and readiness (its own database and broker)."""
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set(LIVENESS, serving if live else not_serving)
        for name in ("", *self.names):
            self.health.set(name, serving if ready else not_serving)

    def stop(self) -> None:
        """Drain: report NOT_SERVING, refuse new calls, let running ones finish within ``grace``."""
        self.health.enter_graceful_shutdown()
        self.server.stop(self.grace).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()


def serve(
    service_name: str,
    registrations: Iterable[tuple[Callable[[Any, grpc.Server], None], Any, str]],
    policy: Mapping[str, Allow],
    port: int,
    tls: TlsFiles,
    host: str = "0.0.0.0",
    grace: float = 10.0,
    max_workers: int = 16,
) -> RunningServer:
    """Start a mutually authenticated gRPC server.

    ``registrations`` holds ``(add_XServicer_to_server, servicer, full_service_name)`` triples.
    """
    # Imported here: the gateway's gunicorn master imports this module and must not load prometheus_client.
    from coffeeping.common.metrics.rpc import method_metrics

    certificates = ServerCertificates(tls.ca, tls.cert, tls.key)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"{service_name}-rpc"),
        # Its RED metrics count refused calls with their codes too.
        interceptors=[AuthInterceptor(policy, method_metrics)],
        # Connections end after about five minutes (calls under way get 30 s more): clients then resolve
        # the Service's pods again and spread over replicas added since, and new handshakes take renewed
        # certificates up.
        options=[("grpc.max_receive_message_length", 8 * 1024 * 1024), ("grpc.max_connection_age_ms", 300_000),
                 ("grpc.max_connection_age_grace_ms", 30_000)],
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [health.SERVICE_NAME, reflection.SERVICE_NAME]
    for add, servicer, full_name in registrations:
        add(servicer, server)
        names.append(full_name)
        health_servicer.set(full_name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(names, server)
    # Renewed certificates are taken up by the next connection's handshake (rpc_reload).
    bound = server.add_secure_port(f"{host}:{port}", certificates.credentials())
    server.start()
    log.info("grpc server started", extra={"port": bound})
    return RunningServer(server, health_servicer, bound, grace, tuple(names[2:]))


def shutdown_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT. The entry point waits on it, then drains in order."""
    done = threading.Event()

    def handle(signum: int, _frame: Any) -> None:
        log.info("shutting down", extra={"signal": signum})
        done.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return done


# Calls are spread over every address the target resolves to: a Kubernetes headless Service's pods
# (``accounts:50051``), or a list (``ipv4:127.0.0.1:1,127.0.0.1:2``). Each replica's connection is kept
# up by the channel itself, and one that went away is tried again at most a second apart: gRPC's default
# backoff grows to 120 s, and a restarted service would stay unreachable, its calls failing at once, that
# long. Inside a cluster an attempt a second per client is cheap.
_CHANNEL_OPTIONS = [("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
                    ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)]
# The longest a channel takes to try a restarted replica again (the backoff's cap and its 20 % jitter).
RECONNECT_WITHIN_S = 1.2


def _channel_options(address: str) -> list[tuple[str, Any]]:
    """The channel's options; for a list of addresses, the name its certificates are checked against is
    the first address's host (gRPC would check the whole list)."""
    if not address.startswith("ipv4:") or "," not in address:
        return _CHANNEL_OPTIONS
    host = address.removeprefix("ipv4:").split(",", 1)[0].rsplit(":", 1)[0]
    return [*_CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", host)]


def channel(address: str, tls: TlsFiles, reload_check_s: float = 30.0) -> grpc.Channel:
    """A mutually authenticated channel to another service, spreading its calls over the service's
    replicas, and taking renewed certificate files up without a restart (looked at every
    ``reload_check_s``; rpc_reload)."""

    def make() -> grpc.Channel:
        ca, cert, key = tls.read()
        credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        return grpc.secure_channel(address, credentials, options=_channel_options(address))

    return ReloadingChannel(make, (tls.ca, tls.cert, tls.key), reload_check_s)


def call_metadata(user_id: str | None = None) -> tuple[tuple[str, str], ...]:
    """Metadata for an outgoing call: the request id and, when acting for a user, the user id."""
    items: list[tuple[str, str]] = []
    rid = current_request_id()
    if rid:
        items.append((REQUEST_ID_KEY, rid))
    if user_id:
        items.append((USER_ID_KEY, user_id))
    return tuple(items)
