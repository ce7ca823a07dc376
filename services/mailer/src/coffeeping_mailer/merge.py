"""Merge fields: ``{{first_name}}``, ``{{name}}``, ``{{company}}`` and ``{{role}}`` filled from the contact
when a sequence is created (what is stored and sent is the merged text)."""

from __future__ import annotations

import re
from typing import Any

from coffeeping_mailer.fields import err

MERGE_FIELDS = ("first_name", "name", "company", "role")
_MERGE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def render(template: str, contact: Any, field: str, errors: list[dict[str, str]]) -> str:
    """Fill the merge fields of ``template``; an unknown or empty one is an error on ``field``."""
    problems: list[str] = []

    def fill(match: re.Match[str]) -> str:
        key = match.group(1).lower()
        if key not in MERGE_FIELDS:
            problems.append(f"unknown merge field {{{{{match.group(1)}}}}}")
            return ""
        value = merge_value(contact, key)
        if not value:
            problems.append(f"merge field {{{{{key}}}}} cannot be filled: the contact has no {key}")
            return ""
        return str(value)

    out = _MERGE.sub(fill, template)
    leftover = _MERGE.sub("", template)
    if "{{" in leftover or "}}" in leftover:
        problems.append("has unbalanced merge-field braces")
    for problem in dict.fromkeys(problems):
        errors.append(err(field, problem))
    return out


def merge_value(contact: Any, key: str) -> str | None:
    """A merge field's value; ``name`` falls back to the first and last names."""
    if key == "name":
        return contact.name or " ".join(p for p in (contact.first_name, contact.last_name) if p) or None
    value: str | None = getattr(contact, key)
    return value
