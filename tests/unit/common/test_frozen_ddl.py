"""The frozen DDL that migrations run never changes: each constant's SHA-256 is pinned here."""

from __future__ import annotations

import hashlib

import pytest

from coffeeping.common import frozen_ddl
from coffeeping.common.frozen_ddl import OUTBOX_INBOX_V1, RLS_OWNER_V1, render

# SHA-256 of the constant's statements joined by NUL. A new version gets a new line here; an existing
# line never changes.
PINNED = {
    "GMAIL_ACCESS_DROP_V1": "98f1924901859dbc945ad96f1be997d7e812aebcb2b91bf7a170f8a53a6783f3",
    "GMAIL_ACCESS_V1": "de4a5aff9a95f1a54a2cb489073cb56efa407db8d3d9461b94c699f72be520d4",
    "OUTBOX_INBOX_DROP_V1": "65d4e3408f6119f7cf2bfa6a35ae344c270e3501628c4cd600221c378d68670c",
    "OUTBOX_INBOX_V1": "5288d8a1bc76a6a085e6fa93085197f74faa16abb9ba7c75ccd60ff8cff3e416",
    "RLS_OWNER_OR_SYSTEM_V1": "9f1f575b042c9605251d91595ae6ee79ed12dff93bc7f6a5e7ce4b960471d93d",
    "RLS_OWNER_V1": "b805abba5f09e32dced04a0e8bbbd441984bde0f2cee797d91cf51b51b833e3e",
    "TOMBSTONES_DROP_V1": "052093c75bef658dbf207289b5d3751b077fb3288ab9618852b83642ce923527",
    "TOMBSTONES_V1": "14619c12cce86b056c769d7afd24ef57d8924975aed63d87e14a958debeab139",
}


def _constants() -> dict[str, tuple[str, ...]]:
    return {name: value for name, value in vars(frozen_ddl).items() if name.isupper() and isinstance(value, tuple)}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_a_frozen_constant_is_never_edited(name):
    statements = getattr(frozen_ddl, name)
    digest = hashlib.sha256("\0".join(statements).encode()).hexdigest()
    assert digest == PINNED[name], (
        f"coffeeping.common.frozen_ddl.{name} changed, but migrations that have already run execute it and "
        f"must keep executing the same SQL: restore it and add a new version instead ({name[:-1]}<n+1>, "
        "pinned here) with a new migration that runs it")


def test_every_frozen_constant_is_pinned_and_exported():
    assert sorted(_constants()) == sorted(PINNED), "pin a new version's SHA-256 in PINNED"
    assert set(PINNED) <= set(frozen_ddl.__all__)


def test_render_fills_the_schema_and_table_and_refuses_a_missing_name():
    assert render(RLS_OWNER_V1, schema="svc", table="notes")[2] == "DROP POLICY IF EXISTS notes_owner ON svc.notes"
    assert all("{" not in statement for statement in render(OUTBOX_INBOX_V1, schema="svc"))
    with pytest.raises(KeyError):
        render(RLS_OWNER_V1, schema="svc")
