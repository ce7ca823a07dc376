"""deploy/bootstrap_db.py's passwords, checked without a database: every role's password is required
(a missing one stops the bootstrap before it connects, with one line naming the variable), and only
an explicit development run (``--dev``, ``dev=True``) falls back to ``<role>-dev-password``."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "deploy"))

import bootstrap_db  # noqa: E402
from bootstrap_db import MissingPasswordError, bootstrap, password_variable, role_url, roles  # noqa: E402

# Nothing listens here: a bootstrap that got as far as connecting would fail with OperationalError.
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/postgres"


@pytest.fixture
def no_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    for role in roles():
        monkeypatch.delenv(password_variable(role), raising=False)


@pytest.fixture
def all_passwords(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {role: f"pw-{role}" for role in roles()}
    for role, value in values.items():
        monkeypatch.setenv(password_variable(role), value)
    return values


def test_every_role_of_every_schema_has_a_password_variable():
    assert password_variable("cp_accounts") == "PG_PASSWORD_CP_ACCOUNTS"
    assert password_variable("cp_vault_owner") == "PG_PASSWORD_CP_VAULT_OWNER"
    assert set(roles()) == {f"cp_{schema}{suffix}" for schema in ("accounts", "vault", "mailer", "watcher")
                            for suffix in ("", "_owner")}


def test_a_missing_password_stops_the_bootstrap_before_it_connects(no_passwords):
    with pytest.raises(MissingPasswordError) as caught:
        bootstrap(UNREACHABLE, "coffeeping")
    message = str(caught.value)
    assert all(password_variable(role) in message for role in roles())
    assert "\n" not in message


def test_one_missing_password_is_named_alone(all_passwords, monkeypatch):
    monkeypatch.delenv("PG_PASSWORD_CP_MAILER_OWNER")
    with pytest.raises(MissingPasswordError, match=r"^PG_PASSWORD_CP_MAILER_OWNER is not set"):
        bootstrap(UNREACHABLE, "coffeeping")


def test_an_empty_password_counts_as_missing(all_passwords, monkeypatch):
    monkeypatch.setenv("PG_PASSWORD_CP_VAULT", "")
    with pytest.raises(MissingPasswordError, match="PG_PASSWORD_CP_VAULT "):
        role_url(UNREACHABLE, "coffeeping", "cp_vault")


def test_the_command_prints_one_line_naming_the_variable_and_fails(all_passwords, monkeypatch, capsys):
    monkeypatch.delenv("PG_PASSWORD_CP_ACCOUNTS")
    assert bootstrap_db.main(["--admin-url", UNREACHABLE]) == 2
    out, err = capsys.readouterr()
    assert not out
    (line,) = err.splitlines()
    assert line.startswith("bootstrap failed: PG_PASSWORD_CP_ACCOUNTS is not set")
    assert "pw-" not in err  # the passwords that are set are never printed


def test_with_every_password_set_the_bootstrap_goes_on_to_connect(all_passwords, capsys):
    assert bootstrap_db.main(["--admin-url", UNREACHABLE]) == 1
    assert "cannot reach PostgreSQL" in capsys.readouterr().err


def test_dev_falls_back_to_the_development_passwords_only_when_asked(no_passwords, capsys):
    with pytest.raises(MissingPasswordError):
        role_url(UNREACHABLE, "coffeeping", "cp_accounts")
    url = urlsplit(role_url(UNREACHABLE, "coffeeping", "cp_accounts", dev=True))
    assert (url.username, url.password) == ("cp_accounts", "cp_accounts-dev-password")
    assert bootstrap_db.main(["--dev", "--admin-url", UNREACHABLE]) == 1  # past the passwords, to the server
    assert "cannot reach PostgreSQL" in capsys.readouterr().err


def test_a_set_password_wins_over_dev_and_is_percent_encoded_in_the_url(all_passwords, monkeypatch):
    monkeypatch.setenv("PG_PASSWORD_CP_WATCHER", "p@ss:w/rd%")
    url = urlsplit(role_url("postgresql://admin@db.internal:6543/postgres", "coffeeping", "cp_watcher", dev=True))
    assert (url.username, unquote(url.password), url.hostname, url.port, url.path) == (
        "cp_watcher", "p@ss:w/rd%", "db.internal", 6543, "/coffeeping")


def test_dev_state_is_refused_without_dev(capsys):
    with pytest.raises(SystemExit) as caught:
        bootstrap_db.main(["--dev-state", "/tmp/nowhere"])
    assert caught.value.code == 2
    assert "--dev" in capsys.readouterr().err
