"""What the mailer stores (schema ``mailer``; DDL in ``migrations/``).

- ``contacts``: one per email address per user (``email_key`` is the lower-cased address).
- ``sequences``: a first email and its follow-ups to one contact, with its status and stop reason.
- ``steps``: each email of a sequence (position 0 is the first), the body as stored and as sent, its
  Gmail draft, message and thread ids and its delivery state.
- ``jobs``: the next due step of each running sequence; scanned across users by the scheduler, whose
  claimers take batches of rows with ``FOR UPDATE SKIP LOCKED`` and hold the locks while the steps are
  worked on.
- ``draft_deletions``: mirrored drafts still to remove from Gmail after a stop or a deletion.

Deleting a contact cascades to its sequences, steps and jobs.
"""

SCHEMA = "mailer"

# Sequence states. ``draft``: created, not sent; ``scheduled``: the first email is due;
# ``active``: the first email went out and follow-ups are pending; ``paused``; and the terminal ones.
SEQUENCE_LIVE = ("scheduled", "active")
SEQUENCE_TERMINAL = ("stopped", "completed")

# Step states (the public API shows these).
STEP_STATES = ("scheduled", "sending", "sent", "cancelled", "failed")

STOP_REASONS = ("replied", "bounced", "cancelled", "user_took_over", "draft_deleted", "gmail_disconnected",
                "contact_deleted", "failed", "completed")
