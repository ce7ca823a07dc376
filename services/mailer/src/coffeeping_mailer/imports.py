"""CSV import of contacts: a UTF-8 file with a header row naming an ``email`` column.

The whole file is read and checked before anything is written (it is bounded in bytes and rows), then
every valid line is inserted in one transaction. A line with an address the user already has is
counted as a duplicate, never an error that would undo the others; a bad line is reported by number.
"""

from __future__ import annotations

import csv as csv_format  # not ``csv``: that is the name of import_contacts's argument
import io
from typing import Any

from sqlalchemy import Engine

from coffeeping.common.db import user_tx
from coffeeping_mailer.contacts import CONTACT_FIELDS, contact_values, insert_contact
from coffeeping_mailer.errors import Invalid
from coffeeping_mailer.fields import err

MAX_CSV_BYTES = 1024 * 1024
MAX_CSV_ROWS = 5_000


def import_contacts(engine: Engine, user_id: str, csv: bytes) -> dict[str, Any]:
    """``{"created": n, "duplicates": n, "errors": [{"line": n, "reason": ...}]}``."""
    header, records, errors = _read(csv)
    created = duplicates = 0
    with user_tx(engine, user_id) as conn:
        for line, record in records:
            if len(record) > len(header):
                errors.append({"line": line, "reason": "more cells than header columns"})
                continue
            data = {col: cell for col, cell in zip(header, record, strict=False)
                    if col in CONTACT_FIELDS and cell.strip()}
            values, problems = contact_values(data, partial=False)
            if problems:
                errors.append({"line": line, "reason": "; ".join(f"{p['field']} {p['message']}" for p in problems)})
                continue
            # ON CONFLICT DO NOTHING: a duplicate is counted, never an error that would undo the others.
            _, was_created = insert_contact(conn, user_id, values)
            if was_created:
                created += 1
            else:
                duplicates += 1
    errors.sort(key=lambda e: e["line"])
    return {"created": created, "duplicates": duplicates, "errors": errors}


def _read(body: bytes) -> tuple[list[str], list[tuple[int, list[str]]], list[dict[str, Any]]]:
    """(the header's column names, the non-blank lines with their numbers, the lines that could not
    be read); a file that cannot be imported at all is ``Invalid`` on ``file``."""
    if len(body) > MAX_CSV_BYTES:
        raise Invalid([err("file", f"must be at most {MAX_CSV_BYTES} bytes")], "the CSV file is too large")
    try:
        content = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Invalid([err("file", "must be UTF-8 text")], "the CSV file is not UTF-8") from None
    if "\x00" in content:
        raise Invalid([err("file", "must be a CSV text file")], "the CSV file is not text")
    reader = csv_format.reader(io.StringIO(content, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise Invalid([err("file", "needs a header row with an email column")], "the CSV file is empty") from None
    except csv_format.Error:
        raise Invalid([err("file", "is not a readable CSV file")], "the CSV file is malformed") from None
    columns = [h.strip().lower().replace(" ", "_") for h in header]
    if "email" not in columns:
        raise Invalid([err("file", "needs a header row with an email column")], "the CSV file has no email column")
    records: list[tuple[int, list[str]]] = []
    errors: list[dict[str, Any]] = []
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv_format.Error:
            errors.append({"line": reader.line_num, "reason": "malformed CSV line"})
            break
        if any(cell.strip() for cell in record):
            records.append((reader.line_num, record))
        if len(records) > MAX_CSV_ROWS:
            raise Invalid([err("file", f"must have at most {MAX_CSV_ROWS} rows")], "the CSV file has too many rows")
    return columns, records, errors
