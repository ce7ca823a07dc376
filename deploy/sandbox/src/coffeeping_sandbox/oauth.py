"""Google OAuth 2.0 / OpenID Connect stand-in (authorization, token, revoke, userinfo, tokeninfo).

Behaves like ``accounts.google.com`` + ``oauth2.googleapis.com`` + ``openidconnect.googleapis.com`` for
a web-server client: registered clients with exact redirect URIs, automatic (controllable) consent for
API clients and a consent screen (Allow / Cancel) for a browser, single-use authorization codes, PKCE
S256, refresh tokens only on offline first consent or ``prompt=consent``, grant-wide revocation, and
Google's error bodies.

State is in memory and guarded by one lock; :meth:`OAuthSandbox.reset` forgets everything except the
clients registered at construction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import re
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus, urlencode

import flask
from markupsafe import escape

from .control import Control, InjectedFault
from .google_keys import GoogleKeys

USERINFO_EMAIL = "https://www.googleapis.com/auth/userinfo.email"
USERINFO_PROFILE = "https://www.googleapis.com/auth/userinfo.profile"
GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
GMAIL_COMPOSE = "https://www.googleapis.com/auth/gmail.compose"
GMAIL_METADATA = "https://www.googleapis.com/auth/gmail.metadata"
GMAIL_READONLY = "https://www.googleapis.com/auth/gmail.readonly"
GMAIL_MODIFY = "https://www.googleapis.com/auth/gmail.modify"
MAIL_GOOGLE = "https://mail.google.com/"

# Google reports the short OpenID scopes under their long names (``openid`` stays as is).
SCOPE_ALIASES = {"email": USERINFO_EMAIL, "profile": USERINFO_PROFILE}
KNOWN_SCOPES = frozenset(
    {
        "openid",
        USERINFO_EMAIL,
        USERINFO_PROFILE,
        GMAIL_SEND,
        GMAIL_COMPOSE,
        GMAIL_METADATA,
        GMAIL_READONLY,
        GMAIL_MODIFY,
        MAIL_GOOGLE,
    }
)
_PKCE_RE = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

DEFAULT_EMAIL = "sandbox.user@gmail.com"
GOOGLE_ISSUER = "https://accounts.google.com"


def _gmail_token_info_type() -> type | None:
    """The Gmail stand-in owns ``TokenInfo``; a broken or absent gmail.py must not take OAuth down."""
    if importlib.util.find_spec(f"{__package__}.gmail") is None:
        return None
    try:
        from .gmail import TokenInfo as gmail_token_info
    except Exception:  # logged again, with the traceback, when the server mounts the Gmail stand-in
        return None
    return gmail_token_info


@dataclass(frozen=True)
class _TokenInfo:
    email: str
    scopes: frozenset[str]


TokenInfo = _gmail_token_info_type() or _TokenInfo


def normalize_scope(scope: str) -> str:
    """``email`` → the userinfo.email URL; ``gmail.send`` → its full URL (shorthand for the control API)."""
    scope = scope.strip()
    if scope in SCOPE_ALIASES:
        return SCOPE_ALIASES[scope]
    if scope and "://" not in scope and scope != "openid":
        return "https://www.googleapis.com/auth/" + scope
    return scope


def subject_for(email: str) -> str:
    """A stable 21-digit Google account id for an email address."""
    digest = int.from_bytes(hashlib.sha256(email.lower().encode()).digest()[:9], "big")
    return "1" + str(digest).rjust(20, "0")[-20:]


@dataclass
class Client:
    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]


@dataclass
class ConsentPlan:
    """What the (simulated) user does on the consent screen."""

    email: str | None = None
    scopes: frozenset[str] | None = None  # grant only these of the requested scopes (None: all)
    untick: frozenset[str] = frozenset()  # untick these
    deny: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "scopes": sorted(self.scopes) if self.scopes is not None else None,
            "untick": sorted(self.untick),
            "deny": self.deny,
        }


@dataclass
class Grant:
    client_id: str
    email: str
    scopes: set[str]
    created: float
    revoked_at: float | None = None
    refresh_tokens: list[RefreshToken] = field(default_factory=list)
    access_tokens: list[AccessToken] = field(default_factory=list)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass
class AuthCode:
    code: str
    grant: Grant
    redirect_uri: str
    scopes: frozenset[str]
    challenge: str | None
    issue_refresh: bool
    nonce: str | None
    expires_at: float
    used: bool = False


@dataclass
class RefreshToken:
    token: str
    grant: Grant
    scopes: frozenset[str]
    created: float
    revoked: bool = False

    def live(self) -> bool:
        return not self.revoked and not self.grant.revoked


@dataclass
class AccessToken:
    token: str
    grant: Grant
    scopes: frozenset[str]
    issued_at: float
    expires_at: float
    revoked: bool = False

    def live(self, now: float) -> bool:
        return not self.revoked and not self.grant.revoked and now < self.expires_at


class OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str | None = None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.description = description


def _no_store(resp: flask.Response) -> flask.Response:
    resp.headers["Cache-Control"] = "no-cache, no-store, max-age=0, must-revalidate"
    resp.headers["Pragma"] = "no-cache"
    return resp


def json_error(status: int, error: str, description: str | None = None, **headers: str) -> flask.Response:
    body: dict[str, Any] = {"error": error}
    if description is not None:
        body["error_description"] = description
    resp = flask.jsonify(body)
    resp.status_code = status
    for k, v in headers.items():
        resp.headers[k.replace("_", "-")] = v
    return _no_store(resp)


_FAULT_BODIES = {
    429: ("rate_limit_exceeded", "Rate Limit Exceeded"),
    500: ("internal_failure", "Backend Error"),
    503: ("temporarily_unavailable", "The service is currently unavailable."),
}


def fault_status(fault: InjectedFault) -> int:
    """HTTP status for an injected fault: ints pass through, ``hang`` and gRPC code names → 503."""
    if isinstance(fault.status, int) and 400 <= fault.status <= 599:
        return fault.status
    if isinstance(fault.status, str) and fault.status.isdigit() and 400 <= int(fault.status) <= 599:
        return int(fault.status)
    return 503


def fault_response(fault: InjectedFault) -> flask.Response:
    status = fault_status(fault)
    error, desc = _FAULT_BODIES.get(status, ("server_error" if status >= 500 else "invalid_request", None))
    return json_error(status, error, desc or f"Injected fault ({fault.method})")


def _error_page(status: int, error: str, message: str) -> flask.Response:
    html = (
        f"<!doctype html><html><head><title>Error {status}: {escape(error)}</title></head><body>"
        f"<h1>Access blocked: Authorization Error</h1><p>{escape(message)}</p>"
        f"<p><b>Error {status}: {escape(error)}</b></p></body></html>"
    )
    return flask.Response(html, status=status, mimetype="text/html")


# How Google's consent screen words each scope.
SCOPE_WORDS = {
    "openid": "Associate you with your personal info on Google",
    USERINFO_EMAIL: "See your primary Google Account email address",
    USERINFO_PROFILE: "See your personal info, including any personal info you've made publicly available",
    GMAIL_SEND: "Send email on your behalf",
    GMAIL_COMPOSE: "Manage drafts and send emails",
    GMAIL_METADATA: "View your email message metadata, such as labels and headers, but not the email body",
    GMAIL_READONLY: "View your email messages and settings",
    GMAIL_MODIFY: "Read, compose, and send emails from your Gmail account",
    MAIL_GOOGLE: "Read, compose, send, and permanently delete all your email from Gmail",
}
_CONSENT_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;color:#202124;margin:0;background:#f1f3f4}"
    "main{max-width:30rem;margin:3rem auto;background:#fff;padding:2rem;border:1px solid #dadce0;border-radius:8px}"
    "h1{font-size:1.4rem;font-weight:500}.account{font-weight:600}.note{color:#5f6368;font-size:.875rem}"
    "li{margin:.4rem 0}form{display:flex;gap:1rem;justify-content:flex-end;margin-top:1.5rem}"
    "button{font:inherit;font-weight:600;padding:.5rem 1.5rem;border-radius:4px;border:1px solid #1a73e8;"
    "background:#1a73e8;color:#fff;cursor:pointer}button.secondary{background:#fff;color:#1a4fa0}"
    ":focus-visible{outline:3px solid #174ea6;outline-offset:2px}"
)


def _wants_page() -> bool:
    """A browser's navigation (it asks for HTML first), not an API client's request."""
    accept = flask.request.accept_mimetypes
    return flask.request.method == "GET" and accept.best_match(["application/json", "text/html"]) == "text/html"


def _certs(body: dict[str, Any]) -> flask.Response:
    """Google's certificate endpoints are cacheable for hours; verifiers honour max-age."""
    resp = flask.jsonify(body)
    resp.headers["Cache-Control"] = "public, max-age=21600, must-revalidate, no-transform"
    return resp


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class OAuthSandbox:
    def __init__(
        self,
        control: Control,
        clients: list[tuple[str, str, list[str]]] | tuple = (),
        access_token_lifetime_s: int = 3600,
        default_email: str = DEFAULT_EMAIL,
        issuer: str = GOOGLE_ISSUER,
        code_lifetime_s: int = 600,
        max_refresh_tokens: int = 100,
        keys: GoogleKeys | None = None,
    ):
        self.control = control
        self.issuer = issuer
        self.code_lifetime_s = code_lifetime_s
        self.max_refresh_tokens = max_refresh_tokens
        self._initial = (list(clients), int(access_token_lifetime_s), default_email)
        self._lock = threading.RLock()
        self.keys = keys if keys is not None else GoogleKeys()
        self.clients: dict[str, Client] = {}
        self.reset()

    # ----------------------------------------------------------------- state and control

    def reset(self) -> None:
        clients, lifetime, email = self._initial
        with self._lock:
            self.clients = {}
            for cid, secret, uris in clients:
                self.clients[cid] = Client(cid, secret, tuple(uris))
            self.access_token_lifetime_s = lifetime
            self.default_email = email
            self._clock_offset = 0.0
            self._default_plan = ConsentPlan()
            self._next_plans: list[ConsentPlan] = []
            self._grants: dict[tuple[str, str], Grant] = {}
            self._all_grants: list[Grant] = []
            self._codes: dict[str, AuthCode] = {}
            self._refresh: dict[str, RefreshToken] = {}
            self._access: dict[str, AccessToken] = {}
            self._refresh_grants: Counter[str] = Counter()
            self._code_exchanges: Counter[str] = Counter()
            self._access_issued = 0

    def now(self) -> float:
        return time.time() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the stand-in's clock forward (expires codes and access tokens without sleeping)."""
        with self._lock:
            self._clock_offset += float(seconds)

    def register_client(self, client_id: str, client_secret: str, redirect_uris: list[str]) -> None:
        with self._lock:
            self.clients[client_id] = Client(client_id, client_secret, tuple(redirect_uris))

    def set_access_token_lifetime(self, seconds: int) -> None:
        if int(seconds) <= 0:
            raise ValueError("lifetime must be positive")
        with self._lock:
            self.access_token_lifetime_s = int(seconds)

    def set_consent(
        self,
        email: str | None = None,
        scopes: list[str] | None = None,
        untick: list[str] | tuple = (),
        deny: bool = False,
        default: bool = False,
        count: int = 1,
    ) -> ConsentPlan:
        """Decide the next ``count`` consents (or, with ``default=True``, every later one)."""
        plan = ConsentPlan(
            email=email,
            scopes=frozenset(normalize_scope(s) for s in scopes) if scopes is not None else None,
            untick=frozenset(normalize_scope(s) for s in untick),
            deny=bool(deny),
        )
        with self._lock:
            if default:
                self._default_plan = plan
            else:
                self._next_plans.extend([plan] * max(1, int(count)))
        return plan

    def _take_plan(self) -> ConsentPlan:
        with self._lock:
            return self._next_plans.pop(0) if self._next_plans else self._default_plan

    def revoke_grants(self, client_id: str | None = None, email: str | None = None) -> int:
        """End grants as if the user removed access in their Google account (refresh → invalid_grant)."""
        with self._lock:
            hits = [
                g
                for (cid, em), g in self._grants.items()
                if (client_id is None or cid == client_id) and (email is None or em == email)
            ]
            for g in hits:
                self._end_grant(g)
            return len(hits)

    def _end_grant(self, grant: Grant) -> None:
        grant.revoked_at = self.now()
        for t in grant.refresh_tokens:
            t.revoked = True
        for a in grant.access_tokens:
            a.revoked = True
        if self._grants.get((grant.client_id, grant.email)) is grant:
            del self._grants[(grant.client_id, grant.email)]

    def issue_tokens(
        self,
        email: str | None = None,
        scopes: list[str] | tuple = (GMAIL_SEND,),
        client_id: str | None = None,
        offline: bool = True,
    ) -> dict[str, Any]:
        """Skip the browser: consent and exchange in one step (for tests of services and of Gmail).

        Returns the token endpoint's JSON (``access_token``, ``refresh_token`` when ``offline``, ...).
        """
        email = email or self.default_email
        granted = frozenset(normalize_scope(s) for s in scopes)
        unknown = granted - KNOWN_SCOPES
        if unknown:
            raise ValueError(f"unknown scopes: {sorted(unknown)}")
        with self._lock:
            if client_id is None:
                client_id = next(iter(self.clients), "sandbox-client")
            grant = self._grants.get((client_id, email))
            if grant is None:
                grant = Grant(client_id=client_id, email=email, scopes=set(), created=self.now())
                self._grants[(client_id, email)] = grant
                self._all_grants.append(grant)
            grant.scopes |= granted
            refresh = self._new_refresh(grant, granted) if offline else None
            access = self._new_access(grant, granted)
            body: dict[str, Any] = {
                "access_token": access.token,
                "expires_in": int(access.expires_at - self.now()),
                "scope": " ".join(sorted(granted)),
                "token_type": "Bearer",
            }
            if refresh is not None:
                body["refresh_token"] = refresh.token
            return body

    # ------------------------------------------------------------------ lookups for others

    def token_info(self, access_token: str) -> Any:
        """The account and scopes of a valid, unexpired, unrevoked access token, else None."""
        if not isinstance(access_token, str):
            return None
        with self._lock:
            rec = self._access.get(access_token)
            if rec is None or not rec.live(self.now()):
                return None
            return TokenInfo(email=rec.grant.email, scopes=frozenset(rec.scopes))

    def refresh_count(self, email: str | None = None) -> int:
        with self._lock:
            if email is None:
                return sum(self._refresh_grants.values())
            return self._refresh_grants[email]

    def counters(self) -> dict[str, Any]:
        with self._lock:
            return {
                "refresh_grants": dict(self._refresh_grants),
                "code_exchanges": dict(self._code_exchanges),
                "access_tokens_issued": self._access_issued,
            }

    def grants_snapshot(self) -> list[dict[str, Any]]:
        now = self.now()
        with self._lock:
            return [
                {
                    "client_id": g.client_id,
                    "email": g.email,
                    "sub": subject_for(g.email),
                    "scopes": sorted(g.scopes),
                    "created": g.created,
                    "revoked": g.revoked,
                    "revoked_at": g.revoked_at,
                    "refresh_tokens": [
                        {"token": t.token, "scopes": sorted(t.scopes), "live": t.live()}
                        for t in g.refresh_tokens
                    ],
                    "access_tokens": [
                        {
                            "token": a.token,
                            "scopes": sorted(a.scopes),
                            "expires_at": a.expires_at,
                            "live": a.live(now),
                        }
                        for a in g.access_tokens
                    ],
                }
                for g in self._all_grants
            ]

    def jwks(self) -> dict[str, Any]:
        return self.keys.jwks()

    # ----------------------------------------------------------------------- issuing

    def _new_access(self, grant: Grant, scopes: frozenset[str]) -> AccessToken:
        now = self.now()
        tok = AccessToken(
            token="ya29.sandbox-" + secrets.token_urlsafe(48),
            grant=grant,
            scopes=scopes,
            issued_at=now,
            expires_at=now + self.access_token_lifetime_s,
        )
        self._access[tok.token] = tok
        grant.access_tokens.append(tok)
        self._access_issued += 1
        return tok

    def _new_refresh(self, grant: Grant, scopes: frozenset[str]) -> RefreshToken:
        tok = RefreshToken(
            token="1//sandbox-" + secrets.token_urlsafe(48), grant=grant, scopes=scopes, created=self.now()
        )
        self._refresh[tok.token] = tok
        grant.refresh_tokens.append(tok)
        live = [t for t in grant.refresh_tokens if t.live()]
        for old in live[: max(0, len(live) - self.max_refresh_tokens)]:  # Google's per-account limit
            old.revoked = True
        return tok

    def _id_token(
        self, client_id: str, email: str, scopes: frozenset[str], access: str, nonce: str | None
    ) -> str:
        now = int(self.now())
        at_hash = _b64url(hashlib.sha256(access.encode()).digest()[:16])
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "azp": client_id,
            "aud": client_id,
            "sub": subject_for(email),
            "at_hash": at_hash,
            "iat": now,
            "exp": now + 3600,
        }
        if USERINFO_EMAIL in scopes:
            claims.update(email=email, email_verified=True)
        if nonce:
            claims["nonce"] = nonce
        return self.keys.sign(claims)

    def _token_response(
        self, access: AccessToken, refresh: RefreshToken | None, client_id: str, nonce: str | None
    ) -> flask.Response:
        body: dict[str, Any] = {
            "access_token": access.token,
            "expires_in": int(access.expires_at - self.now()),
            "scope": " ".join(sorted(access.scopes)),
            "token_type": "Bearer",
        }
        if refresh is not None:
            body["refresh_token"] = refresh.token
        if "openid" in access.scopes:
            body["id_token"] = self._id_token(
                client_id, access.grant.email, access.scopes, access.token, nonce
            )
        return _no_store(flask.jsonify(body))

    # ------------------------------------------------------------------------ handlers

    def blueprint(self) -> flask.Blueprint:
        bp = flask.Blueprint("oauth", __name__)
        bp.add_url_rule("/o/oauth2/v2/auth", view_func=self._authorize, methods=["GET", "POST"])
        bp.add_url_rule(
            "/o/oauth2/auth", view_func=self._authorize, methods=["GET", "POST"], endpoint="auth_v1"
        )
        bp.add_url_rule("/token", view_func=self._token, methods=["POST"])
        bp.add_url_rule("/o/oauth2/token", view_func=self._token, methods=["POST"], endpoint="token_v1")
        bp.add_url_rule("/revoke", view_func=self._revoke, methods=["GET", "POST"])
        bp.add_url_rule(
            "/o/oauth2/revoke", view_func=self._revoke, methods=["GET", "POST"], endpoint="revoke_v1"
        )
        bp.add_url_rule("/oauth2/v3/userinfo", view_func=self._userinfo_v3, methods=["GET", "POST"])
        bp.add_url_rule(
            "/v1/userinfo", view_func=self._userinfo_v3, methods=["GET", "POST"], endpoint="ui_v1"
        )
        bp.add_url_rule("/oauth2/v2/userinfo", view_func=self._userinfo_v2, methods=["GET", "POST"])
        bp.add_url_rule("/oauth2/v1/userinfo", view_func=self._userinfo_v2, methods=["GET"], endpoint="ui_o1")
        bp.add_url_rule("/tokeninfo", view_func=self._tokeninfo, methods=["GET", "POST"])
        bp.add_url_rule(
            "/oauth2/v3/tokeninfo", view_func=self._tokeninfo, methods=["GET", "POST"], endpoint="ti3"
        )
        bp.add_url_rule("/oauth2/v3/certs", view_func=lambda: _certs(self.jwks()), endpoint="certs")
        bp.add_url_rule("/oauth2/v1/certs", view_func=lambda: _certs(self.keys.certs_v1()), endpoint="certs_v1")
        bp.add_url_rule("/.well-known/openid-configuration", view_func=self._discovery)
        return bp

    def _discovery(self) -> flask.Response:
        base = flask.request.host_url.rstrip("/")
        return flask.jsonify(
            {
                "issuer": self.issuer,
                "authorization_endpoint": base + "/o/oauth2/v2/auth",
                "token_endpoint": base + "/token",
                "userinfo_endpoint": base + "/v1/userinfo",
                "revocation_endpoint": base + "/revoke",
                "jwks_uri": base + "/oauth2/v3/certs",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid", "email", "profile"],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
                "code_challenge_methods_supported": ["S256"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
            }
        )

    # ---- authorization endpoint

    def _authorize(self) -> flask.Response:
        args = flask.request.values
        client_id = args.get("client_id", "")
        try:
            self.control.enter("oauth.authorize", client_id=client_id)
        except InjectedFault as fault:
            return fault_response(fault)
        if not client_id:
            return _error_page(400, "invalid_request", "Missing required parameter: client_id")
        with self._lock:
            client = self.clients.get(client_id)
        if client is None:
            return _error_page(400, "invalid_client", "The OAuth client was not found.")
        redirect_uri = args.get("redirect_uri", "")
        if not redirect_uri:
            return _error_page(400, "invalid_request", "Missing required parameter: redirect_uri")
        if redirect_uri not in client.redirect_uris:
            return _error_page(
                400,
                "redirect_uri_mismatch",
                "You can't sign in to this app because it doesn't comply with Google's OAuth 2.0 policy. "
                f"redirect_uri={redirect_uri}",
            )
        state = args.get("state")

        def back(**params: str) -> flask.Response:
            if state is not None:
                params["state"] = state
            sep = "&" if "?" in redirect_uri else "?"
            return flask.redirect(redirect_uri + sep + urlencode(params), code=302)

        try:
            requested, access_type, prompt, include_granted, challenge, login_hint, nonce = (
                self._validate_authorize(args)
            )
        except OAuthError as err:
            return back(error=err.error)
        decision = flask.request.form.get("consent")
        if decision is None and "none" not in prompt and _wants_page():
            return self._consent_screen(client_id, requested, login_hint)
        plan = self._take_plan()
        if plan.deny or decision == "deny":
            return back(error="access_denied")
        email = self._account(plan, login_hint)
        with self._lock:
            grant = self._grants.get((client_id, email))
            if "none" in prompt:
                if grant is None or not requested <= grant.scopes:
                    return back(error="consent_required")
                granted = set(requested)
            else:
                granted = set(requested) - plan.untick
                if plan.scopes is not None:
                    granted &= plan.scopes
            has_live_refresh = grant is not None and any(t.live() for t in grant.refresh_tokens)
            issue_refresh = access_type == "offline" and (not has_live_refresh or "consent" in prompt)
            if grant is None:
                grant = Grant(client_id=client_id, email=email, scopes=set(), created=self.now())
                self._grants[(client_id, email)] = grant
                self._all_grants.append(grant)
            code_scopes = granted | grant.scopes if include_granted else granted
            grant.scopes |= granted
            code = AuthCode(
                code="4/0sandbox-" + secrets.token_urlsafe(40),
                grant=grant,
                redirect_uri=redirect_uri,
                scopes=frozenset(code_scopes),
                challenge=challenge,
                issue_refresh=issue_refresh,
                nonce=nonce,
                expires_at=self.now() + self.code_lifetime_s,
            )
            self._codes[code.code] = code
        return back(code=code.code, scope=" ".join(sorted(code.scopes)), authuser="0", prompt="consent")

    def _account(self, plan: ConsentPlan, login_hint: str | None) -> str:
        return plan.email or (login_hint if login_hint and _EMAIL_RE.match(login_hint) else self.default_email)

    def _consent_screen(self, client_id: str, requested: frozenset[str], login_hint: str | None) -> flask.Response:
        """What a browser sees: the account, the app and each scope asked for; Allow or Cancel posts back
        here with the same parameters. (API clients, which do not ask for HTML, get the automatic consent.)"""
        with self._lock:
            plan = self._next_plans[0] if self._next_plans else self._default_plan
        email = self._account(plan, login_hint)
        hidden = "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
                         for k, v in flask.request.args.items(multi=True))
        scopes = "".join(f"<li>{escape(SCOPE_WORDS.get(s, s))}</li>" for s in sorted(requested))
        html = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Sign in with Google</title><style>{_CONSENT_STYLE}</style></head><body><main>"
            f"<p class=\"note\">Sandbox stand-in for Google's consent screen</p>"
            f"<h1>{escape(client_id)} wants to access your Google Account</h1>"
            f'<p class="account">{escape(email)}</p><p>This will allow the app to:</p><ul>{scopes}</ul>'
            f'<form method="post" action="{escape(flask.request.path)}">{hidden}'
            '<button type="submit" name="consent" value="deny" class="secondary">Cancel</button>'
            '<button type="submit" name="consent" value="allow">Allow</button></form></main></body></html>'
        )
        return _no_store(flask.Response(html, mimetype="text/html"))

    def _validate_authorize(self, args: Any) -> tuple:
        response_type = args.get("response_type")
        if not response_type:
            raise OAuthError(400, "invalid_request", "Required parameter is missing: response_type")
        if response_type != "code":
            raise OAuthError(400, "unsupported_response_type")
        raw_scope = args.get("scope", "")
        if not raw_scope.strip():
            raise OAuthError(400, "invalid_request", "Missing required parameter: scope")
        requested = set()
        for s in raw_scope.split():
            s = SCOPE_ALIASES.get(s, s)
            if s not in KNOWN_SCOPES:
                raise OAuthError(400, "invalid_scope", f"Some requested scopes were invalid. {{invalid={s}}}")
            requested.add(s)
        access_type = args.get("access_type", "online")
        if access_type not in ("online", "offline"):
            raise OAuthError(400, "invalid_request", "Invalid access_type")
        prompt = set(args.get("prompt", "").split())
        if not prompt <= {"none", "consent", "select_account"} or ("none" in prompt and len(prompt) > 1):
            raise OAuthError(400, "invalid_request", "Invalid prompt")
        include = args.get("include_granted_scopes", "false")
        if include not in ("true", "false"):
            raise OAuthError(400, "invalid_request", "Invalid include_granted_scopes")
        challenge = args.get("code_challenge")
        method = args.get("code_challenge_method")
        if challenge is not None or method is not None:
            if method != "S256":  # absent means "plain", which this stand-in (and our policy) refuses
                raise OAuthError(400, "invalid_request", "Invalid code_challenge_method")
            if not challenge or not _PKCE_RE.match(challenge):
                raise OAuthError(400, "invalid_request", "Invalid code_challenge")
        return (
            frozenset(requested),
            access_type,
            prompt,
            include == "true",
            challenge,
            args.get("login_hint"),
            args.get("nonce"),
        )

    # ---- token endpoint

    def _form(self) -> dict[str, str]:
        req = flask.request
        if req.is_json:
            data = req.get_json(silent=True)
            if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
                raise OAuthError(400, "invalid_request", "Invalid JSON payload received.")
            return data
        return {k: v for k, v in req.form.items()}

    def _client_auth(self, form: dict[str, str]) -> Client:
        auth = flask.request.authorization
        cid, secret = form.get("client_id"), form.get("client_secret")
        if auth is not None and auth.type == "basic":
            b_id, b_secret = unquote_plus(auth.username or ""), unquote_plus(auth.password or "")
            if (cid and cid != b_id) or (secret and secret != b_secret):
                raise OAuthError(400, "invalid_request", "Multiple client authentication methods")
            cid, secret = b_id, b_secret
        if not cid:
            raise OAuthError(400, "invalid_request", "Could not determine client ID from request.")
        with self._lock:
            client = self.clients.get(cid)
        if client is None:
            raise OAuthError(401, "invalid_client", "The OAuth client was not found.")
        if not secret:
            raise OAuthError(400, "invalid_request", "client_secret is missing.")
        if not hmac.compare_digest(secret.encode(), client.client_secret.encode()):
            raise OAuthError(401, "invalid_client", "Unauthorized")
        return client

    def _token(self) -> flask.Response:
        try:
            form = self._form()
            grant_type = form.get("grant_type", "")
            self.control.enter("oauth.token", grant_type=grant_type)
        except InjectedFault as fault:
            return fault_response(fault)
        except OAuthError as err:
            return json_error(err.status, err.error, err.description)
        try:
            if grant_type not in ("authorization_code", "refresh_token"):
                raise OAuthError(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
            client = self._client_auth(form)
            if grant_type == "authorization_code":
                return self._exchange_code(client, form)
            return self._refresh_grant(client, form)
        except OAuthError as err:
            return json_error(err.status, err.error, err.description)

    def _exchange_code(self, client: Client, form: dict[str, str]) -> flask.Response:
        code, redirect_uri, verifier = form.get("code"), form.get("redirect_uri"), form.get("code_verifier")
        if not code:
            raise OAuthError(400, "invalid_request", "Missing required parameter: code")
        if not redirect_uri:
            raise OAuthError(400, "invalid_request", "Missing parameter: redirect_uri")
        with self._lock:
            rec = self._codes.get(code)
            if rec is None:
                raise OAuthError(400, "invalid_grant", "Malformed auth code.")
            if rec.used or self.now() >= rec.expires_at:
                raise OAuthError(400, "invalid_grant", "Bad Request")
            if rec.grant.client_id != client.client_id:
                raise OAuthError(400, "invalid_grant", "Unauthorized")
            if rec.redirect_uri != redirect_uri:
                raise OAuthError(400, "redirect_uri_mismatch", "Bad Request")
            if rec.challenge is not None:
                if not verifier:
                    raise OAuthError(400, "invalid_grant", "Missing code verifier.")
                expected = _b64url(hashlib.sha256(verifier.encode()).digest())
                if not _PKCE_RE.match(verifier) or not hmac.compare_digest(expected, rec.challenge):
                    raise OAuthError(400, "invalid_grant", "Invalid code verifier.")
            rec.used = True
            grant = rec.grant
            if grant.revoked:  # revoked between consent and exchange: a fresh grant
                grant = Grant(client.client_id, grant.email, set(rec.scopes), self.now())
                self._grants[(client.client_id, grant.email)] = grant
                self._all_grants.append(grant)
            refresh = self._new_refresh(grant, rec.scopes) if rec.issue_refresh else None
            access = self._new_access(grant, rec.scopes)
            self._code_exchanges[grant.email] += 1
            return self._token_response(access, refresh, client.client_id, rec.nonce)

    def _refresh_grant(self, client: Client, form: dict[str, str]) -> flask.Response:
        token = form.get("refresh_token")
        if not token:
            raise OAuthError(400, "invalid_request", "Missing required parameter: refresh_token")
        with self._lock:
            rec = self._refresh.get(token)
            if rec is None or not rec.live():
                raise OAuthError(400, "invalid_grant", "Token has been expired or revoked.")
            if rec.grant.client_id != client.client_id:
                raise OAuthError(401, "unauthorized_client", "Unauthorized")
            scopes = rec.scopes
            if form.get("scope"):
                wanted = frozenset(SCOPE_ALIASES.get(s, s) for s in form["scope"].split())
                if not wanted <= rec.scopes:
                    bad = " ".join(sorted(wanted - rec.scopes))
                    raise OAuthError(
                        400, "invalid_scope", f"Some requested scopes were invalid. {{invalid={bad}}}"
                    )
                scopes = wanted
            access = self._new_access(rec.grant, scopes)
            self._refresh_grants[rec.grant.email] += 1
            return self._token_response(access, None, client.client_id, None)

    # ---- revocation

    def _revoke(self) -> flask.Response:
        try:
            self.control.enter("oauth.revoke")
        except InjectedFault as fault:
            return fault_response(fault)
        token = flask.request.values.get("token")
        if not token:
            return json_error(400, "invalid_request", "Missing required parameter: token")
        with self._lock:
            rec: RefreshToken | AccessToken | None = self._refresh.get(token) or self._access.get(token)
            live = rec is not None and (rec.live() if isinstance(rec, RefreshToken) else rec.live(self.now()))
            if rec is None or not live:
                return json_error(400, "invalid_token", "Token expired or revoked")
            self._end_grant(rec.grant)  # Google ends the whole grant, whichever token is revoked
        return _no_store(flask.jsonify({}))

    # ---- userinfo / tokeninfo

    def _bearer(self) -> AccessToken | None:
        header = flask.request.headers.get("Authorization", "")
        token = None
        if header[:7].lower() == "bearer ":
            token = header[7:].strip()
        elif not header:
            token = flask.request.args.get("access_token")
        if not token:
            return None
        with self._lock:
            rec = self._access.get(token)
            return rec if rec is not None and rec.live(self.now()) else None

    def _userinfo(self, method: str) -> tuple[AccessToken | None, flask.Response | None]:
        try:
            self.control.enter(method)
        except InjectedFault as fault:
            return None, fault_response(fault)
        rec = self._bearer()
        if rec is None:
            return None, json_error(
                401,
                "invalid_request",
                "Invalid Credentials",
                WWW_Authenticate='Bearer realm="https://accounts.google.com/", error="invalid_token"',
            )
        if not rec.scopes & {"openid", USERINFO_EMAIL, USERINFO_PROFILE}:
            return None, json_error(
                403,
                "insufficient_scope",
                "Insufficient Permission",
                WWW_Authenticate='Bearer realm="https://accounts.google.com/", error="insufficient_scope"',
            )
        return rec, None

    def _userinfo_v3(self) -> flask.Response:
        rec, err = self._userinfo("oauth.userinfo")
        if err is not None:
            return err
        assert rec is not None
        email = rec.grant.email
        body: dict[str, Any] = {"sub": subject_for(email)}
        if USERINFO_EMAIL in rec.scopes:
            body.update(email=email, email_verified=True)
        if USERINFO_PROFILE in rec.scopes:
            body.update(name=email.split("@")[0], given_name=email.split("@")[0])
        return flask.jsonify(body)

    def _userinfo_v2(self) -> flask.Response:
        rec, err = self._userinfo("oauth.userinfo")
        if err is not None:
            return err
        assert rec is not None
        email = rec.grant.email
        body: dict[str, Any] = {"id": subject_for(email)}
        if USERINFO_EMAIL in rec.scopes:
            body.update(email=email, verified_email=True)
        return flask.jsonify(body)

    def _tokeninfo(self) -> flask.Response:
        try:
            self.control.enter("oauth.tokeninfo")
        except InjectedFault as fault:
            return fault_response(fault)
        token = flask.request.values.get("access_token")
        with self._lock:
            rec = self._access.get(token or "")
            now = self.now()
            if rec is None or not rec.live(now):
                return json_error(400, "invalid_token", "Invalid Value")
            body: dict[str, Any] = {
                "azp": rec.grant.client_id,
                "aud": rec.grant.client_id,
                "sub": subject_for(rec.grant.email),
                "scope": " ".join(sorted(rec.scopes)),
                "exp": str(int(rec.expires_at)),
                "expires_in": str(int(rec.expires_at - now)),
                "access_type": "offline" if rec.grant.refresh_tokens else "online",
            }
            if USERINFO_EMAIL in rec.scopes:
                body.update(email=rec.grant.email, email_verified="true")
        return flask.jsonify(body)
