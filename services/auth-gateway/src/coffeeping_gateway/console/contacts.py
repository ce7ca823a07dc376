"""Contacts: a paged list, a search (its terms travel in a POST body, never in a URL or a log line),
adding and editing, CSV import with a report line by line, and deletion with its warning."""

from __future__ import annotations

from flask import Response, redirect, request

from coffeeping.mailer.v1 import mailer_pb2 as pb
from coffeeping_gateway.api import from_message, parse_query, to_message
from coffeeping_gateway.console.forms import FormErrors, fields, validate
from coffeeping_gateway.console.frontend import bp, page, render
from coffeeping_gateway.problems import Problem
from coffeeping_gateway.schemas import Contact, ContactInput, ImportResult, PageQuery, Sequence
from coffeeping_gateway.web import call, clients, rate_limited

PAGE_SIZE = 50
FIELDS = ("email", "name", "first_name", "last_name", "company", "role", "time_zone", "notes")
# A search reads at most this many contacts (the mailer lists, it does not search).
SEARCH_PAGES, SEARCH_PAGE_SIZE, SEARCH_SHOWN = 20, 100, 100
NOTICES = {"deleted": "The contact, their sequences and their emails are deleted.", "saved": "Contact saved."}


@bp.get("/contacts")
@page
def contacts() -> Response:
    query = parse_query(PageQuery)
    found = call(clients().mailer.ListContacts, pb.ListContactsRequest(page_size=PAGE_SIZE, page_token=query.cursor))
    return render("contacts.html", contacts=[from_message(Contact, c) for c in found.contacts],
                  next_cursor=found.next_page_token or None, cursor=query.cursor,
                  notice=NOTICES.get(request.args.get("notice", "")))


def _matches(contact: pb.Contact, words: list[str]) -> bool:
    haystack = " ".join([contact.email, contact.name, contact.first_name, contact.last_name, contact.company,
                         contact.role]).lower()
    return all(word in haystack for word in words)


@bp.post("/contacts/search")
@page
@rate_limited(per_minute=30, burst=10)
def search() -> Response:
    terms = request.form.get("q", "").strip()[:200]
    words = terms.lower().split()
    if not words:
        return redirect("/contacts", code=303)
    found: list[Contact] = []
    token = ""
    for _ in range(SEARCH_PAGES):
        listed = call(clients().mailer.ListContacts, pb.ListContactsRequest(page_size=SEARCH_PAGE_SIZE,
                                                                           page_token=token))
        found += [from_message(Contact, c) for c in listed.contacts if _matches(c, words)]
        token = listed.next_page_token
        if not token or len(found) > SEARCH_SHOWN:
            break
    return render("contacts.html", contacts=found[:SEARCH_SHOWN], terms=terms, searched=True,
                  more=len(found) > SEARCH_SHOWN or bool(token))


def _contact_form(template: str, status: int = 200, errors: FormErrors | None = None, **context: object) -> Response:
    return render(template, code=status, errors=errors or FormErrors(), form=request.form, **context)


@bp.get("/contacts/new")
@page
def new_contact() -> Response:
    return _contact_form("contact_form.html", contact=None)


@bp.post("/contacts/new")
@page
def create_contact() -> Response:
    try:
        document = validate(ContactInput, fields(FIELDS))
        created = call(clients().mailer.CreateContact, pb.CreateContactRequest(contact=to_message(document,
                                                                                                  pb.Contact())))
    except Problem as problem:
        if problem.status == 409:
            return _contact_form("contact_form.html", 409, FormErrors(
                email="you already have a contact with this address"), contact=None,
                existing_id=problem.extra.get("existing_id"))
        if problem.status != 422:
            raise
        return _contact_form("contact_form.html", 422, FormErrors.of(problem), contact=None)
    return redirect(f"/contacts/{created.id}?notice=saved", code=303)


def _contact(contact_id: str) -> Contact:
    return from_message(Contact, call(clients().mailer.GetContact, pb.GetContactRequest(contact_id=contact_id)))


@bp.get("/contacts/<contact_id>")
@page
def contact(contact_id: str) -> Response:
    return render("contact_form.html", contact=_contact(contact_id), errors=FormErrors(), form={},
                  notice=NOTICES.get(request.args.get("notice", "")))


@bp.post("/contacts/<contact_id>")
@page
def update_contact(contact_id: str) -> Response:
    changes: dict[str, object] = fields(FIELDS, keep_empty=True)
    try:
        document = validate(ContactInput, changes)
        update = pb.UpdateContactRequest(contact_id=contact_id, contact=to_message(document, pb.Contact()))
        update.update_mask.paths.extend(sorted(document.model_fields_set))
        call(clients().mailer.UpdateContact, update)
    except Problem as problem:
        if problem.status == 409:
            errors = FormErrors(email="another of your contacts has this address")
        elif problem.status == 422:
            errors = FormErrors.of(problem)
        else:
            raise
        return _contact_form("contact_form.html", problem.status, errors, contact=_contact(contact_id))
    return redirect(f"/contacts/{contact_id}?notice=saved", code=303)


@bp.get("/contacts/<contact_id>/delete")
@page
def confirm_delete(contact_id: str) -> Response:
    listed = call(clients().mailer.ListSequences, pb.ListSequencesRequest(page_size=100, contact_id=contact_id))
    return render("contact_delete.html", contact=_contact(contact_id),
                  sequences=[from_message(Sequence, s) for s in listed.sequences],
                  more=bool(listed.next_page_token))


@bp.post("/contacts/<contact_id>/delete")
@page
def delete_contact(contact_id: str) -> Response:
    call(clients().mailer.DeleteContact, pb.DeleteContactRequest(contact_id=contact_id))
    return redirect("/contacts?notice=deleted", code=303)


@bp.get("/contacts/import")
@page
def import_form() -> Response:
    return render("contacts_import.html", result=None, error=None)


@bp.post("/contacts/import")
@page
@rate_limited(per_minute=6, burst=3)
def import_contacts() -> Response:
    upload = request.files.get("file")
    data = upload.read() if upload else b""
    if not data:
        return render("contacts_import.html", code=422, result=None, error="Choose a CSV file to import.")
    try:
        result = call(clients().mailer.ImportContacts, pb.ImportContactsRequest(csv=data))
    except Problem as problem:
        if problem.status != 422:
            raise
        return render("contacts_import.html", code=422, result=None, error=FormErrors.of(problem).popitem()[1])
    return render("contacts_import.html", result=from_message(ImportResult, result), error=None)
