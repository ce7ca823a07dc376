"""Start every stand-in in background threads: :func:`start_sandbox`.

One Google HTTP server hosts OAuth (authorize, token, revoke, userinfo, tokeninfo, certificates), the
Gmail API blueprint and the control API under ``/_sandbox/``; Cloud Pub/Sub push delivery runs on
background threads (one per push subscription); Cloud KMS is a plaintext gRPC server; Clerk is a second
HTTP server.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import flask
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

from .clerk import ClerkSandbox
from .control import Control
from .google_keys import GoogleKeys
from .kms import KEY_RE, KmsSandbox
from .oauth import OAuthSandbox
from .pubsub import PubSubSandbox, PushConfig

log = logging.getLogger("coffeeping_sandbox")

GmailSandbox: Any = None
GMAIL_IMPORT_ERROR: str | None = "coffeeping_sandbox.gmail not installed"
if importlib.util.find_spec(f"{__package__}.gmail") is not None:
    try:
        from .gmail import GmailSandbox
    except Exception as _err:  # the Gmail stand-in is developed separately: keep the rest usable
        log.exception("cannot import the Gmail stand-in; serving without it")
        GMAIL_IMPORT_ERROR = f"{type(_err).__name__}: {_err}"
    else:
        GMAIL_IMPORT_ERROR = None

MAX_BODY = 64 << 20  # Gmail accepts messages up to 35 MB (base64url grows them by a third)


class ControlError(ValueError):
    """Bad input to the control API → 400 JSON."""


def _body() -> dict[str, Any]:
    if not flask.request.data:
        return {}
    data = flask.request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ControlError("body must be a JSON object")
    return data


def _get(
    data: dict[str, Any], key: str, types: type | tuple, default: Any = None, required: bool = False
) -> Any:
    if key not in data or data[key] is None:
        if required:
            raise ControlError(f"{key} is required")
        return default
    value = data[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ControlError(f"{key} has the wrong type")
    if not isinstance(value, types):
        raise ControlError(f"{key} has the wrong type")
    return value


def _str_list(data: dict[str, Any], key: str) -> list[str] | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return value.split()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ControlError(f"{key} must be a list of strings or a space-separated string")
    return value


def install_json_errors(app: flask.Flask) -> None:
    @app.errorhandler(ControlError)
    def control_error(err: ControlError) -> Any:
        return flask.jsonify({"error": "bad_request", "message": str(err)}), 400

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Any:
        code = err.code or 500
        return flask.jsonify({"error": {"code": code, "message": err.description, "status": err.name}}), code

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> Any:  # a sandbox bug: answer in JSON, keep serving
        log.exception("sandbox handler failed")
        return flask.jsonify(
            {"error": {"code": 500, "message": "sandbox internal error", "status": "INTERNAL"}}
        ), 500


def control_blueprint(sb: Sandbox) -> flask.Blueprint:
    bp = flask.Blueprint("sandbox_control", __name__, url_prefix="/_sandbox")

    @bp.post("/reset")
    def reset() -> Any:
        sb.reset()
        return flask.jsonify({"ok": True})

    @bp.post("/consent")
    def consent() -> Any:
        data = _body()
        email = _get(data, "email", str)
        count = _get(data, "count", int, 1)
        if not 1 <= count <= 10_000:
            raise ControlError("count must be between 1 and 10000")
        plan = sb.oauth.set_consent(
            email=email,
            scopes=_str_list(data, "scopes"),
            untick=_str_list(data, "untick") or (),
            deny=_get(data, "deny", bool, False),
            default=_get(data, "default", bool, False),
            count=count,
        )
        return flask.jsonify({"ok": True, "plan": plan.as_dict()})

    @bp.post("/faults")
    def faults() -> Any:
        data = _body()
        method = _get(data, "method", str, required=True)
        status = _get(data, "status", (int, str), required=True)
        if isinstance(status, str) and status != "hang" and not status.isupper():
            raise ControlError('status must be an HTTP status, "hang" or a gRPC code name')
        count = _get(data, "count", int, 1)
        seconds = _get(data, "seconds", (int, float), 30.0)
        if count < 1 or seconds < 0:
            raise ControlError("count must be >= 1 and seconds >= 0")
        sb.control.arm(method, status, count=count, hang_seconds=float(seconds))
        return flask.jsonify({"ok": True})

    @bp.delete("/faults")
    def clear_faults() -> Any:
        sb.control.clear_faults(flask.request.args.get("method"))
        return flask.jsonify({"ok": True})

    @bp.post("/latency")
    def latency() -> Any:
        data = _body()
        ms = _get(data, "ms", (int, float), required=True)
        if ms < 0:
            raise ControlError("ms must be >= 0")
        sb.control.set_latency(ms / 1000.0, _get(data, "method", str))
        return flask.jsonify({"ok": True})

    @bp.get("/requests")
    def requests_log() -> Any:
        return flask.jsonify({"requests": sb.control.log(flask.request.args.get("prefix", ""))})

    @bp.get("/grants")
    def grants() -> Any:
        return flask.jsonify({"grants": sb.oauth.grants_snapshot()})

    @bp.post("/grants/revoke")
    def revoke_grants() -> Any:
        data = _body()
        n = sb.oauth.revoke_grants(_get(data, "client_id", str), _get(data, "email", str))
        return flask.jsonify({"revoked": n})

    @bp.post("/clients")
    def clients() -> Any:
        data = _body()
        uris = _str_list(data, "redirect_uris")
        if not uris:
            raise ControlError("redirect_uris is required")
        sb.oauth.register_client(
            _get(data, "client_id", str, required=True), _get(data, "client_secret", str, required=True), uris
        )
        return flask.jsonify({"ok": True})

    @bp.post("/oauth/issue")
    def issue() -> Any:
        data = _body()
        try:
            body = sb.oauth.issue_tokens(
                email=_get(data, "email", str),
                scopes=_str_list(data, "scopes") or ["gmail.send"],
                client_id=_get(data, "client_id", str),
                offline=_get(data, "offline", bool, True),
            )
        except ValueError as err:
            raise ControlError(str(err)) from None
        return flask.jsonify(body)

    @bp.post("/oauth/token-lifetime")
    def token_lifetime() -> Any:
        seconds = _get(_body(), "seconds", int, required=True)
        if seconds <= 0:
            raise ControlError("seconds must be positive")
        sb.oauth.set_access_token_lifetime(seconds)
        return flask.jsonify({"ok": True, "seconds": seconds})

    @bp.post("/clock")
    def clock() -> Any:
        seconds = _get(_body(), "advance_s", (int, float), required=True)
        if seconds < 0:
            raise ControlError("advance_s must be >= 0")
        sb.oauth.advance_clock(seconds)
        return flask.jsonify({"ok": True})

    @bp.get("/counters")
    def counters() -> Any:
        return flask.jsonify(sb.counters())

    def key_name(data: dict[str, Any]) -> str:
        name = _get(data, "key_name", str, required=True)
        if not KEY_RE.match(name):
            raise ControlError("key_name must look like projects/*/locations/*/keyRings/*/cryptoKeys/*")
        return name

    @bp.get("/kms/keys")
    def kms_keys() -> Any:
        return flask.jsonify({"keys": sb.kms.keys_snapshot()})

    @bp.post("/kms/keys")
    def kms_create() -> Any:
        key = sb.kms.create_key(key_name(_body()))
        return flask.jsonify({"name": key.name, "primary": key.version_name(key.primary or 0)})

    @bp.post("/kms/rotate")
    def kms_rotate() -> Any:
        data = _body()
        try:
            version = sb.kms.rotate(key_name(data), make_primary=_get(data, "make_primary", bool, True))
        except KeyError:
            return flask.jsonify({"error": "not_found", "message": "no such key"}), 404
        return flask.jsonify({"version": version})

    @bp.post("/kms/version-state")
    def kms_state() -> Any:
        data = _body()
        try:
            sb.kms.set_version_state(
                key_name(data),
                _get(data, "version", int, required=True),
                _get(data, "state", str, required=True),
            )
        except KeyError:
            return flask.jsonify({"error": "not_found", "message": "no such key or version"}), 404
        except ValueError as err:
            raise ControlError(str(err)) from None
        return flask.jsonify({"ok": True})

    @bp.post("/kms/auto-create")
    def kms_auto() -> Any:
        sb.kms.auto_create = _get(_body(), "enabled", bool, required=True)
        return flask.jsonify({"ok": True})

    # ---- Google's signing keys (id_tokens and Pub/Sub OIDC tokens)
    @bp.post("/google-keys/rotate")
    def google_keys_rotate() -> Any:
        kid = sb.keys.rotate(keep_old=_get(_body(), "keep_old", bool, True))
        return flask.jsonify({"kid": kid, "kids": sb.keys.kids()})

    # ---- Cloud Pub/Sub
    def pubsub_call(fn: Callable[[], Any]) -> Any:
        """Run a Pub/Sub stand-in call: its result as JSON ({"ok": true} for None), 404 or 400."""
        try:
            result = fn()
        except LookupError as err:
            return flask.jsonify({"error": "not_found", "message": str(err).strip("'\"")}), 404
        except (ValueError, TypeError) as err:
            raise ControlError(str(err)) from None
        return flask.jsonify(result if result is not None else {"ok": True})

    @bp.get("/pubsub/topics")
    def pubsub_topics() -> Any:
        return flask.jsonify({"topics": sb.pubsub.topics()})

    @bp.post("/pubsub/topics")
    def pubsub_create_topic() -> Any:
        data = _body()
        name = _get(data, "name", str, required=True)
        gmail_publisher = _get(data, "gmail_publisher", bool, True)
        return pubsub_call(lambda: sb.pubsub.create_topic(name, gmail_publisher=gmail_publisher))

    @bp.post("/pubsub/topics/gmail-publisher")
    def pubsub_gmail_publisher() -> Any:
        data = _body()
        name = _get(data, "name", str, required=True)
        granted = _get(data, "granted", bool, required=True)
        return pubsub_call(lambda: sb.pubsub.set_gmail_publisher(name, granted))

    @bp.post("/pubsub/topics/delete")
    def pubsub_delete_topic() -> Any:
        name = _get(_body(), "name", str, required=True)
        return pubsub_call(lambda: sb.pubsub.delete_topic(name))

    @bp.get("/pubsub/subscriptions")
    def pubsub_subscriptions() -> Any:
        return flask.jsonify({"subscriptions": sb.pubsub.subscriptions()})

    @bp.post("/pubsub/subscriptions")
    def pubsub_create_subscription() -> Any:
        data = _body()
        args = (
            _get(data, "name", str, required=True),
            _get(data, "topic", str, required=True),
            _get(data, "endpoint", str, required=True),
        )
        options = {
            "audience": _get(data, "audience", str),
            "service_account": _get(data, "service_account", str),
            "ack_deadline_s": _get(data, "ack_deadline_s", (int, float), 10.0),
            "min_backoff_s": _get(data, "min_backoff_s", (int, float)),
            "max_backoff_s": _get(data, "max_backoff_s", (int, float)),
            "max_attempts": _get(data, "max_attempts", int),
        }
        return pubsub_call(lambda: sb.pubsub.create_push_subscription(*args, **options))

    @bp.post("/pubsub/subscriptions/delete")
    def pubsub_delete_subscription() -> Any:
        name = _get(_body(), "name", str, required=True)
        return pubsub_call(lambda: sb.pubsub.delete_subscription(name))

    @bp.post("/pubsub/faults")
    def pubsub_faults() -> Any:
        data = dict(_body())
        name = _get(data, "subscription", str, required=True)
        data.pop("subscription")
        return pubsub_call(lambda: {"faults": sb.pubsub.set_faults(name, **data)})

    @bp.delete("/pubsub/faults")
    def pubsub_clear_faults() -> Any:
        name = flask.request.args.get("subscription") or None
        return pubsub_call(lambda: sb.pubsub.clear_faults(name))

    @bp.get("/pubsub/deliveries")
    def pubsub_deliveries() -> Any:
        args = flask.request.args
        sub = args.get("subscription") or None
        if "count" not in args:
            return pubsub_call(lambda: {"deliveries": sb.pubsub.deliveries(sub)})
        try:
            count = int(args["count"])
            timeout = min(float(args.get("timeout_s", "5")), 60.0)
        except ValueError:
            raise ControlError("count and timeout_s must be numbers") from None
        outcome = args.get("outcome", "ack") or None
        try:
            entries = sb.pubsub.wait_for_deliveries(sub, count, None if outcome == "any" else outcome, timeout)
        except LookupError as err:
            return flask.jsonify({"error": "not_found", "message": str(err).strip("'\"")}), 404
        except TimeoutError as err:
            return flask.jsonify(
                {"error": "timeout", "message": str(err)[:500], "deliveries": sb.pubsub.deliveries(sub)}
            ), 408
        return flask.jsonify({"deliveries": entries})

    @bp.get("/pubsub/messages")
    def pubsub_messages() -> Any:
        return flask.jsonify({"messages": sb.pubsub.messages(flask.request.args.get("topic") or None)})

    @bp.post("/pubsub/publish")
    def pubsub_publish() -> Any:
        data = _body()
        payload = data.get("data")
        if not isinstance(payload, str | dict):
            raise ControlError("data must be a string or a JSON object")
        attributes = _get(data, "attributes", dict)
        if attributes is not None and not all(isinstance(v, str) for v in attributes.values()):
            raise ControlError("attributes must map strings to strings")
        topic = _get(data, "topic", str, required=True)
        return pubsub_call(lambda: {"messageIds": [sb.pubsub.publish(topic, payload, attributes)]})

    @bp.post("/pubsub/oidc-token")
    def pubsub_oidc_token() -> Any:
        data = _body()
        omit = _str_list(data, "omit") or ()
        token = sb.pubsub.mint_oidc_token(
            _get(data, "audience", str, required=True),
            _get(data, "email", str, required=True),
            email_verified=_get(data, "email_verified", bool, True),
            issuer=_get(data, "issuer", str, "https://accounts.google.com"),
            lifetime_s=_get(data, "lifetime_s", int, 3600),
            iat=_get(data, "iat", int),
            sub=_get(data, "sub", str),
            claims=_get(data, "claims", dict),
            omit=omit,
            forged=_get(data, "forged", bool, False),
            kid=_get(data, "kid", str),
        )
        return flask.jsonify({"token": token})

    @bp.post("/pubsub/wait-idle")
    def pubsub_wait_idle() -> Any:
        seconds = _get(_body(), "timeout_s", (int, float), 5.0)
        return flask.jsonify({"idle": sb.pubsub.wait_idle(min(float(seconds), 60.0))})

    return bp


class _ServerThread:
    def __init__(self, server: BaseWSGIServer, name: str):
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@dataclass
class Sandbox:
    host: str
    control: Control
    oauth: OAuthSandbox
    kms: KmsSandbox
    clerk: ClerkSandbox
    gmail: Any  # GmailSandbox, or None until the Gmail stand-in exists
    pubsub: PubSubSandbox
    keys: GoogleKeys  # Google's signing keys: id_tokens and Pub/Sub OIDC tokens
    google_url: str = ""
    kms_addr: str = ""
    clerk_url: str = ""
    base_latency_s: float = 0.0
    gmail_error: str | None = None  # why the Gmail stand-in is not mounted, if it is not
    _servers: list[_ServerThread] = field(default_factory=list)
    _on_reset: list[Callable[[], None]] = field(default_factory=list)

    def reset(self) -> None:
        """Forget all state (grants, keys, messages, faults, logs) but keep ports and configuration."""
        self.control.reset()
        self.control.set_latency(self.base_latency_s)
        self.pubsub.reset()
        self.keys.reset()
        self.oauth.reset()
        self.kms.reset()
        self.clerk.reset()
        if self.gmail is not None:
            self.gmail.reset()
        for fn in self._on_reset:
            fn()

    def counters(self) -> dict[str, Any]:
        return {
            "oauth": self.oauth.counters(),
            "kms": self.kms.counts(),
            "clerk": self.clerk.stats(),
            "pubsub": self.pubsub.stats(),
        }

    def endpoints(self) -> dict[str, str]:
        return {
            "google (OAuth, userinfo, revoke, Gmail API, control API)": self.google_url,
            "oauth authorize": self.google_url + "/o/oauth2/v2/auth",
            "oauth token": self.google_url + "/token",
            "oauth revoke": self.google_url + "/revoke",
            "oauth userinfo": self.google_url + "/oauth2/v3/userinfo",
            "google certs (PEM, Pub/Sub OIDC + id_token)": self.google_url + "/oauth2/v1/certs",
            "gmail api": (
                self.google_url + "/gmail/v1/users/me"
                if self.gmail is not None
                else f"(unavailable: {self.gmail_error})"
            ),
            "control api": self.google_url + "/_sandbox/",
            **{
                f"pubsub push {s['name']}": f"{s['topic']} -> {s['pushConfig']['pushEndpoint']}"
                for s in self.pubsub.subscriptions()
            },
            "cloud kms (plaintext gRPC)": self.kms_addr,
            "clerk jwks": self.clerk_url + "/.well-known/jwks.json",
            "clerk control": self.clerk_url + "/_sandbox/",
        }

    def stop(self) -> None:
        self.pubsub.stop()
        for srv in self._servers:
            srv.stop()
        self._servers.clear()
        self.kms.stop()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def google_app(sb: Sandbox) -> flask.Flask:
    app = flask.Flask("coffeeping_sandbox.google")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.register_blueprint(sb.oauth.blueprint())
    if sb.gmail is not None:
        try:
            app.register_blueprint(sb.gmail.blueprint())
        except Exception as err:  # the Gmail stand-in is developed separately: keep the rest usable
            log.exception("Gmail stand-in failed to mount; serving without it")
            sb.gmail_error = f"{type(err).__name__}: {err}"
            sb.gmail = None
    app.register_blueprint(control_blueprint(sb))
    install_json_errors(app)
    return app


def start_sandbox(
    host: str = "127.0.0.1",
    google_port: int = 0,
    kms_port: int = 0,
    clerk_port: int = 0,
    clients: list[tuple[str, str, list[str]]] | tuple = (),
    access_token_lifetime_s: int = 3600,
    clerk_issuer: str | None = None,
    latency_ms: float = 0,
    kms_keys: list[str] | tuple = (),
    kms_auto_create: bool = True,
    default_email: str = "sandbox.user@gmail.com",
    pubsub_topics: list[str] | tuple = (),
    pubsub_push: list[PushConfig] | tuple = (),
    push_min_backoff_s: float = 0.1,
    push_max_backoff_s: float = 2.0,
) -> Sandbox:
    """Start Google (HTTP), KMS (gRPC) and Clerk (HTTP) stand-ins; port 0 picks a free port.

    ``pubsub_topics`` are registered with Gmail's publish permission; each :class:`PushConfig` in
    ``pubsub_push`` registers its topic the same way and creates its push subscription. Both are
    configuration: :meth:`Sandbox.reset` re-creates them.
    """
    control = Control()
    keys = GoogleKeys()
    oauth = OAuthSandbox(
        control, clients, access_token_lifetime_s=access_token_lifetime_s, default_email=default_email, keys=keys
    )
    pubsub = PubSubSandbox(
        keys, pubsub_topics, pubsub_push, min_backoff_s=push_min_backoff_s, max_backoff_s=push_max_backoff_s
    )
    gmail, gmail_error = None, GMAIL_IMPORT_ERROR
    if GmailSandbox is not None:
        try:
            gmail, gmail_error = GmailSandbox(oauth.token_info, control, pubsub=pubsub), None
        except Exception as err:  # see google_app
            log.exception("Gmail stand-in failed to start; serving without it")
            gmail_error = f"{type(err).__name__}: {err}"
    sb = Sandbox(
        host=host,
        control=control,
        oauth=oauth,
        kms=KmsSandbox(control, kms_keys, auto_create=kms_auto_create),
        clerk=ClerkSandbox(control, issuer=clerk_issuer),
        gmail=gmail,
        pubsub=pubsub,
        keys=keys,
        base_latency_s=latency_ms / 1000.0,
        gmail_error=gmail_error,
    )
    control.set_latency(sb.base_latency_s)
    url_host = f"[{host}]" if ":" in host else host
    try:
        google = _ServerThread(
            make_server(host, google_port, google_app(sb), threaded=True), "sandbox-google"
        )
        sb._servers.append(google)
        sb.google_url = f"http://{url_host}:{google.port}"
        clerk = _ServerThread(make_server(host, clerk_port, sb.clerk.app(), threaded=True), "sandbox-clerk")
        sb._servers.append(clerk)
        sb.clerk_url = f"http://{url_host}:{clerk.port}"
        sb.clerk.base_url = sb.clerk_url
        sb.kms_addr = f"{url_host}:{sb.kms.start(host, kms_port)}"
    except BaseException:
        sb.stop()
        raise
    return sb
