"""Each service's ``models.py`` describes exactly the tables its migrations leave in its schema.

The ``database`` fixture bootstraps and migrates every schema; Alembic's autogenerate comparison then
looks for any difference between the migrated schema and the service's ``MetaData``: a missing or
extra table, column, index, unique constraint or foreign key, a different type, nullability or server
default. Alembic compares neither primary keys nor the predicates of partial indexes, so those are
compared here directly (each model index is created once more, in a transaction rolled back, and
PostgreSQL's definition of the two compared). Check constraints, row-level-security policies, triggers
and functions are not compared (Alembic does not see them; ``test_rls.py`` covers the policies).

No difference Alembic reports is ignored: with Alembic 1.20 on PostgreSQL 15 there is no spurious one
(a ``bigserial`` column's ``nextval`` default and the formatting of server defaults compare equal).
"""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, DateTime, Index, LargeBinary, MetaData, Table, Text, create_engine, inspect, pool, text
from sqlalchemy.schema import CreateIndex

from coffeeping_accounts.models import metadata as accounts_metadata
from coffeeping_mailer.models import metadata as mailer_metadata
from coffeeping_reply_watcher.models import metadata as watcher_metadata
from coffeeping_vault.models import metadata as vault_metadata

SERVICE_METADATA = {
    "accounts": accounts_metadata,
    "vault": vault_metadata,
    "mailer": mailer_metadata,
    "watcher": watcher_metadata,
}
_PROBE = "cp_model_index_probe"  # the name under which a model index is created for comparison


@pytest.fixture(scope="module")
def engines(database):
    made = {schema: create_engine(database.owner_url(schema), poolclass=pool.NullPool) for schema in SERVICE_METADATA}
    yield made
    for engine in made.values():
        engine.dispose()


def differences(connection, schema: str, metadata: MetaData) -> list[object]:
    """What Alembic's autogenerate would change in ``schema`` to make it match ``metadata``."""

    def include_name(name, type_, parent_names):  # only this service's schema
        return name == schema if type_ == "schema" else True

    context = MigrationContext.configure(
        connection,
        opts={
            "include_schemas": True,
            "include_name": include_name,
            "version_table_schema": schema,  # alembic_version is Alembic's, not the service's
            "compare_type": True,
            "compare_server_default": True,
        },
    )
    return compare_metadata(context, metadata)


def primary_key_differences(connection, schema: str, metadata: MetaData) -> dict[str, tuple[list, list]]:
    inspector = inspect(connection)
    found = {}
    for table in metadata.tables.values():
        if table.schema != schema or not inspector.has_table(table.name, schema=schema):
            continue
        model = sorted(column.name for column in table.primary_key.columns)
        actual = sorted(inspector.get_pk_constraint(table.name, schema=schema)["constrained_columns"])
        if model != actual:
            found[table.name] = (model, actual)
    return found


def index_definition_differences(connection, schema: str, metadata: MetaData) -> dict[str, tuple[str, str]]:
    """Indexes whose definition in PostgreSQL's words (columns, order, expressions, predicate) differs
    from the model's: each model index is created under another name and both definitions compared."""
    found = {}
    transaction = connection.begin()
    try:
        connection.execute(text("SET LOCAL lock_timeout = '10s'"))
        for table in metadata.tables.values():
            for index in table.indexes:
                actual = connection.execute(text("SELECT pg_get_indexdef(to_regclass(:name))"),
                                            {"name": f"{schema}.{index.name}"}).scalar()
                ddl = str(CreateIndex(index).compile(dialect=connection.dialect))
                probe = ddl.replace(f" INDEX {index.name} ON ", f" INDEX {_PROBE} ON ", 1)
                assert probe != ddl, ddl
                connection.execute(text(probe))
                model = connection.execute(text("SELECT pg_get_indexdef(to_regclass(:name))"),
                                           {"name": f"{schema}.{_PROBE}"}).scalar()
                connection.execute(text(f"DROP INDEX {schema}.{_PROBE}"))
                model = model.replace(f" INDEX {_PROBE} ON ", f" INDEX {index.name} ON ", 1)
                if model != actual:
                    found[index.name] = (model, actual)
    finally:
        transaction.rollback()
    return found


@pytest.mark.parametrize("schema", sorted(SERVICE_METADATA))
def test_models_match_the_migrated_schema(engines, schema):
    metadata = SERVICE_METADATA[schema]
    assert {table.schema for table in metadata.tables.values()} == {schema}
    with engines[schema].connect() as connection:
        assert differences(connection, schema, metadata) == []
        assert primary_key_differences(connection, schema, metadata) == {}
    with engines[schema].connect() as connection:
        assert index_definition_differences(connection, schema, metadata) == {}


def test_the_comparison_sees_a_removed_table_or_column_a_changed_type_and_a_lost_predicate(engines):
    """The checks above catch drift: a copy of the accounts models, changed one way at a time."""

    def changed(change) -> tuple[list[object], dict[str, tuple[str, str]]]:
        copy = MetaData(schema="accounts")
        for table in accounts_metadata.sorted_tables:
            table.to_metadata(copy)
        change(copy)
        with engines["accounts"].connect() as connection:
            found = differences(connection, "accounts", copy)
        with engines["accounts"].connect() as connection:
            return found, index_definition_differences(connection, "accounts", copy)

    def drop_table(copy: MetaData) -> None:
        copy.remove(copy.tables["accounts.deletion_requests"])

    def drop_column(copy: MetaData) -> None:
        copy.remove(copy.tables["accounts.tombstones"])
        Table("tombstones", copy, Column("subject", LargeBinary, primary_key=True))

    def retype(copy: MetaData) -> None:
        copy.tables["accounts.users"].c.created_at.type = Text()

    def loosen(copy: MetaData) -> None:
        copy.tables["accounts.users"].c.created_at.nullable = True

    def lose_predicate(copy: MetaData) -> None:  # one running deletion per subject becomes one ever
        deletions = copy.tables["accounts.deletions"]
        deletions.indexes.discard(next(i for i in deletions.indexes if i.name == "deletions_one_running_idx"))
        Index("deletions_one_running_idx", deletions.c.subject_hash, unique=True)

    assert changed(lambda copy: None) == ([], {})
    assert [diff[0] for diff in changed(drop_table)[0]] == ["remove_table"]
    assert [diff[0] for diff in changed(drop_column)[0]] == ["remove_column"]
    assert [diff[0][0] for diff in changed(retype)[0]] == ["modify_type"]
    assert [diff[0][0] for diff in changed(loosen)[0]] == ["modify_nullable"]
    assert changed(lose_predicate)[1].keys() == {"deletions_one_running_idx"}
    assert isinstance(accounts_metadata.tables["accounts.users"].c.created_at.type, DateTime)
