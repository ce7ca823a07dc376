"""The user's data for the account export: every contact, then every sequence with all its steps.

Records are the API's JSON shapes (a step's ``rfc_message_id`` is shown even when unsent), streamed in
creation order from one snapshot, with memory flat whatever the size of the account.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import ARRAY, Connection, Engine, Uuid, bindparam, func, select, true

from coffeeping.common.db import USER_SETTING, validate_user_id
from coffeeping_mailer.contacts import COLUMNS as CONTACT_COLUMNS
from coffeeping_mailer.contacts import contact_record
from coffeeping_mailer.models import contacts, sequences, steps
from coffeeping_mailer.sequences import SEQUENCE_COLUMNS, STEP_COLUMNS, sequence_record

EXPORT_PAGE = 200


def export_records(engine: Engine, user_id: str, page: int = EXPORT_PAGE) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every contact, then every sequence with all its steps, one record each, in creation order.

    Each table is read on its own through a server-side cursor, in batches; a sequence's steps are
    fetched per batch of sequences. Never one big join: the row-level-security predicate has no
    statistics, and for a freshly filled account the planner chose a nested loop comparing every step
    with every sequence (10,000 x 2,000). Memory stays flat whatever the size of the account, and the
    whole export reads one snapshot (repeatable read).
    """
    validate_user_id(user_id)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            # The user's row-level-security scope, as ``user_tx`` sets it (which has no repeatable read).
            conn.execute(select(func.set_config(USER_SETTING, user_id, True)))
            # Cost estimates here are guesses (see above): never let them buy a JIT compilation
            # (``SET LOCAL jit = off``).
            conn.execute(select(func.set_config("jit", "off", True)))
            streamed = conn.execution_options(stream_results=True, yield_per=page)
            for row in streamed.execute(select(*CONTACT_COLUMNS).order_by(contacts.c.created_at, contacts.c.id)):
                yield "contacts", contact_record(row)
            seqs = streamed.execute(select(*SEQUENCE_COLUMNS).order_by(sequences.c.created_at, sequences.c.id))
            for batch in seqs.partitions():
                yield from _export_batch(conn, list(batch))


def _export_batch(conn: Connection, seqs: list[Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    # The batch's steps in the batch's order, streamed (one sequence's steps are held at a time). The
    # LATERAL subquery (fenced by OFFSET 0) is a lookup in the (sequence_id, position) index per
    # sequence, whatever the statistics say; a plain join was planned as a scan of every step.
    wanted = (func.unnest(bindparam("ids", [row.id for row in seqs], type_=ARRAY(Uuid)))
              .table_valued("id", with_ordinality="n").render_derived("p"))
    per_sequence = (select(*STEP_COLUMNS).where(steps.c.sequence_id == wanted.c.id)
                    .order_by(steps.c.position).offset(0).lateral("st"))
    step_rows = conn.execution_options(stream_results=True, yield_per=500).execute(
        select(per_sequence).select_from(wanted).join(per_sequence, true())
        .order_by(wanted.c.n, per_sequence.c.position))
    pending = iter(seqs)
    current = next(pending)
    held: list[Any] = []
    for step in step_rows:
        while step.sequence_id != current.id:
            yield "sequences", _export_sequence(current, held)
            held = []
            current = next(pending)
        held.append(step)
    yield "sequences", _export_sequence(current, held)
    for rest in pending:
        yield "sequences", _export_sequence(rest, [])


def _export_sequence(row: Any, step_rows: list[Any]) -> dict[str, Any]:
    out = sequence_record(row, step_rows)
    for step, raw in zip(out["steps"], step_rows, strict=True):
        step["rfc_message_id"] = raw.rfc_message_id
    return out
