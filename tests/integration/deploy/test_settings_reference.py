"""docs/CONFIGURATION.md is the settings classes' own account of every setting, kept current."""

from __future__ import annotations

import settings_reference


def test_the_settings_reference_is_current():
    written = settings_reference.TARGET.read_text()
    assert written == settings_reference.render(), "run: .venv/bin/python deploy/settings_reference.py"


def test_every_setting_says_what_it_is_who_reads_it_and_whether_it_is_secret():
    rows = settings_reference.collect()
    names = {row.name for row in rows}
    assert {"DATABASE_URL", "OAUTH_STATE_SECRET", "TOMBSTONE_KEY", "GMAIL_API_ENDPOINT"} <= names
    by_name = {row.name: row for row in rows}
    assert by_name["OAUTH_STATE_SECRET"].secret and by_name["OAUTH_STATE_SECRET"].readers == ["auth-gateway"]
    assert not by_name["GOOGLE_CLIENT_ID"].secret
    assert set(by_name["TOMBSTONE_KEY"].readers) == {"accounts", "token-vault", "mailer", "reply-watcher"}
