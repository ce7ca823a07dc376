"""The gateway's memory of verified session tokens: never past ``exp`` (plus the leeway), bounded."""

from __future__ import annotations

import time

from coffeeping_gateway.auth import LEEWAY_S, Session, VerifiedTokens

SESSION = Session(user_id="user_a", session_id="sess_a", issued_at=0)


def test_a_verified_token_is_remembered_until_it_expires():
    tokens = VerifiedTokens()
    tokens.put("a.b.c", SESSION, time.time() + 60)
    assert tokens.get("a.b.c") == SESSION
    assert tokens.get("a.b.d") is None  # a token is its own key: one byte off is verified in full


def test_an_expired_token_is_forgotten_after_the_leeway():
    tokens = VerifiedTokens()
    tokens.put("a.b.c", SESSION, time.time() - LEEWAY_S + 30)
    tokens.put("x.y.z", SESSION, time.time() - LEEWAY_S - 1)
    assert tokens.get("a.b.c") == SESSION  # within the leeway, as the full check would accept it
    assert tokens.get("x.y.z") is None


def test_the_least_recently_used_token_goes_first_when_full():
    tokens = VerifiedTokens(size=2)
    later = time.time() + 60
    tokens.put("t.1.x", SESSION, later)
    tokens.put("t.2.x", SESSION, later)
    assert tokens.get("t.1.x") == SESSION  # now the most recently used
    tokens.put("t.3.x", SESSION, later)
    assert tokens.get("t.2.x") is None
    assert tokens.get("t.1.x") == SESSION and tokens.get("t.3.x") == SESSION
