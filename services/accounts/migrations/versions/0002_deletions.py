"""Account deletions: the saga's record and its steps.

A deletion is keyed by ``subject_hash`` (SHA-256 of a fixed prefix and the user id), not by the user id,
so that the record stays answerable after the user's data is gone without naming the user. The user
id itself is kept in ``user_id`` only while the deletion runs (the operator's retry needs it to
republish a step) and is cleared when the deletion completes.

Row-level security: a user sees the deletion rows whose ``subject_hash`` (or ``user_id``) is theirs; the
saga's workers (deadline watch, operator retry) use the system scope.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from alembic import op

revision = "0002"
down_revision = "0001"

# Kept in step with ``coffeeping_accounts.deletions.subject_hash``.
_SUBJECT = "encode(sha256(convert_to('coffeeping-deletion:' || current_setting('app.user_id', true), 'UTF8')), 'hex')"
_PREDICATE = f"subject_hash = {_SUBJECT} OR current_setting('app.scope', true) = 'system'"


def _rls(table: str, with_user: bool) -> list[str]:
    qualified = f"accounts.{table}"
    predicate = f"(user_id = current_setting('app.user_id', true) OR {_PREDICATE})" if with_user else f"({_PREDICATE})"
    return [
        f"ALTER TABLE {qualified} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {qualified} FORCE ROW LEVEL SECURITY",
        f"DROP POLICY IF EXISTS {table}_owner ON {qualified}",
        f"CREATE POLICY {table}_owner ON {qualified} USING {predicate} WITH CHECK {predicate}",
    ]


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE accounts.deletions (
            deletion_id uuid PRIMARY KEY,
            subject_hash text NOT NULL,
            user_id text NULL,
            source text NOT NULL,
            state text NOT NULL DEFAULT 'in_progress'
                CHECK (state IN ('in_progress', 'completed', 'failed')),
            requested_at timestamptz NOT NULL DEFAULT now(),
            completed_at timestamptz NULL,
            CHECK (state <> 'completed' OR user_id IS NULL)
        )
        """
    )
    op.execute("CREATE INDEX deletions_subject_idx ON accounts.deletions (subject_hash, requested_at DESC)")
    op.execute(
        "CREATE UNIQUE INDEX deletions_one_running_idx ON accounts.deletions (subject_hash) "
        "WHERE state <> 'completed'"
    )
    op.execute(
        """
        CREATE TABLE accounts.deletion_steps (
            deletion_id uuid NOT NULL REFERENCES accounts.deletions (deletion_id) ON DELETE CASCADE,
            subject_hash text NOT NULL,
            service text NOT NULL,
            step text NOT NULL,
            state text NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
            attempts integer NOT NULL DEFAULT 0,
            error text NOT NULL DEFAULT '',
            updated_at timestamptz NOT NULL DEFAULT now(),
            position integer NOT NULL,
            PRIMARY KEY (deletion_id, service)
        )
        """
    )
    op.execute(
        "CREATE INDEX deletion_steps_running_idx ON accounts.deletion_steps (updated_at) WHERE state = 'running'"
    )
    # Deduplicates retried requests (a Svix message id, an Idempotency-Key); the key is stored hashed.
    op.execute(
        """
        CREATE TABLE accounts.deletion_requests (
            key_hash text PRIMARY KEY,
            subject_hash text NOT NULL,
            deletion_id uuid NOT NULL REFERENCES accounts.deletions (deletion_id) ON DELETE CASCADE,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    for table in ("deletions", "deletion_steps", "deletion_requests"):
        for statement in _rls(table, with_user=table == "deletions"):
            op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE accounts.deletion_requests")
    op.execute("DROP TABLE accounts.deletion_steps")
    op.execute("DROP TABLE accounts.deletions")
