"""GetGrantInfo answered from memory (``token_cache.GRANT_VIEW``): every change to the grant, made by
either vault process or by hand, reaches the other process's view at once."""

from __future__ import annotations

import time

from bench.vault_harness import new_user
from coffeeping.common.rpc import call_metadata
from coffeeping.vault.v1 import vault_pb2


def _info(vault, user: str, process) -> vault_pb2.GrantInfo:
    return vault.stub("auth-gateway", process).GetGrantInfo(vault_pb2.GetGrantInfoRequest(),
                                                            metadata=call_metadata(user), timeout=30)


def _until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_connection_made_in_one_process_shows_in_the_other_that_served_not_connected(vault):
    user, email = new_user("viewconnect")
    other = vault.processes[1]
    for _ in range(3):  # "not connected", now in the second process's memory
        assert not _info(vault, user, other).connected
    vault.connect(user, email, process=vault.processes[0])
    assert _until(lambda: _info(vault, user, other).connected)
    assert _info(vault, user, other).email == email


def test_a_revocation_and_a_change_by_hand_reach_the_view_served_from_memory(vault):
    user, email = new_user("viewrevoke")
    other = vault.processes[1]
    vault.connect(user, email)
    for _ in range(3):
        assert _info(vault, user, other).status == "connected"
    vault.db.execute("UPDATE vault.grants SET status = 'needs_reconnect' WHERE user_id = %s", user)
    assert _until(lambda: _info(vault, user, other).status == "needs_reconnect")
    vault.stub("auth-gateway", vault.processes[0]).RevokeGrant(
        vault_pb2.RevokeGrantRequest(reason="user_disconnected"), metadata=call_metadata(user), timeout=30)
    assert _until(lambda: not _info(vault, user, other).connected)

