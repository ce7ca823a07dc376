"""Sequences for the API: create, read and list them, and send, pause, resume or cancel one.

Every call runs in one ``user_tx`` (row-level security scopes it to the user); an id that is not the
user's is not found, like a missing one. A control locks the sequence's row, checks its state
(``wrong_state`` otherwise) and moves it through ``lifecycle``. Gmail is never called here: the
scheduler sends, and drafts to remove are queued, so an API call never waits on Gmail.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update

from coffeeping.common.db import user_tx
from coffeeping_mailer import lifecycle, pages, schedule
from coffeeping_mailer.contacts import COLUMNS as CONTACT_COLUMNS
from coffeeping_mailer.errors import Invalid, not_found, wrong_state
from coffeeping_mailer.fields import err, parse_id, parse_time
from coffeeping_mailer.merge import merge_value, render
from coffeeping_mailer.mime import UnsafeHeader, check_name, check_subject
from coffeeping_mailer.models import SEQUENCE_LIVE, SEQUENCE_TERMINAL, contacts, sequences, steps

MAX_BODY_CHARS = 20_000
MAX_FOLLOW_UPS = 10
_CREATE_FIELDS = {"contact_id", "subject", "body", "follow_ups", "business_days", "send_window", "time_zone"}

# What the API shows of a sequence and of its steps (``sequence_record``, ``step_record``).
SEQUENCE_COLUMNS = (
    sequences.c.id, sequences.c.contact_id, sequences.c.subject, sequences.c.status, sequences.c.stop_reason,
    sequences.c.stopped_at, sequences.c.pause_reason, sequences.c.business_days, sequences.c.window_start,
    sequences.c.window_end, sequences.c.time_zone, sequences.c.to_email, sequences.c.thread_id,
    sequences.c.created_at, sequences.c.started_at, sequences.c.updated_at)
STEP_COLUMNS = (
    steps.c.id, steps.c.sequence_id, steps.c.position, steps.c.body, steps.c.sent_body, steps.c.edited_in_gmail,
    steps.c.delay, steps.c.send_at, steps.c.due_at, steps.c.status, steps.c.cancel_reason, steps.c.rfc_message_id,
    steps.c.draft_id, steps.c.gmail_message_id, steps.c.thread_id, steps.c.sent_at, steps.c.attempts,
    steps.c.last_error)


# ------------------------------------------------------------------------------------------ JSON shapes
def step_record(row: Any) -> dict[str, Any]:
    """A step as the fields of ``mailer.v1.Step`` (times as datetimes; None when unset)."""
    return {
        "id": str(row.id), "position": row.position, "kind": "first" if row.position == 0 else "follow_up",
        "body": row.body, "sent_body": row.sent_body, "edited_in_gmail": row.edited_in_gmail,
        "delay": row.delay, "send_at": row.send_at, "due_at": row.due_at, "status": row.status,
        "cancel_reason": row.cancel_reason, "sent_at": row.sent_at, "draft_id": row.draft_id,
        "gmail_message_id": row.gmail_message_id, "thread_id": row.thread_id,
        "rfc_message_id": row.rfc_message_id if row.status == "sent" else None,
        "attempts": row.attempts, "last_error": row.last_error,
    }


def sequence_record(row: Any, step_rows: list[Any]) -> dict[str, Any]:
    """A sequence (``SEQUENCE_COLUMNS``) with its steps (``STEP_COLUMNS``, in order), as the fields of
    ``mailer.v1.Sequence`` (times as datetimes; None when unset)."""
    return {
        "id": str(row.id), "contact_id": str(row.contact_id), "subject": row.subject, "status": row.status,
        "stop_reason": row.stop_reason, "stopped_at": row.stopped_at, "pause_reason": row.pause_reason,
        "business_days": row.business_days,
        "send_window": {"start": row.window_start, "end": row.window_end} if row.window_start else None,
        "time_zone": row.time_zone, "to": row.to_email, "thread_id": row.thread_id,
        "created_at": row.created_at, "started_at": row.started_at, "updated_at": row.updated_at,
        "steps": [step_record(s) for s in step_rows],
    }


# The hot reads, built once (a statement object memoises its cache key).
_SEQUENCE = select(*SEQUENCE_COLUMNS).where(sequences.c.id == bindparam("id", type_=sequences.c.id.type))
_STEPS_OF = (select(*STEP_COLUMNS)
             .where(steps.c.sequence_id.in_(bindparam("ids", expanding=True, type_=steps.c.sequence_id.type)))
             .order_by(steps.c.sequence_id, steps.c.position))


def _records(conn: Connection, rows: list[Any]) -> list[dict[str, Any]]:
    """The sequences of ``rows`` with their steps, read in one query."""
    if not rows:
        return []
    by_sequence: dict[uuid.UUID, list[Any]] = {row.id: [] for row in rows}
    for step in conn.execute(_STEPS_OF, {"ids": list(by_sequence)}):
        by_sequence[step.sequence_id].append(step)
    return [sequence_record(row, by_sequence[row.id]) for row in rows]


def load_sequence(conn: Connection, seq_id: uuid.UUID) -> dict[str, Any]:
    row = conn.execute(_SEQUENCE, {"id": seq_id}).first()
    if row is None:
        raise not_found("sequence", str(seq_id))
    return _records(conn, [row])[0]


# --------------------------------------------------------------------------------------------- create
def _parse_create(data: Any) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The request's values (subject and bodies not merged yet) and an error per bad field."""
    if not isinstance(data, dict):
        return {}, [err("sequence", "must be an object")]
    errors = [err(k, "unknown field") for k in data if k not in _CREATE_FIELDS]
    contact_id = data.get("contact_id")
    if not isinstance(contact_id, str) or not contact_id:
        errors.append(err("contact_id", "is required"))
    subject, first_body = data.get("subject"), data.get("body")
    if not isinstance(subject, str) or not subject.strip():
        errors.append(err("subject", "is required"))
        subject = None
    if not isinstance(first_body, str) or not first_body.strip():
        errors.append(err("body", "is required"))
        first_body = None
    elif len(first_body) > MAX_BODY_CHARS:
        errors.append(err("body", f"must be at most {MAX_BODY_CHARS} characters"))
        first_body = None
    business_days = data.get("business_days", False)
    if not isinstance(business_days, bool):
        errors.append(err("business_days", "must be true or false"))
        business_days = False
    window_start = window_end = None
    window = data.get("send_window")
    if window is not None:
        if not isinstance(window, dict) or set(window) - {"start", "end"}:
            errors.append(err("send_window", "must be an object {start, end} with HH:MM times"))
        else:
            try:
                start, end = schedule.parse_clock(window.get("start", "")), schedule.parse_clock(window.get("end", ""))
                if start >= end:
                    errors.append(err("send_window", "start must be before end"))
                else:
                    window_start, window_end = start.strftime("%H:%M"), end.strftime("%H:%M")
            except ValueError as exc:
                errors.append(err("send_window", str(exc)))
    zone_name = data.get("time_zone")
    if zone_name is not None:
        try:
            schedule.parse_zone(zone_name)
        except ValueError as exc:
            errors.append(err("time_zone", str(exc)))
            zone_name = None
    follow_ups, follow_up_errors = _parse_follow_ups(data.get("follow_ups", []))
    errors += follow_up_errors
    return {"contact_id": contact_id, "subject": subject, "body": first_body, "business_days": business_days,
            "window_start": window_start, "window_end": window_end, "time_zone": zone_name,
            "follow_ups": follow_ups}, errors


def _parse_follow_ups(items: Any) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Each follow-up as {body, delay, send_at} (one of the two set); an error per bad one."""
    errors: list[dict[str, str]] = []
    if not isinstance(items, list):
        return [], [err("follow_ups", "must be a list")]
    if len(items) > MAX_FOLLOW_UPS:
        return [], [err("follow_ups", f"must have at most {MAX_FOLLOW_UPS} items")]
    follow_ups: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"follow_ups[{i}]"
        if not isinstance(item, dict):
            errors.append(err(where, "must be an object {body, delay} or {body, send_at}"))
            continue
        extra = set(item) - {"body", "delay", "send_at"}
        if extra:
            errors.append(err(where, f"unknown field {sorted(extra)[0]}"))
        body = item.get("body")
        if not isinstance(body, str) or not body.strip():
            errors.append(err(f"{where}.body", "is required"))
            continue
        if len(body) > MAX_BODY_CHARS:
            errors.append(err(f"{where}.body", f"must be at most {MAX_BODY_CHARS} characters"))
            continue
        has_delay, has_at = "delay" in item, "send_at" in item
        if has_delay == has_at:
            errors.append(err(where, "needs exactly one of delay or send_at"))
            continue
        try:
            if has_delay:
                schedule.parse_delay(item["delay"])
                follow_ups.append({"body": body, "delay": item["delay"].strip().upper(), "send_at": None})
            else:
                follow_ups.append({"body": body, "delay": None, "send_at": parse_time(item["send_at"])})
        except ValueError as exc:
            errors.append(err(f"{where}.{'delay' if has_delay else 'send_at'}", str(exc)))
    return follow_ups, errors


def create_sequence(engine: Engine, user_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """A draft sequence to one contact, its subject and bodies merged with the contact's fields."""
    given, errors = _parse_create(data)
    if errors:
        raise Invalid(errors)
    cid = parse_id(given["contact_id"], "contact")
    subject, follow_ups = given["subject"], given["follow_ups"]
    with user_tx(engine, user_id) as conn:
        contact = conn.execute(select(*CONTACT_COLUMNS).where(contacts.c.id == cid)).first()
        if contact is None:
            raise not_found("contact", str(cid))
        rendered_subject = render(subject, contact, "subject", errors)
        if not errors:
            try:
                check_subject(rendered_subject)
            except UnsafeHeader as exc:
                errors.append(err("subject", str(exc)))
        bodies = [render(given["body"], contact, "body", errors)]
        for i, step in enumerate(follow_ups):
            bodies.append(render(step["body"], contact, f"follow_ups[{i}].body", errors))
        for field, value in [("body", bodies[0])] + [(f"follow_ups[{i}].body", b) for i, b in enumerate(bodies[1:])]:
            if len(value) > MAX_BODY_CHARS:
                errors.append(err(field, f"must be at most {MAX_BODY_CHARS} characters once merged"))
        to_name = merge_value(contact, "name")
        if to_name:
            try:
                check_name(to_name)
            except UnsafeHeader as exc:
                errors.append(err("contact_id", f"the contact's name {exc}"))
        if errors:
            raise Invalid(errors)
        seq_id = uuid.uuid4()
        conn.execute(insert(sequences).values(
            id=seq_id, user_id=user_id, contact_id=cid, subject=rendered_subject,
            business_days=given["business_days"], window_start=given["window_start"],
            window_end=given["window_end"], time_zone=given["time_zone"] or contact.time_zone or "UTC",
            to_email=contact.email, to_name=to_name))
        plan = [{"body": bodies[0], "delay": None, "send_at": None}] + [
            {**s, "body": b} for s, b in zip(follow_ups, bodies[1:], strict=True)]
        for position, step in enumerate(plan):
            conn.execute(insert(steps).values(
                id=uuid.uuid4(), user_id=user_id, sequence_id=seq_id, position=position, body=step["body"],
                delay=step["delay"], send_at=step["send_at"]))
        return load_sequence(conn, seq_id)


# ---------------------------------------------------------------------------------------- read, list
def get_sequence(engine: Engine, user_id: str, sequence_id: str) -> dict[str, Any]:
    seq_id = parse_id(sequence_id, "sequence")
    with user_tx(engine, user_id) as conn:
        return load_sequence(conn, seq_id)


def list_sequences(engine: Engine, user_id: str, page_size: int, page_token: str, contact_id: str,
                   status: str) -> dict[str, Any]:
    """``{"items": [...], "next_cursor": str | None}``, oldest first; an empty filter is no filter."""
    query = select(*SEQUENCE_COLUMNS)
    if contact_id:
        query = query.where(sequences.c.contact_id == parse_id(contact_id, "contact"))
    if status:
        query = query.where(sequences.c.status == status)
    with user_tx(engine, user_id) as conn:
        rows, next_cursor = pages.page(conn, sequences, query, page_size, page_token)
        items = _records(conn, rows)
    return {"items": items, "next_cursor": next_cursor}


# ------------------------------------------------------------------------------------------ controls
def _lock_sequence(conn: Connection, seq_id: uuid.UUID) -> Any:
    row = conn.execute(
        select(sequences.c.id, sequences.c.status, sequences.c.pause_reason, sequences.c.thread_id,
               sequences.c.business_days, sequences.c.window_start, sequences.c.window_end, sequences.c.time_zone)
        .where(sequences.c.id == seq_id).with_for_update()
    ).first()
    if row is None:
        raise not_found("sequence", str(seq_id))
    return row


def send_sequence(engine: Engine, user_id: str, sequence_id: str, send_at: str | None) -> dict[str, Any]:
    """Schedule the first email now, or at ``send_at`` (RFC 3339; a past time means now)."""
    seq_id = parse_id(sequence_id, "sequence")
    now = dt.datetime.now(dt.UTC)
    due = now
    if send_at is not None:
        try:
            due = max(parse_time(send_at), now)
        except ValueError as exc:
            raise Invalid([err("send_at", str(exc))]) from None
    with user_tx(engine, user_id) as conn:
        seq = _lock_sequence(conn, seq_id)
        if seq.status != "draft":
            raise wrong_state(f"the sequence was already sent (status {seq.status})", seq.status)
        first = conn.execute(
            update(steps).where(steps.c.sequence_id == seq_id, steps.c.position == 0).values(due_at=due)
            .returning(steps.c.id)
        ).scalar_one()
        conn.execute(update(sequences).where(sequences.c.id == seq_id)
                     .values(status="scheduled", updated_at=func.now()))
        lifecycle.insert_job(conn, user_id, seq_id, first, due)
        return load_sequence(conn, seq_id)


def pause_sequence(engine: Engine, user_id: str, sequence_id: str) -> dict[str, Any]:
    seq_id = parse_id(sequence_id, "sequence")
    with user_tx(engine, user_id) as conn:
        seq = _lock_sequence(conn, seq_id)
        if seq.status not in SEQUENCE_LIVE:
            raise wrong_state(f"only a scheduled or active sequence can be paused (status {seq.status})", seq.status)
        lifecycle.pause(conn, seq_id, "user")
        return load_sequence(conn, seq_id)


def resume_sequence(engine: Engine, user_id: str, sequence_id: str) -> dict[str, Any]:
    """Back to work: the next pending step is due at its time, or in the next window if that passed."""
    seq_id = parse_id(sequence_id, "sequence")
    with user_tx(engine, user_id) as conn:
        seq = _lock_sequence(conn, seq_id)
        if seq.status != "paused":
            raise wrong_state(f"only a paused sequence can be resumed (status {seq.status})", seq.status)
        step = conn.execute(
            select(steps.c.id, steps.c.position, steps.c.due_at)
            .where(steps.c.sequence_id == seq_id, steps.c.status.in_(("scheduled", "sending")))
            .order_by(steps.c.position).limit(1)
        ).first()
        status = "active" if seq.thread_id else "scheduled"
        if step is None:
            status = "completed"
        conn.execute(update(sequences).where(sequences.c.id == seq_id)
                     .values(status=status, pause_reason=None, updated_at=func.now()))
        if step is not None:
            now = dt.datetime.now(dt.UTC)
            due = max(step.due_at or now, now)
            if step.position > 0:
                due = schedule.fit_window(due, lifecycle.rules_of(seq))
            conn.execute(update(steps).where(steps.c.id == step.id).values(due_at=due))
            lifecycle.insert_job(conn, user_id, seq_id, step.id, due)
        return load_sequence(conn, seq_id)


def cancel_sequence(engine: Engine, user_id: str, sequence_id: str) -> dict[str, Any]:
    seq_id = parse_id(sequence_id, "sequence")
    with user_tx(engine, user_id) as conn:
        seq = _lock_sequence(conn, seq_id)
        if seq.status in SEQUENCE_TERMINAL:
            raise wrong_state(f"the sequence has already ended (status {seq.status})", seq.status)
        lifecycle.stop_sequence(conn, user_id, seq_id, "cancelled", None)
        return load_sequence(conn, seq_id)
