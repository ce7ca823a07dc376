"""Writing a sequence (a first email and its follow-ups, with a live preview of the merge fields for the
chosen contact), following one step by step, and sending, pausing, resuming or cancelling it."""

from __future__ import annotations

import contextlib
import zoneinfo
from collections.abc import Mapping
from functools import cache
from typing import Any

from flask import Response, redirect, request

from coffeeping.mailer.v1 import mailer_pb2 as pb
from coffeeping_gateway.api import from_message, to_message
from coffeeping_gateway.console.forms import FormErrors, text, validate
from coffeeping_gateway.console.frontend import bp, page, render
from coffeeping_gateway.problems import Problem
from coffeeping_gateway.schemas import Contact, Sequence, SequenceInput
from coffeeping_gateway.web import call, clients

# The API's bound on follow-ups (SequenceInput.follow_ups).
MAX_FOLLOW_UPS = next(rule.max_length for rule in SequenceInput.model_fields["follow_ups"].metadata
                      if hasattr(rule, "max_length"))
CONTACT_CHOICES = 100
# A follow-up's wait, as a person says it, and as the API's ISO 8601 duration.
DELAY_UNITS = {"days": "P{}D", "hours": "PT{}H"}
ACTIONS = {"send": "SendSequence", "pause": "PauseSequence", "resume": "ResumeSequence", "cancel": "CancelSequence"}


@cache
def time_zones() -> list[str]:
    return sorted(zoneinfo.available_timezones())


def _contacts(chosen: str | None) -> list[Contact]:
    found = call(clients().mailer.ListContacts, pb.ListContactsRequest(page_size=CONTACT_CHOICES))
    contacts = [from_message(Contact, c) for c in found.contacts]
    if chosen and chosen not in {c.id for c in contacts}:
        # A stale or foreign id in the link: the form simply has no contact chosen.
        with contextlib.suppress(Problem):
            contacts.insert(0, from_message(Contact, call(clients().mailer.GetContact,
                                                          pb.GetContactRequest(contact_id=chosen))))
    return contacts


def _follow_up_count() -> int:
    count = 0
    while count < MAX_FOLLOW_UPS and f"follow_up_body_{count}" in request.form:
        count += 1
    return count


def _delay(index: int, errors: list[dict[str, str]]) -> str | None:
    amount = request.form.get(f"follow_up_delay_{index}", "").strip()
    unit = request.form.get(f"follow_up_unit_{index}", "days")
    if not amount.isdigit() or not 1 <= int(amount) <= 999 or unit not in DELAY_UNITS:
        errors.append({"field": f"follow_ups[{index}].delay", "message": "enter a whole number from 1 to 999"})
        return None
    return DELAY_UNITS[unit].format(int(amount))


def _document(follow_ups: int) -> dict[str, Any]:
    """The form as the API's ``SequenceInput`` document."""
    errors: list[dict[str, str]] = []
    document: dict[str, Any] = {
        "subject": request.form.get("subject", ""),
        "body": request.form.get("body", ""),
        "follow_ups": [{"body": request.form.get(f"follow_up_body_{i}", ""), "delay": _delay(i, errors)}
                       for i in range(follow_ups)],
        "business_days": "business_days" in request.form,
    }
    if errors:
        raise Problem(422, "the request has invalid fields", errors=errors)
    if contact_id := text("contact_id"):
        document["contact_id"] = contact_id
    start, end = text("window_start"), text("window_end")
    if start or end:
        document["send_window"] = {key: value for key, value in (("start", start), ("end", end)) if value}
    if time_zone := text("time_zone"):
        document["time_zone"] = time_zone
    return document


def _form(status: int = 200, follow_ups: int = 0, errors: FormErrors | None = None,
          values: Mapping[str, str] | None = None) -> Response:
    """The form, filled with ``values`` (what was posted, by default)."""
    values = request.form if values is None else values
    chosen = values.get("contact_id") or request.args.get("contact")
    return render("sequence_new.html", code=status, contacts=_contacts(chosen), chosen=chosen,
                  follow_ups=follow_ups, max_follow_ups=MAX_FOLLOW_UPS, time_zones=time_zones(),
                  units=list(DELAY_UNITS), errors=errors or FormErrors(), form=values)


@bp.get("/sequences/new")
@page
def new_sequence() -> Response:
    return _form(follow_ups=1)


@bp.post("/sequences/new")
@page
def create_sequence() -> Response:
    action = request.form.get("action", "save")
    count = _follow_up_count()
    if action == "add":
        return _form(follow_ups=min(count + 1, MAX_FOLLOW_UPS))
    if action.startswith("remove-") and action[7:].isdigit():
        return _remove_follow_up(int(action[7:]), count)
    try:
        document = validate(SequenceInput, _document(count))
        created = call(clients().mailer.CreateSequence, to_message(document, pb.CreateSequenceRequest()))
    except Problem as problem:
        if problem.status != 422:
            raise
        return _form(422, count, FormErrors.of(problem))
    if action == "send":
        call(clients().mailer.SendSequence, pb.SendSequenceRequest(sequence_id=created.id))
    return redirect(f"/sequences/{created.id}", code=303)


def _remove_follow_up(index: int, count: int) -> Response:
    """The form again without follow-up ``index``: the later ones move up."""
    values = request.form.to_dict()
    for i in range(index, count):
        for name in ("body", "delay", "unit"):
            later = request.form.get(f"follow_up_{name}_{i + 1}")
            if later is None:
                values.pop(f"follow_up_{name}_{i}", None)
            else:
                values[f"follow_up_{name}_{i}"] = later
    return _form(follow_ups=max(count - 1, 0), values=values)


def _sequence(sequence_id: str) -> Sequence:
    return from_message(Sequence, call(clients().mailer.GetSequence, pb.GetSequenceRequest(sequence_id=sequence_id)))


@bp.get("/sequences/<sequence_id>")
@page
def sequence(sequence_id: str) -> Response:
    return render("sequence.html", sequence=_sequence(sequence_id))


@bp.get("/fragments/sequences/<sequence_id>")
def sequence_fragment(sequence_id: str) -> Response:
    return render("_sequence_detail.html", sequence=_sequence(sequence_id))


@bp.post("/sequences/<sequence_id>/<action>")
@page
def act(sequence_id: str, action: str) -> Response:
    if action not in ACTIONS:
        raise Problem(404, "no such resource")
    method = getattr(clients().mailer, ACTIONS[action])
    call(method, getattr(pb, f"{ACTIONS[action]}Request")(sequence_id=sequence_id))
    return redirect(f"/sequences/{sequence_id}", code=303)
