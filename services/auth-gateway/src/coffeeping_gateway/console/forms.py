"""Form posts as the API's own documents: a form becomes the same pydantic model the JSON API parses,
goes through the same call, and its refusals (the model's, or the mailer's field violations) come back
as the API's 422 reasons, shown beside each field."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from coffeeping_gateway.api import invalid
from coffeeping_gateway.problems import Problem

T = TypeVar("T", bound=BaseModel)
_FOLLOW_UP = re.compile(r"^follow_ups\[(\d+)\]\.?(.*)$")
# What the API's field names are called on the forms.
LABELS = {"contact_id": "Contact", "body": "First email", "time_zone": "Time zone", "send_window": "Sending hours",
          "first_name": "First name", "last_name": "Last name", "confirm": "Confirmation"}
FOLLOW_UP_PARTS = {"body": "", "delay": "wait", "send_at": "send time"}


def field_label(field: str) -> str:
    """``follow_ups[1].delay`` as "Follow-up 2, wait"."""
    if match := _FOLLOW_UP.match(field):
        part = FOLLOW_UP_PARTS.get(match.group(2), match.group(2).replace("_", " "))
        return f"Follow-up {int(match.group(1)) + 1}" + (f", {part}" if part else "")
    return LABELS.get(field, field.replace("_", " ").replace(".", " ").capitalize())


class FormErrors(dict[str, str]):
    """The first reason per field (the API's field names, ``follow_ups[0].body``); ``""`` holds the
    problem's own detail when no field is named."""

    @classmethod
    def of(cls, problem: Problem) -> FormErrors:
        errors = cls()
        for error in problem.extra.get("errors", []):
            errors.setdefault(error["field"], error["message"])
        if not errors:
            errors[""] = problem.detail or "That didn't work; try again."
        return errors

    def under(self, prefix: str) -> dict[str, str]:
        """The reasons for ``prefix`` and its parts (``send_window`` and ``send_window.start``)."""
        return {k: v for k, v in self.items() if k == prefix or k.startswith((prefix + ".", prefix + "["))}


def text(name: str) -> str | None:
    """A text field, None when left empty."""
    value = request.form.get(name, "").strip()
    return value or None


def fields(names: tuple[str, ...], keep_empty: bool = False) -> dict[str, Any]:
    """The named text fields; empty ones left out (or, with ``keep_empty``, given as None, which clears)."""
    values = {name: text(name) for name in names}
    return values if keep_empty else {k: v for k, v in values.items() if v is not None}


def validate(model: type[T], data: dict[str, Any]) -> T:
    """``data`` as ``model``, or the API's 422 problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None
