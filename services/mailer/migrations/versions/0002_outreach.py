"""Contacts, sequences, their email steps, the scheduler's jobs and pending Gmail draft deletions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from alembic import op

from coffeeping.common.frozen_ddl import RLS_OWNER_OR_SYSTEM_V1, RLS_OWNER_V1, render

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE mailer.contacts (
            id uuid PRIMARY KEY,
            user_id text NOT NULL,
            email text NOT NULL,
            email_key text NOT NULL,
            name text NULL,
            first_name text NULL,
            last_name text NULL,
            company text NULL,
            role text NULL,
            time_zone text NULL,
            notes text NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT contacts_user_email_key UNIQUE (user_id, email_key)
        )
        """
    )
    op.execute("CREATE INDEX contacts_user_page_idx ON mailer.contacts (user_id, created_at, id)")
    op.execute(
        """
        CREATE TABLE mailer.sequences (
            id uuid PRIMARY KEY,
            user_id text NOT NULL,
            contact_id uuid NOT NULL REFERENCES mailer.contacts (id) ON DELETE CASCADE,
            subject text NOT NULL,
            status text NOT NULL DEFAULT 'draft',
            stop_reason text NULL,
            stopped_at timestamptz NULL,
            pause_reason text NULL,
            business_days boolean NOT NULL DEFAULT false,
            window_start text NULL,
            window_end text NULL,
            time_zone text NOT NULL DEFAULT 'UTC',
            to_email text NOT NULL,
            to_name text NULL,
            user_email text NULL,
            thread_id text NULL,
            history_id text NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX sequences_user_page_idx ON mailer.sequences (user_id, created_at, id)")
    op.execute("CREATE INDEX sequences_contact_idx ON mailer.sequences (contact_id)")
    op.execute(
        """
        CREATE TABLE mailer.steps (
            id uuid PRIMARY KEY,
            user_id text NOT NULL,
            sequence_id uuid NOT NULL REFERENCES mailer.sequences (id) ON DELETE CASCADE,
            position integer NOT NULL,
            body text NOT NULL,
            sent_body text NULL,
            edited_in_gmail boolean NOT NULL DEFAULT false,
            delay text NULL,
            send_at timestamptz NULL,
            due_at timestamptz NULL,
            status text NOT NULL DEFAULT 'scheduled',
            cancel_reason text NULL,
            rfc_message_id text NULL,
            draft_id text NULL,
            draft_message_id text NULL,
            gmail_message_id text NULL,
            thread_id text NULL,
            sending_since timestamptz NULL,
            sent_at timestamptz NULL,
            attempts integer NOT NULL DEFAULT 0,
            last_error text NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT steps_sequence_position_key UNIQUE (sequence_id, position)
        )
        """
    )
    op.execute("CREATE INDEX steps_user_sent_idx ON mailer.steps (user_id, sent_at) WHERE sent_at IS NOT NULL")
    # The next due step of each running sequence, scanned across users by the scheduler. No foreign key:
    # a cascade would wait on the row lock a scheduler holds while it sends; the scheduler drops a job
    # whose step is gone, and deletions remove jobs with SKIP LOCKED.
    op.execute(
        """
        CREATE TABLE mailer.jobs (
            step_id uuid PRIMARY KEY,
            sequence_id uuid NOT NULL,
            user_id text NOT NULL,
            due_at timestamptz NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX jobs_due_idx ON mailer.jobs (due_at)")
    op.execute("CREATE INDEX jobs_sequence_idx ON mailer.jobs (sequence_id)")
    op.execute("CREATE INDEX jobs_user_idx ON mailer.jobs (user_id)")
    # Drafts to remove from Gmail after a stop or a contact's deletion (retried until done).
    op.execute(
        """
        CREATE TABLE mailer.draft_deletions (
            id bigserial PRIMARY KEY,
            user_id text NOT NULL,
            draft_id text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            not_before timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX draft_deletions_due_idx ON mailer.draft_deletions (not_before)")
    for table in ("contacts", "sequences", "steps"):
        for statement in render(RLS_OWNER_V1, schema="mailer", table=table):
            op.execute(statement)
    for table in ("jobs", "draft_deletions"):
        for statement in render(RLS_OWNER_OR_SYSTEM_V1, schema="mailer", table=table):
            op.execute(statement)


def downgrade() -> None:
    for table in ("draft_deletions", "jobs", "steps", "sequences", "contacts"):
        op.execute(f"DROP TABLE IF EXISTS mailer.{table}")
