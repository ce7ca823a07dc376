"""What the mailer does for the public API: contacts, CSV import, sequences and their controls.

Every function runs in one ``user_tx`` (row-level security scopes it to the user). Validation answers
``Invalid`` with one entry per field; an id that is not the user's is ``404`` like a missing one.
Gmail is never called here: drafts to remove are queued in ``draft_deletions`` and the scheduler does
the sending, so an API call never waits on Gmail.
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import io
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Engine, text

from coffeeping.common.db import USER_SETTING, user_tx, validate_user_id
from coffeeping.common.messaging import publish_in_tx
from coffeeping_mailer import schedule
from coffeeping_mailer.errors import ApiError, Invalid, conflict, not_found
from coffeeping_mailer.fence import queue_draft_deletions
from coffeeping_mailer.mime import UnsafeHeader, check_address, check_name, check_subject
from coffeeping_mailer.models import SCHEMA

MAX_BODY_CHARS = 20_000
MAX_NOTES_CHARS = 5_000
MAX_FOLLOW_UPS = 10
MAX_CSV_BYTES = 1024 * 1024
MAX_CSV_ROWS = 5_000
DEFAULT_PAGE = 50
MAX_PAGE = 100

CONTACT_FIELDS = ("email", "name", "first_name", "last_name", "company", "role", "time_zone", "notes")
_NAME_FIELDS = ("name", "first_name", "last_name", "company", "role")
MERGE_FIELDS = ("first_name", "name", "company", "role")
_MERGE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _uuid(value: Any, what: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise not_found(what) from None


def _json_body(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


def _err(field: str, message: str) -> dict[str, str]:
    return {"field": field, "message": message}


# --------------------------------------------------------------------------------------------- contacts
def _contact_values(data: dict[str, Any], partial: bool) -> tuple[dict[str, Any], list[dict[str, str]]]:
    errors: list[dict[str, str]] = []
    values: dict[str, Any] = {}
    for key in data:
        if key not in CONTACT_FIELDS:
            errors.append(_err(key, "unknown field"))
    if not partial and "email" not in data:
        errors.append(_err("email", "is required"))
    for key in CONTACT_FIELDS:
        if key not in data:
            continue
        value = data[key]
        if value is None and key != "email":
            values[key] = None
            continue
        if not isinstance(value, str):
            errors.append(_err(key, "must be a string"))
            continue
        value = value.strip()
        try:
            if key == "email":
                check_address(value)
            elif key in _NAME_FIELDS:
                check_name(value)
            elif key == "time_zone":
                schedule.parse_zone(value)
            elif key == "notes" and len(value) > MAX_NOTES_CHARS:
                raise ValueError(f"must be at most {MAX_NOTES_CHARS} characters")
        except ValueError as exc:  # UnsafeHeader is a ValueError
            errors.append(_err(key, str(exc)))
            continue
        values[key] = value or None
    return values, errors


def _contact_json(row: Any) -> dict[str, Any]:
    return {
        "id": str(row.id), "email": row.email, "name": row.name, "first_name": row.first_name,
        "last_name": row.last_name, "company": row.company, "role": row.role, "time_zone": row.time_zone,
        "notes": row.notes, "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at),
    }


_CONTACT_COLUMNS = "id, email, name, first_name, last_name, company, role, time_zone, notes, created_at, updated_at"


def _insert_contact(conn: Connection, user_id: str, values: dict[str, Any]) -> tuple[str, bool]:
    """Insert; return (id, created). A duplicate address returns the existing contact's id."""
    params = {k: values.get(k) for k in CONTACT_FIELDS}
    row = conn.execute(
        text(
            f"INSERT INTO {SCHEMA}.contacts (id, user_id, email, email_key, name, first_name, last_name, company, "
            "role, time_zone, notes) VALUES (CAST(:id AS uuid), :u, :email, lower(:email), :name, :first_name, "
            ":last_name, :company, :role, :time_zone, :notes) "
            "ON CONFLICT (user_id, email_key) DO NOTHING RETURNING id"
        ),
        {"id": str(uuid.uuid4()), "u": user_id, **params},
    ).first()
    if row is not None:
        return str(row.id), True
    existing = conn.execute(
        text(f"SELECT id FROM {SCHEMA}.contacts WHERE user_id = :u AND email_key = lower(:email)"),
        {"u": user_id, "email": params["email"]},
    ).one()
    return str(existing.id), False


def create_contact(engine: Engine, user_id: str, body: bytes) -> tuple[int, dict[str, Any]]:
    values, errors = _contact_values(_json_body(body), partial=False)
    if errors:
        raise Invalid(errors)
    with user_tx(engine, user_id) as conn:
        contact_id, created = _insert_contact(conn, user_id, values)
        if not created:
            raise conflict("a contact with this email address exists", existing_id=contact_id,
                           errors=[_err("email", "a contact with this email address exists")])
        row = _get_contact_row(conn, contact_id)
    return 201, _contact_json(row)


def _get_contact_row(conn: Connection, contact_id: str) -> Any:
    row = conn.execute(text(f"SELECT {_CONTACT_COLUMNS} FROM {SCHEMA}.contacts WHERE id = CAST(:id AS uuid)"),
                       {"id": contact_id}).first()
    if row is None:
        raise not_found("contact")
    return row


def get_contact(engine: Engine, user_id: str, contact_id: str) -> tuple[int, dict[str, Any]]:
    contact_id = _uuid(contact_id, "contact")
    with user_tx(engine, user_id) as conn:
        return 200, _contact_json(_get_contact_row(conn, contact_id))


def _page_args(query: dict[str, str]) -> tuple[int, tuple[dt.datetime, str] | None]:
    errors = []
    limit = DEFAULT_PAGE
    if "limit" in query:
        try:
            limit = int(query["limit"])
            if not 1 <= limit <= MAX_PAGE:
                raise ValueError
        except ValueError:
            errors.append(_err("limit", f"must be an integer from 1 to {MAX_PAGE}"))
    after = None
    if query.get("cursor"):
        try:
            raw = base64.urlsafe_b64decode(query["cursor"] + "=" * (-len(query["cursor"]) % 4)).decode()
            stamp, _, ident = raw.partition("|")
            after = (dt.datetime.fromisoformat(stamp), str(uuid.UUID(ident)))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            errors.append(_err("cursor", "is not a cursor this API returned"))
    if errors:
        raise Invalid(errors)
    return limit, after


def _cursor(row: Any) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _page(conn: Connection, table: str, columns: str, query: dict[str, str], extra_where: str = "",
          params: dict[str, Any] | None = None) -> tuple[list[Any], str | None]:
    limit, after = _page_args(query)
    where = ["TRUE"]
    args: dict[str, Any] = {"n": limit + 1, **(params or {})}
    if after:
        where.append("(created_at, id) > (:after_t, CAST(:after_id AS uuid))")
        args.update(after_t=after[0], after_id=after[1])
    if extra_where:
        where.append(extra_where)
    rows = conn.execute(
        text(f"SELECT {columns} FROM {SCHEMA}.{table} WHERE {' AND '.join(where)} ORDER BY created_at, id LIMIT :n"),
        args,
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, _cursor(rows[-1]) if more and rows else None


def list_contacts(engine: Engine, user_id: str, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
    with user_tx(engine, user_id) as conn:
        rows, cursor = _page(conn, "contacts", _CONTACT_COLUMNS, query)
    return 200, {"items": [_contact_json(r) for r in rows], "next_cursor": cursor}


def update_contact(engine: Engine, user_id: str, contact_id: str, body: bytes) -> tuple[int, dict[str, Any]]:
    contact_id = _uuid(contact_id, "contact")
    data = _json_body(body)
    values, errors = _contact_values(data, partial=True)
    if "email" in data and data["email"] is None:
        errors.append(_err("email", "must not be null"))
    if errors:
        raise Invalid(errors)
    with user_tx(engine, user_id) as conn:
        _get_contact_row(conn, contact_id)
        if "email" in values:
            clash = conn.execute(
                text(f"SELECT id FROM {SCHEMA}.contacts WHERE email_key = lower(:e) AND id <> CAST(:id AS uuid)"),
                {"e": values["email"], "id": contact_id},
            ).first()
            if clash is not None:
                raise conflict("a contact with this email address exists", existing_id=str(clash.id),
                               errors=[_err("email", "a contact with this email address exists")])
        if values:
            sets = ", ".join(f"{k} = :{k}" for k in values)
            if "email" in values:
                sets += ", email_key = lower(:email)"
            conn.execute(text(f"UPDATE {SCHEMA}.contacts SET {sets}, updated_at = now() WHERE id = CAST(:id AS uuid)"),
                         {**values, "id": contact_id})
        row = _get_contact_row(conn, contact_id)
    return 200, _contact_json(row)


def delete_contact(engine: Engine, user_id: str, contact_id: str) -> tuple[int, dict[str, Any] | None]:
    """Stop its sequences, queue their drafts for deletion in Gmail, then delete (the database cascades)."""
    contact_id = _uuid(contact_id, "contact")
    with user_tx(engine, user_id) as conn:
        _get_contact_row(conn, contact_id)
        seqs = conn.execute(text(f"SELECT id FROM {SCHEMA}.sequences WHERE contact_id = CAST(:c AS uuid)"),
                            {"c": contact_id}).all()
        for seq in seqs:
            stop_sequence(conn, user_id, str(seq.id), "contact_deleted", None)
        conn.execute(text(f"DELETE FROM {SCHEMA}.contacts WHERE id = CAST(:id AS uuid)"), {"id": contact_id})
    return 204, None


def import_contacts(engine: Engine, user_id: str, body: bytes) -> tuple[int, dict[str, Any]]:
    if len(body) > MAX_CSV_BYTES:
        raise Invalid([_err("file", f"must be at most {MAX_CSV_BYTES} bytes")], "the CSV file is too large")
    try:
        content = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Invalid([_err("file", "must be UTF-8 text")], "the CSV file is not UTF-8") from None
    if "\x00" in content:
        raise Invalid([_err("file", "must be a CSV text file")], "the CSV file is not text")
    reader = csv.reader(io.StringIO(content, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise Invalid([_err("file", "needs a header row with an email column")], "the CSV file is empty") from None
    except csv.Error:
        raise Invalid([_err("file", "is not a readable CSV file")], "the CSV file is malformed") from None
    columns = [h.strip().lower().replace(" ", "_") for h in header]
    if "email" not in columns:
        raise Invalid([_err("file", "needs a header row with an email column")], "the CSV file has no email column")
    # Read and check every line first (the file is bounded), so a file over the row limit writes nothing.
    records: list[tuple[int, list[str]]] = []
    errors: list[dict[str, Any]] = []
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error:
            errors.append({"line": reader.line_num, "reason": "malformed CSV line"})
            break
        if any(cell.strip() for cell in record):
            records.append((reader.line_num, record))
        if len(records) > MAX_CSV_ROWS:
            raise Invalid([_err("file", f"must have at most {MAX_CSV_ROWS} rows")],
                          "the CSV file has too many rows")
    created = duplicates = 0
    with user_tx(engine, user_id) as conn:
        for line, record in records:
            if len(record) > len(columns):
                errors.append({"line": line, "reason": "more cells than header columns"})
                continue
            data = {col: cell for col, cell in zip(columns, record, strict=False)
                    if col in CONTACT_FIELDS and cell.strip()}
            values, problems = _contact_values(data, partial=False)
            if problems:
                errors.append({"line": line, "reason": "; ".join(f"{p['field']} {p['message']}" for p in problems)})
                continue
            # ON CONFLICT DO NOTHING: a duplicate is counted, never an error that would undo the others.
            _, was_created = _insert_contact(conn, user_id, values)
            if was_created:
                created += 1
            else:
                duplicates += 1
    errors.sort(key=lambda e: e["line"])
    return 200, {"created": created, "duplicates": duplicates, "errors": errors}


# -------------------------------------------------------------------------------------------- sequences
def render(template: str, contact: Any, field: str, errors: list[dict[str, str]]) -> str:
    """Fill ``{{first_name}}``, ``{{name}}``, ``{{company}}``, ``{{role}}``; anything else is an error."""
    problems: list[str] = []

    def fill(match: re.Match[str]) -> str:
        key = match.group(1).lower()
        if key not in MERGE_FIELDS:
            problems.append(f"unknown merge field {{{{{match.group(1)}}}}}")
            return ""
        value = _contact_merge_value(contact, key)
        if not value:
            problems.append(f"merge field {{{{{key}}}}} cannot be filled: the contact has no {key}")
            return ""
        return str(value)

    out = _MERGE.sub(fill, template)
    leftover = _MERGE.sub("", template)
    if "{{" in leftover or "}}" in leftover:
        problems.append("has unbalanced merge-field braces")
    for problem in dict.fromkeys(problems):
        errors.append(_err(field, problem))
    return out


def _contact_merge_value(contact: Any, key: str) -> str | None:
    if key == "name":
        return contact.name or " ".join(p for p in (contact.first_name, contact.last_name) if p) or None
    return getattr(contact, key)


def _parse_time(value: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time")
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError("must be an RFC 3339 date-time such as 2026-12-01T09:00:00Z") from None
    if when.tzinfo is None:
        raise ValueError("must carry a UTC offset (Z or +hh:mm)")
    return when.astimezone(dt.UTC)


def create_sequence(engine: Engine, user_id: str, body: bytes) -> tuple[int, dict[str, Any]]:
    data = _json_body(body)
    errors: list[dict[str, str]] = []
    allowed = {"contact_id", "subject", "body", "follow_ups", "business_days", "send_window", "time_zone"}
    errors += [_err(k, "unknown field") for k in data if k not in allowed]
    contact_id = data.get("contact_id")
    if not isinstance(contact_id, str) or not contact_id:
        errors.append(_err("contact_id", "is required"))
    subject, first_body = data.get("subject"), data.get("body")
    if not isinstance(subject, str) or not subject.strip():
        errors.append(_err("subject", "is required"))
        subject = None
    if not isinstance(first_body, str) or not first_body.strip():
        errors.append(_err("body", "is required"))
        first_body = None
    elif len(first_body) > MAX_BODY_CHARS:
        errors.append(_err("body", f"must be at most {MAX_BODY_CHARS} characters"))
        first_body = None
    business_days = data.get("business_days", False)
    if not isinstance(business_days, bool):
        errors.append(_err("business_days", "must be true or false"))
        business_days = False
    window_start = window_end = None
    window = data.get("send_window")
    if window is not None:
        if not isinstance(window, dict) or set(window) - {"start", "end"}:
            errors.append(_err("send_window", "must be an object {start, end} with HH:MM times"))
        else:
            try:
                start, end = schedule.parse_clock(window.get("start")), schedule.parse_clock(window.get("end"))
                if start >= end:
                    errors.append(_err("send_window", "start must be before end"))
                else:
                    window_start, window_end = start.strftime("%H:%M"), end.strftime("%H:%M")
            except ValueError as exc:
                errors.append(_err("send_window", str(exc)))
    zone_name = data.get("time_zone")
    if zone_name is not None:
        try:
            schedule.parse_zone(zone_name)
        except ValueError as exc:
            errors.append(_err("time_zone", str(exc)))
            zone_name = None
    follow_ups = data.get("follow_ups", [])
    steps: list[dict[str, Any]] = []
    if not isinstance(follow_ups, list):
        errors.append(_err("follow_ups", "must be a list"))
        follow_ups = []
    elif len(follow_ups) > MAX_FOLLOW_UPS:
        errors.append(_err("follow_ups", f"must have at most {MAX_FOLLOW_UPS} items"))
        follow_ups = []
    for i, item in enumerate(follow_ups):
        where = f"follow_ups[{i}]"
        if not isinstance(item, dict):
            errors.append(_err(where, "must be an object {body, delay} or {body, send_at}"))
            continue
        extra = set(item) - {"body", "delay", "send_at"}
        if extra:
            errors.append(_err(where, f"unknown field {sorted(extra)[0]}"))
        text_ = item.get("body")
        if not isinstance(text_, str) or not text_.strip():
            errors.append(_err(f"{where}.body", "is required"))
            continue
        if len(text_) > MAX_BODY_CHARS:
            errors.append(_err(f"{where}.body", f"must be at most {MAX_BODY_CHARS} characters"))
            continue
        has_delay, has_at = "delay" in item, "send_at" in item
        if has_delay == has_at:
            errors.append(_err(where, "needs exactly one of delay or send_at"))
            continue
        try:
            if has_delay:
                schedule.parse_delay(item["delay"])
                steps.append({"body": text_, "delay": item["delay"].strip().upper(), "send_at": None})
            else:
                steps.append({"body": text_, "delay": None, "send_at": _parse_time(item["send_at"])})
        except ValueError as exc:
            errors.append(_err(f"{where}.{'delay' if has_delay else 'send_at'}", str(exc)))
    if errors or contact_id is None:
        raise Invalid(errors)
    cid = _uuid(contact_id, "contact")
    with user_tx(engine, user_id) as conn:
        contact = conn.execute(text(f"SELECT {_CONTACT_COLUMNS} FROM {SCHEMA}.contacts WHERE id = CAST(:id AS uuid)"),
                               {"id": cid}).first()
        if contact is None:
            raise not_found("contact")
        rendered_subject = render(subject, contact, "subject", errors) if subject else ""
        if subject and not errors:
            try:
                check_subject(rendered_subject)
            except UnsafeHeader as exc:
                errors.append(_err("subject", str(exc)))
        bodies = [render(first_body, contact, "body", errors)]
        for i, step in enumerate(steps):
            bodies.append(render(step["body"], contact, f"follow_ups[{i}].body", errors))
        for field, value in [("body", bodies[0])] + [(f"follow_ups[{i}].body", b) for i, b in enumerate(bodies[1:])]:
            if len(value) > MAX_BODY_CHARS:
                errors.append(_err(field, f"must be at most {MAX_BODY_CHARS} characters once merged"))
        to_name = _contact_merge_value(contact, "name")
        if to_name:
            try:
                check_name(to_name)
            except UnsafeHeader as exc:
                errors.append(_err("contact_id", f"the contact's name {exc}"))
        if errors:
            raise Invalid(errors)
        zone = zone_name or contact.time_zone or "UTC"
        seq_id = str(uuid.uuid4())
        conn.execute(
            text(
                f"INSERT INTO {SCHEMA}.sequences (id, user_id, contact_id, subject, business_days, window_start, "
                "window_end, time_zone, to_email, to_name) VALUES (CAST(:id AS uuid), :u, CAST(:c AS uuid), :s, :bd, "
                ":ws, :we, :tz, :to, :tn)"
            ),
            {"id": seq_id, "u": user_id, "c": cid, "s": rendered_subject, "bd": business_days, "ws": window_start,
             "we": window_end, "tz": zone, "to": contact.email, "tn": to_name},
        )
        plan = [{"body": bodies[0], "delay": None, "send_at": None}] + [
            {**s, "body": b} for s, b in zip(steps, bodies[1:], strict=True)]
        for position, step in enumerate(plan):
            conn.execute(
                text(
                    f"INSERT INTO {SCHEMA}.steps (id, user_id, sequence_id, position, body, delay, send_at) VALUES "
                    "(CAST(:id AS uuid), :u, CAST(:s AS uuid), :p, :b, :d, :at)"
                ),
                {"id": str(uuid.uuid4()), "u": user_id, "s": seq_id, "p": position, "b": step["body"],
                 "d": step["delay"], "at": step["send_at"]},
            )
        return 201, sequence_json(conn, seq_id)


_SEQ_COLUMNS = ("id, contact_id, subject, status, stop_reason, stopped_at, pause_reason, business_days, window_start, "
                "window_end, time_zone, to_email, thread_id, created_at, started_at, updated_at")
_STEP_COLUMNS = ("id, sequence_id, position, body, sent_body, edited_in_gmail, delay, send_at, due_at, status, "
                 "cancel_reason, rfc_message_id, draft_id, gmail_message_id, thread_id, sent_at, attempts, last_error")


def step_json(row: Any) -> dict[str, Any]:
    return {
        "id": str(row.id), "position": row.position, "kind": "first" if row.position == 0 else "follow_up",
        "body": row.body, "sent_body": row.sent_body, "edited_in_gmail": row.edited_in_gmail,
        "delay": row.delay, "send_at": _iso(row.send_at), "due_at": _iso(row.due_at), "status": row.status,
        "cancel_reason": row.cancel_reason, "sent_at": _iso(row.sent_at), "draft_id": row.draft_id,
        "gmail_message_id": row.gmail_message_id, "thread_id": row.thread_id,
        "rfc_message_id": row.rfc_message_id if row.status == "sent" else None,
        "attempts": row.attempts, "last_error": row.last_error,
    }


def _seq_json(row: Any, steps: list[Any]) -> dict[str, Any]:
    return {
        "id": str(row.id), "contact_id": str(row.contact_id), "subject": row.subject, "status": row.status,
        "stop_reason": row.stop_reason, "stopped_at": _iso(row.stopped_at), "pause_reason": row.pause_reason,
        "business_days": row.business_days,
        "send_window": {"start": row.window_start, "end": row.window_end} if row.window_start else None,
        "time_zone": row.time_zone, "to": row.to_email, "thread_id": row.thread_id,
        "created_at": _iso(row.created_at), "started_at": _iso(row.started_at), "updated_at": _iso(row.updated_at),
        "steps": [step_json(s) for s in steps],
    }


def sequence_json(conn: Connection, seq_id: str) -> dict[str, Any]:
    row = conn.execute(text(f"SELECT {_SEQ_COLUMNS} FROM {SCHEMA}.sequences WHERE id = CAST(:id AS uuid)"),
                       {"id": seq_id}).first()
    if row is None:
        raise not_found("sequence")
    steps = conn.execute(text(f"SELECT {_STEP_COLUMNS} FROM {SCHEMA}.steps WHERE sequence_id = CAST(:id AS uuid) "
                              "ORDER BY position"), {"id": seq_id}).all()
    return _seq_json(row, steps)


def get_sequence(engine: Engine, user_id: str, seq_id: str) -> tuple[int, dict[str, Any]]:
    seq_id = _uuid(seq_id, "sequence")
    with user_tx(engine, user_id) as conn:
        return 200, sequence_json(conn, seq_id)


def list_sequences(engine: Engine, user_id: str, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
    extra, params = "", {}
    if query.get("contact_id"):
        extra, params = "contact_id = CAST(:c AS uuid)", {"c": _uuid(query["contact_id"], "contact")}
    if query.get("status"):
        extra = f"{extra} AND status = :st" if extra else "status = :st"
        params["st"] = query["status"]
    with user_tx(engine, user_id) as conn:
        rows, cursor = _page(conn, "sequences", _SEQ_COLUMNS, query, extra, params)
        items = []
        for row in rows:
            steps = conn.execute(text(f"SELECT {_STEP_COLUMNS} FROM {SCHEMA}.steps WHERE sequence_id = :id "
                                      "ORDER BY position"), {"id": row.id}).all()
            items.append(_seq_json(row, steps))
    return 200, {"items": items, "next_cursor": cursor}


def _lock_sequence(conn: Connection, seq_id: str) -> Any:
    row = conn.execute(text(f"SELECT id, status, pause_reason, thread_id FROM {SCHEMA}.sequences "
                            "WHERE id = CAST(:id AS uuid) FOR UPDATE"), {"id": seq_id}).first()
    if row is None:
        raise not_found("sequence")
    return row


def _insert_job(conn: Connection, user_id: str, seq_id: str, step_id: str, due: dt.datetime) -> None:
    conn.execute(
        text(f"INSERT INTO {SCHEMA}.jobs (step_id, sequence_id, user_id, due_at) VALUES "
             "(CAST(:st AS uuid), CAST(:s AS uuid), :u, :due) ON CONFLICT (step_id) DO UPDATE SET due_at = :due"),
        {"st": step_id, "s": seq_id, "u": user_id, "due": due},
    )


def _drop_jobs(conn: Connection, seq_id: str) -> None:
    """Remove a sequence's jobs that no scheduler holds; a held one is dropped by its holder."""
    conn.execute(
        text(f"DELETE FROM {SCHEMA}.jobs WHERE step_id IN (SELECT step_id FROM {SCHEMA}.jobs "
             "WHERE sequence_id = CAST(:s AS uuid) FOR UPDATE SKIP LOCKED)"),
        {"s": seq_id},
    )


def send_sequence(engine: Engine, user_id: str, seq_id: str, body: bytes) -> tuple[int, dict[str, Any]]:
    seq_id = _uuid(seq_id, "sequence")
    data = _json_body(body)
    errors = [_err(k, "unknown field") for k in data if k != "send_at"]
    now = dt.datetime.now(dt.UTC)
    due = now
    if data.get("send_at") is not None:
        try:
            due = max(_parse_time(data["send_at"]), now)
        except ValueError as exc:
            errors.append(_err("send_at", str(exc)))
    if errors:
        raise Invalid(errors)
    with user_tx(engine, user_id) as conn:
        seq = _lock_sequence(conn, seq_id)
        if seq.status != "draft":
            raise conflict(f"the sequence was already sent (status {seq.status})")
        first = conn.execute(text(f"SELECT id FROM {SCHEMA}.steps WHERE sequence_id = CAST(:s AS uuid) "
                                  "AND position = 0"), {"s": seq_id}).one()
        conn.execute(text(f"UPDATE {SCHEMA}.steps SET due_at = :due WHERE id = :id"), {"due": due, "id": first.id})
        conn.execute(text(f"UPDATE {SCHEMA}.sequences SET status = 'scheduled', updated_at = now() "
                          "WHERE id = CAST(:s AS uuid)"), {"s": seq_id})
        _insert_job(conn, user_id, seq_id, str(first.id), due)
        return 202, sequence_json(conn, seq_id)


def pause_sequence(engine: Engine, user_id: str, seq_id: str) -> tuple[int, dict[str, Any]]:
    seq_id = _uuid(seq_id, "sequence")
    with user_tx(engine, user_id) as conn:
        seq = _lock_sequence(conn, seq_id)
        if seq.status not in ("scheduled", "active"):
            raise conflict(f"only a scheduled or active sequence can be paused (status {seq.status})")
        pause(conn, seq_id, "user")
        return 200, sequence_json(conn, seq_id)


def pause(conn: Connection, seq_id: str, reason: str) -> None:
    conn.execute(text(f"UPDATE {SCHEMA}.sequences SET status = 'paused', pause_reason = :r, updated_at = now() "
                      "WHERE id = CAST(:s AS uuid) AND status IN ('scheduled', 'active')"), {"s": seq_id, "r": reason})
    _drop_jobs(conn, seq_id)


def resume_sequence(engine: Engine, user_id: str, seq_id: str) -> tuple[int, dict[str, Any]]:
    """Back to work: the next pending step is due at its time, or in the next window if that passed."""
    seq_id = _uuid(seq_id, "sequence")
    with user_tx(engine, user_id) as conn:
        seq = _lock_sequence(conn, seq_id)
        if seq.status != "paused":
            raise conflict(f"only a paused sequence can be resumed (status {seq.status})")
        full = conn.execute(text(f"SELECT business_days, window_start, window_end, time_zone FROM {SCHEMA}.sequences "
                                 "WHERE id = CAST(:s AS uuid)"), {"s": seq_id}).one()
        step = conn.execute(text(f"SELECT id, position, due_at FROM {SCHEMA}.steps "
                                 "WHERE sequence_id = CAST(:s AS uuid) AND status IN ('scheduled', 'sending') "
                                 "ORDER BY position LIMIT 1"), {"s": seq_id}).first()
        status = "active" if seq.thread_id else "scheduled"
        if step is None:
            status = "completed"
        conn.execute(text(f"UPDATE {SCHEMA}.sequences SET status = :st, pause_reason = NULL, updated_at = now() "
                          "WHERE id = CAST(:s AS uuid)"), {"s": seq_id, "st": status})
        if step is not None:
            now = dt.datetime.now(dt.UTC)
            due = max(step.due_at or now, now)
            if step.position > 0:
                due = schedule.fit_window(due, rules_of(full))
            conn.execute(text(f"UPDATE {SCHEMA}.steps SET due_at = :d WHERE id = :id"), {"d": due, "id": step.id})
            _insert_job(conn, user_id, seq_id, str(step.id), due)
        return 200, sequence_json(conn, seq_id)


def rules_of(seq: Any) -> schedule.Rules:
    return schedule.Rules(
        zone=schedule.parse_zone(seq.time_zone or "UTC"),
        business_days=bool(seq.business_days),
        window_start=schedule.parse_clock(seq.window_start) if seq.window_start else None,
        window_end=schedule.parse_clock(seq.window_end) if seq.window_end else None,
    )


def cancel_sequence(engine: Engine, user_id: str, seq_id: str) -> tuple[int, dict[str, Any]]:
    seq_id = _uuid(seq_id, "sequence")
    with user_tx(engine, user_id) as conn:
        seq = _lock_sequence(conn, seq_id)
        if seq.status in ("stopped", "completed"):
            raise conflict(f"the sequence has already ended (status {seq.status})")
        stop_sequence(conn, user_id, seq_id, "cancelled", None)
        return 200, sequence_json(conn, seq_id)


def stop_sequence(conn: Connection, user_id: str, seq_id: str, reason: str, when: dt.datetime | None) -> bool:
    """End a sequence: cancel its pending steps, queue the drafts of every unsent step for deletion,
    publish the stop.

    Idempotent: a sequence that already ended is left as it is (False).
    """
    row = conn.execute(
        text(f"UPDATE {SCHEMA}.sequences SET status = 'stopped', stop_reason = :r, "
             "stopped_at = COALESCE(:t, now()), pause_reason = NULL, updated_at = now() "
             "WHERE id = CAST(:s AS uuid) AND status NOT IN ('stopped', 'completed') RETURNING id, thread_id"),
        {"s": seq_id, "r": reason, "t": when},
    ).first()
    if row is None:
        return False
    conn.execute(
        text(f"UPDATE {SCHEMA}.steps SET status = 'cancelled', cancel_reason = :r "
             "WHERE sequence_id = CAST(:s AS uuid) AND status IN ('scheduled', 'sending')"),
        {"s": seq_id, "r": reason},
    )
    queue_draft_deletions(conn, user_id, seq_id)
    _drop_jobs(conn, seq_id)
    if row.thread_id:
        publish_in_tx(conn, SCHEMA, "sequence.stopped", user_id, {"sequence_id": seq_id, "reason": reason})
    return True


# ---------------------------------------------------------------------------------------------- export
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
            conn.execute(text("SELECT set_config(:k, :v, true)"), {"k": USER_SETTING, "v": user_id})
            # Cost estimates here are guesses (see above): never let them buy a JIT compilation.
            conn.execute(text("SET LOCAL jit = off"))
            streamed = conn.execution_options(stream_results=True, yield_per=page)
            contacts = streamed.execute(
                text(f"SELECT {_CONTACT_COLUMNS} FROM {SCHEMA}.contacts ORDER BY created_at, id"))
            for row in contacts:
                yield "contacts", _contact_json(row)
            sequences = streamed.execute(
                text(f"SELECT {_SEQ_COLUMNS} FROM {SCHEMA}.sequences ORDER BY created_at, id"))
            for batch in sequences.partitions():
                yield from _export_batch(conn, batch)


def _export_batch(conn: Connection, seqs: list[Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    # The batch's steps in the batch's order, streamed (one sequence's steps are held at a time). The
    # LATERAL subquery (fenced by OFFSET 0) is a lookup in the (sequence_id, position) index per
    # sequence, whatever the statistics say; a plain join was planned as a scan of every step.
    steps = conn.execution_options(stream_results=True, yield_per=500).execute(
        text(f"SELECT st.* FROM unnest(CAST(:ids AS uuid[])) WITH ORDINALITY AS p (id, n) CROSS JOIN LATERAL "
             f"(SELECT {_STEP_COLUMNS} FROM {SCHEMA}.steps WHERE sequence_id = p.id ORDER BY position OFFSET 0) "
             "AS st ORDER BY p.n, st.position"),
        {"ids": [row.id for row in seqs]},
    )
    pending = iter(seqs)
    current = next(pending)
    held: list[Any] = []
    for step in steps:
        while step.sequence_id != current.id:
            yield "sequences", _export_sequence(current, held)
            held = []
            current = next(pending)
        held.append(step)
    yield "sequences", _export_sequence(current, held)
    for rest in pending:
        yield "sequences", _export_sequence(rest, [])


def _export_sequence(row: Any, steps: list[Any]) -> dict[str, Any]:
    out = _seq_json(row, steps)
    for step, raw in zip(out["steps"], steps, strict=True):
        step["rfc_message_id"] = raw.rfc_message_id
    return out
