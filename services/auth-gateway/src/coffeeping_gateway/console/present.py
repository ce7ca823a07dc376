"""How the API's documents read to a person: statuses, stop reasons, each step's timeline, times."""

from __future__ import annotations

import datetime as dt

from coffeeping_gateway.console.forms import field_label
from coffeeping_gateway.console.frontend import bp
from coffeeping_gateway.schemas import Contact, Sequence, Step

STATUSES = {"draft": "Not sent yet", "scheduled": "Scheduled", "active": "Active", "paused": "Paused",
            "stopped": "Stopped", "completed": "Completed"}
STOP_REASONS = {
    "replied": "Replied",
    "bounced": "Bounced",
    "cancelled": "Cancelled by you",
    "user_took_over": "You wrote in the thread",
    "draft_deleted": "A follow-up draft was deleted in Gmail",
    "gmail_disconnected": "Gmail was disconnected",
    "gmail_account_changed": "Another Gmail account was connected",
    "thread_deleted": "The thread was deleted in Gmail",
    "contact_deleted": "The contact was deleted",
    "failed": "Sending failed",
}
STEP_CANCELS = {**STOP_REASONS, "replied": "the contact replied", "cancelled": "you cancelled"}

bp.add_app_template_filter(field_label)


@bp.app_template_global()
def badge(sequence: Sequence) -> tuple[str, str]:
    """(label, tone): a stopped sequence reads as why it stopped."""
    if sequence.status == "stopped" and sequence.stop_reason:
        tone = "good" if sequence.stop_reason == "replied" else "stopped"
        return STOP_REASONS.get(sequence.stop_reason, "Stopped"), tone
    return STATUSES.get(sequence.status, sequence.status), sequence.status


@bp.app_template_global()
def next_step(sequence: Sequence) -> Step | None:
    if sequence.status in ("draft", "stopped", "completed"):
        return None
    return next((s for s in sequence.steps if s.status in ("scheduled", "sending")), None)


@bp.app_template_global()
def step_title(step: Step) -> str:
    return "First email" if step.kind == "first" else f"Follow-up {step.position}"


@bp.app_template_global()
def step_events(step: Step, sequence: Sequence) -> list[tuple[str, dt.datetime | None]]:
    """What happened to a step, in order: (what, when)."""
    events: list[tuple[str, dt.datetime | None]] = []
    if step.draft_id and step.status in ("scheduled", "sending"):
        events.append(("Drafted in Gmail", None))
    if step.edited_in_gmail:
        events.append(("Edited in Gmail", None))
    if step.status == "sent":
        events.append(("Sent", step.sent_at))
    elif step.status == "sending":
        events.append(("Sending now", None))
    elif step.status == "cancelled":
        reason = STEP_CANCELS.get(step.cancel_reason or "", "")
        events.append((f"Cancelled: {reason}" if reason else "Cancelled", None))
    elif step.status == "failed":
        events.append((f"Failed after {step.attempts} attempt{'s' if step.attempts != 1 else ''}", None))
    elif sequence.status == "draft":
        events.append(("Not sent yet", None))
    elif sequence.status == "paused":
        events.append(("Waiting: the sequence is paused", step.due_at))
    else:
        events.append(("Goes out", step.due_at) if step.due_at else ("Waits for the email before", None))
    return events


@bp.app_template_filter()
def delay_words(delay: str | None) -> str:
    """``P3D`` as "3 days after the email before"; anything else as it is."""
    if not delay:
        return ""
    for prefix, suffix, unit in (("P", "D", "day"), ("PT", "H", "hour"), ("PT", "M", "minute"), ("PT", "S", "second")):
        number = delay.removeprefix(prefix).removesuffix(suffix)
        if delay.startswith(prefix) and delay.endswith(suffix) and number.isdigit():
            return f"{number} {unit}{'s' if number != '1' else ''} after the email before"
    return delay


@bp.app_template_filter()
def utc(moment: dt.datetime | None) -> str:
    """The time in UTC (the pages' script shows it in the reader's own time zone)."""
    if moment is None:
        return ""
    return moment.astimezone(dt.UTC).strftime("%-d %b %Y, %H:%M UTC")


@bp.app_template_filter()
def sentence(text: str) -> str:
    """A reason as a sentence: capital first letter, full stop (the API's reasons are lower-case phrases)."""
    text = text.strip()
    if not text:
        return ""
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


@bp.app_template_global()
def display_name(contact: Contact) -> str:
    """What to call a contact: the name, else the first and last names, else nothing."""
    return contact.name or " ".join(p for p in (contact.first_name, contact.last_name) if p)
