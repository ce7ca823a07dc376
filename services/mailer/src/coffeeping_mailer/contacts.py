"""Contacts: create, read, list, update and delete them, and check their fields.

Every call runs in one ``user_tx`` (row-level security scopes it to the user); an id that is not the
user's is not found, like a missing one. Deleting a contact stops its sequences first (their drafts are
queued for removal from Gmail) and forgets the access-log entries about them, then the database cascades
to the sequences, steps and jobs.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from coffeeping.common.access_log import forget_sequences
from coffeeping.common.db import user_tx
from coffeeping_mailer import lifecycle, pages, schedule
from coffeeping_mailer.errors import Invalid, already_exists, not_found
from coffeeping_mailer.fields import err, parse_id
from coffeeping_mailer.mime import check_address, check_name
from coffeeping_mailer.models import SCHEMA, contacts, sequences

MAX_NOTES_CHARS = 5_000
CONTACT_FIELDS = ("email", "name", "first_name", "last_name", "company", "role", "time_zone", "notes")
_NAME_FIELDS = ("name", "first_name", "last_name", "company", "role")
_EMAIL_TAKEN = "a contact with this email address exists"

# What the API shows of a contact (``contact_record``), in this order.
COLUMNS = (contacts.c.id, contacts.c.email, contacts.c.name, contacts.c.first_name, contacts.c.last_name,
           contacts.c.company, contacts.c.role, contacts.c.time_zone, contacts.c.notes, contacts.c.created_at,
           contacts.c.updated_at)


def contact_values(data: Any, partial: bool) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The contact fields of ``data``, trimmed (an empty one is None), and an error per bad field.

    ``partial``: an update, where ``email`` is not required and None clears a field.
    """
    if not isinstance(data, dict):
        return {}, [err("contact", "must be an object")]
    errors: list[dict[str, str]] = []
    values: dict[str, Any] = {}
    for key in data:
        if key not in CONTACT_FIELDS:
            errors.append(err(key, "unknown field"))
    if not partial and "email" not in data:
        errors.append(err("email", "is required"))
    for key in CONTACT_FIELDS:
        if key not in data:
            continue
        value = data[key]
        if value is None and key != "email":
            values[key] = None
            continue
        if not isinstance(value, str):
            errors.append(err(key, "must be a string"))
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
            errors.append(err(key, str(exc)))
            continue
        values[key] = value or None
    return values, errors


def contact_record(row: Any) -> dict[str, Any]:
    """A contact as the fields of ``mailer.v1.Contact`` (times as datetimes; None when unset)."""
    return {
        "id": str(row.id), "email": row.email, "name": row.name, "first_name": row.first_name,
        "last_name": row.last_name, "company": row.company, "role": row.role, "time_zone": row.time_zone,
        "notes": row.notes, "created_at": row.created_at, "updated_at": row.updated_at,
    }


def insert_contact(conn: Connection, user_id: str, values: dict[str, Any]) -> tuple[uuid.UUID, bool]:
    """Insert; return (id, created). A duplicate address returns the existing contact's id."""
    email = values.get("email")
    created = conn.execute(
        insert(contacts)
        .values({**{k: values.get(k) for k in CONTACT_FIELDS}, "id": uuid.uuid4(), "user_id": user_id,
                 "email_key": func.lower(email)})
        .on_conflict_do_nothing(index_elements=[contacts.c.user_id, contacts.c.email_key])
        .returning(contacts.c.id)
    ).scalar()
    if created is not None:
        return created, True
    existing = conn.execute(
        select(contacts.c.id).where(contacts.c.user_id == user_id, contacts.c.email_key == func.lower(email))
    ).scalar_one()
    return existing, False


def contact_row(conn: Connection, contact_id: uuid.UUID) -> Any:
    """The contact's row (``COLUMNS``), or not found."""
    row = conn.execute(select(*COLUMNS).where(contacts.c.id == contact_id)).first()
    if row is None:
        raise not_found("contact", str(contact_id))
    return row


def create_contact(engine: Engine, user_id: str, data: dict[str, Any]) -> dict[str, Any]:
    values, errors = contact_values(data, partial=False)
    if errors:
        raise Invalid(errors)
    with user_tx(engine, user_id) as conn:
        contact_id, created = insert_contact(conn, user_id, values)
        if not created:
            raise already_exists("contact", str(contact_id), _EMAIL_TAKEN)
        return contact_record(contact_row(conn, contact_id))


def get_contact(engine: Engine, user_id: str, contact_id: str) -> dict[str, Any]:
    cid = parse_id(contact_id, "contact")
    with user_tx(engine, user_id) as conn:
        return contact_record(contact_row(conn, cid))


def list_contacts(engine: Engine, user_id: str, page_size: int, page_token: str) -> dict[str, Any]:
    """``{"items": [...], "next_cursor": str | None}``, oldest first."""
    with user_tx(engine, user_id) as conn:
        rows, next_cursor = pages.page(conn, contacts, select(*COLUMNS), page_size, page_token)
    return {"items": [contact_record(r) for r in rows], "next_cursor": next_cursor}


def update_contact(engine: Engine, user_id: str, contact_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """Change the fields in ``data``; None clears one (the email cannot be cleared)."""
    cid = parse_id(contact_id, "contact")
    values, errors = contact_values(data, partial=True)
    if isinstance(data, dict) and "email" in data and data["email"] is None:
        errors.append(err("email", "must not be null"))
    if errors:
        raise Invalid(errors)
    with user_tx(engine, user_id) as conn:
        contact_row(conn, cid)
        if "email" in values:
            clash = conn.execute(
                select(contacts.c.id).where(contacts.c.email_key == func.lower(values["email"]), contacts.c.id != cid)
            ).scalar()
            if clash is not None:
                raise already_exists("contact", str(clash), _EMAIL_TAKEN)
        if values:
            changes: dict[str, Any] = {**values, "updated_at": func.now()}
            if "email" in values:
                changes["email_key"] = func.lower(values["email"])
            conn.execute(update(contacts).where(contacts.c.id == cid).values(changes))
        return contact_record(contact_row(conn, cid))


def delete_contact(engine: Engine, user_id: str, contact_id: str, tombstone_key: bytes) -> None:
    """Stop its sequences, queue their drafts for deletion in Gmail, forget the access-log entries about
    them, then delete (the database cascades)."""
    cid = parse_id(contact_id, "contact")
    with user_tx(engine, user_id) as conn:
        contact_row(conn, cid)
        owned = conn.execute(select(sequences.c.id, sequences.c.thread_id).where(sequences.c.contact_id == cid)).all()
        for seq_id, _ in owned:
            lifecycle.stop_sequence(conn, user_id, seq_id, "contact_deleted", None)
        forget_sequences(conn, SCHEMA, tombstone_key, user_id, [s for s, _ in owned], [t for _, t in owned if t])
        conn.execute(delete(contacts).where(contacts.c.id == cid))
