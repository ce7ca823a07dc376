"""The access log's cursor: each service's position round-trips, and anything else is a 422 (no process)."""

from __future__ import annotations

import base64
import json

import pytest

from coffeeping_gateway.problems import Problem
from coffeeping_gateway.views.privacy import _decode, _encode


def _cursor(document: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


def test_each_services_position_and_done_round_trip():
    positions = {"mailer": (1_796_000_000, 123_000, 42), "reply-watcher": None, "token-vault": (1, 0, 7)}
    assert _decode(_encode(positions)) == positions
    assert _decode("") == {}


@pytest.mark.parametrize("cursor", [
    "!!", "bm90", _cursor([1]), _cursor({"gmail": 0}), _cursor({"mailer": [1, 2]}),
    _cursor({"mailer": [10**20, 0, 1]}), _cursor({"mailer": [1, 10**9, 1]}), _cursor({"mailer": [1, 2, True]}),
    _cursor({"mailer": [-1, 0, 1]}), _cursor({"mailer": [1.5, 0, 1]}), _cursor({"mailer": "a"}),
])
def test_a_cursor_that_is_not_ours_is_a_field_error(cursor):
    with pytest.raises(Problem) as refused:
        _decode(cursor)
    assert refused.value.status == 422 and refused.value.extra["errors"][0]["field"] == "cursor"
