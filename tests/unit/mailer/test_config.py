"""The mailer's ``MAILER_ROLE``: all (the default), api or scheduler; anything else stops the process
with one line naming the setting."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coffeeping.common.config import load, problems
from coffeeping_mailer.config import Settings

ENV = {"DATABASE_URL": "postgresql://cp_mailer@127.0.0.1:5432/coffeeping", "GRPC_PORT": "50053",
       "TOMBSTONE_KEY": "k" * 40}


def test_the_role_defaults_to_all_which_is_what_the_local_stack_runs():
    assert load(Settings, ENV).role == "all"


@pytest.mark.parametrize("raw,role", [("api", "api"), ("scheduler", "scheduler"), (" API ", "api"), ("all", "all")])
def test_each_role_is_accepted(raw, role):
    assert load(Settings, {**ENV, "MAILER_ROLE": raw}).role == role


def test_an_unknown_role_is_a_configuration_error_naming_the_setting():
    assert problems(Settings, {**ENV, "MAILER_ROLE": "worker"}) == [
        "MAILER_ROLE must be all, api or scheduler (got 'worker')"]


def test_the_mailer_refuses_to_start_with_an_unknown_role():
    done = subprocess.run([sys.executable, "-m", "coffeeping_mailer"], env={**ENV, "MAILER_ROLE": "both"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "configuration error: MAILER_ROLE must be all, api or scheduler (got 'both')"
