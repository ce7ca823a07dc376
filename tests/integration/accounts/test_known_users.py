"""GetMe answered from memory (``services.KnownUsers``): an accepted deletion, whichever accounts process
accepts it, stops every process answering for the user at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from coffeeping_accounts import deletions, services

from .conftest import wait_until


@pytest.fixture
def two_processes(accounts_engine) -> Iterator[tuple[services.KnownUsers, services.KnownUsers]]:
    """Two processes' caches, each with its own listener connection."""
    dsn = accounts_engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    stop = threading.Event()
    caches = (services.KnownUsers(dsn), services.KnownUsers(dsn))
    threads = [threading.Thread(target=cache.run, args=(stop,), daemon=True) for cache in caches]
    for thread in threads:
        thread.start()
    assert all(cache.connected.wait(10) for cache in caches)
    yield caches
    stop.set()
    for thread in threads:
        thread.join(10)


def test_a_seen_user_is_answered_from_memory(accounts_engine, two_processes, user_id):
    known, _ = two_processes
    first = services.me(accounts_engine, known, user_id)
    assert known.get(user_id, "") == first
    assert services.me(accounts_engine, known, user_id) == first


def test_a_deletion_accepted_elsewhere_stops_the_answer_from_memory(accounts_engine, saga, two_processes, user_id):
    here, elsewhere = two_processes
    services.me(accounts_engine, elsewhere, user_id)
    assert elsewhere.get(user_id, "") is not None
    deletions.request_deletion(accounts_engine, user_id, "api")  # as "here" would, and notified to all
    here.invalidate(user_id)
    assert wait_until(lambda: elsewhere.get(user_id, "") is None, timeout=10)
    for known in (here, elsewhere):
        with pytest.raises(deletions.AccountDeleted):
            services.me(accounts_engine, known, user_id)
