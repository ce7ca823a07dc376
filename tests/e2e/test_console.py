"""The web console in a real browser against the running stack and the sandbox: a person's whole
journey (sign in, connect Gmail, import contacts, write and send an email with two follow-ups, see it
sent and drafted, watch a reply stop it without reloading, download the export, delete the account and
watch it complete), axe-core on every page, no Content-Security-Policy violation anywhere; and the
console's security edges over plain HTTP."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import requests

from tests.e2e.console_browser import Journey, journey
from tests.e2e.journey import mailbox, wait_until

CONTACTS_CSV = (
    "email,first_name,last_name,company,role\n"
    "ada.{tag}@example.com,Ada,Lovelace,Analytical Engines,Mathematician\n"
    "grace.{tag}@example.com,Grace,Hopper,Navy,Rear Admiral\n"
    "not-an-address,Nobody,Here,,\n"
    "katherine.{tag}@example.com,Katherine,Johnson,NASA,\n"
)


@pytest.fixture(scope="module")
def console(stack) -> Iterator[str]:
    """The stack's gateway, restarted with the console on (as ``deploy/run.sh`` runs it: Google's consent
    comes back to the console); as it was for the other tests afterwards."""
    url = stack.config.console_url

    def restart(console: bool) -> None:
        stack.stack.stop_service("auth-gateway")
        stack.config.console = console
        stack.stack.start_service("auth-gateway")
        assert wait_until(lambda: _answers(f"{url}/healthz"), timeout=60), "the gateway did not come back"

    restart(console=True)
    yield url
    restart(console=False)


def _answers(address: str) -> bool:
    try:
        return requests.get(address, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture
def person(console, request) -> Iterator[Journey]:
    yield from journey(console, request.node.name.removeprefix("test_"))


def _sign_in(person: Journey, email: str) -> None:
    page = person.page
    page.goto("/")
    page.wait_for_url("**/sign-in?redirect_url=**")  # signed out: on to Clerk's (the stand-in's) page
    person.assert_accessible("clerk-sign-in")
    page.get_by_label("Email address").fill(email)
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("heading", name="Your emails").wait_for()


def _nav(page, name: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True).click()


def test_a_person_does_everything_in_the_browser(stack, console, person):
    page = person.page
    tag = uuid.uuid4().hex[:8]
    google_account = f"journey.{tag}@gmail.com"

    # 1. Sign in: home, with its empty state.
    _sign_in(person, f"ann.{tag}@example.com")
    assert page.get_by_text("No emails yet.").is_visible()
    assert page.get_by_text("Gmail is not connected").is_visible()
    person.assert_accessible("home-empty")

    # 2. Connect Gmail through the sandbox's consent screen.
    _nav(page, "Settings")
    page.get_by_role("heading", name="Settings").wait_for()
    person.assert_accessible("settings-not-connected")
    requests.post(f"{stack.google}/_sandbox/consent", json={"email": google_account}, timeout=10).raise_for_status()
    page.get_by_role("button", name="Connect Gmail").click()
    page.get_by_role("heading", name="wants to access your Google Account").wait_for()
    assert page.get_by_text("Send email on your behalf").is_visible()
    person.assert_accessible("google-consent")
    page.get_by_role("button", name="Allow").click()
    page.get_by_text("Gmail is connected.").wait_for()
    assert page.get_by_text(f"Connected as {google_account}").is_visible()
    assert page.locator(".scopes li").count() == 4
    person.assert_accessible("settings-connected")

    # 3. Import contacts from a CSV file: a report line by line.
    _nav(page, "Contacts")
    page.get_by_text("No contacts yet.").wait_for()
    person.assert_accessible("contacts-empty")
    page.get_by_role("link", name="Import a CSV file").click()
    person.assert_accessible("import-form")
    page.get_by_label("CSV file").set_input_files(
        {"name": "contacts.csv", "mimeType": "text/csv", "buffer": CONTACTS_CSV.format(tag=tag).encode()})
    page.get_by_role("button", name="Import").click()
    page.get_by_text("3 contacts added, 1 line refused.").wait_for()
    refused = page.locator("table tbody tr")
    assert refused.count() == 1 and refused.first.locator("td").first.inner_text() == "4"
    person.assert_accessible("import-report")
    page.get_by_role("link", name="See your contacts").click()
    assert page.locator("table tbody tr").count() == 3
    person.assert_accessible("contacts")
    page.get_by_label("Search contacts").fill("hopper")
    page.get_by_role("button", name="Search").click()
    page.get_by_text("1 match.").wait_for()
    assert "hopper" not in page.url.lower()  # the search terms travel in the body, never the URL
    person.assert_accessible("contacts-search")

    # 4. A new email with two follow-ups; the preview fills the merge fields; the API's reasons show
    #    beside the field.
    _nav(page, "New email")
    page.get_by_label("To", exact=True).select_option(label=f"Ada Lovelace (ada.{tag}@example.com)")
    page.get_by_label("Subject").fill("Coffee next week, {{first_name}}?")
    page.get_by_label("First email").fill("Hi {{first_name}}, I admire your work at {{company}}. {{nickname}}")
    preview = page.locator("[data-preview]")
    assert preview.locator(".subject").inner_text() == "Coffee next week, Ada?"
    assert "unknown merge field" in preview.inner_text()
    page.get_by_role("button", name="Add a follow-up").click()
    page.get_by_label("Message").nth(0).fill("Just bumping this up, {{first_name}}.")
    page.get_by_label("Message").nth(1).fill("Last note from me.")
    page.locator("#follow_up_delay_1").fill("5")
    person.assert_accessible("new-email")
    page.get_by_role("button", name="Save and send now").click()
    field_error = page.locator("#body-error")
    field_error.wait_for()
    assert "Unknown merge field {{nickname}}." in field_error.inner_text()
    assert page.get_by_label("First email").get_attribute("aria-invalid") == "true"
    person.assert_accessible("new-email-refused")
    page.get_by_label("First email").fill("Hi {{first_name}}, I admire your work at {{company}}. Coffee?")

    # 5. Send it; 6. the first email is sent and the follow-ups wait as drafts in Gmail.
    page.get_by_role("button", name="Save and send now").click()
    page.get_by_role("heading", name="Coffee next week, Ada?").wait_for()
    first, second, third = (page.locator(f"[data-step='{n}']") for n in range(3))
    first.locator(".events li").filter(has_text="Sent").wait_for(timeout=30_000)
    second.locator(".events li").filter(has_text="Drafted in Gmail").wait_for(timeout=30_000)
    third.locator(".events li").filter(has_text="Drafted in Gmail").wait_for(timeout=30_000)
    person.assert_accessible("sequence-sent")
    held = mailbox(stack, google_account)
    assert len(held["drafts"]) == 2 and len(held["threads"]) == 1

    # 7. A reply lands: home shows "Replied" without a reload.
    _nav(page, "Home")
    badge = page.locator("[data-sequence] [data-status]")
    assert badge.inner_text() != "Replied"
    page.evaluate("window.__sameDocument = true")
    requests.post(f"{stack.google}/_sandbox/gmail/deliver", json={
        "to": google_account, "from": f"Ada Lovelace <ada.{tag}@example.com>",
        "thread_id": held["threads"][0]["id"], "body": "Happily! Tuesday?"}, timeout=10).raise_for_status()
    badge.filter(has_text="Replied").wait_for(timeout=60_000)
    assert page.evaluate("window.__sameDocument") is True  # the list changed in place
    person.assert_accessible("home-replied")
    assert wait_until(lambda: not mailbox(stack, google_account)["drafts"], timeout=30), "drafts left behind"

    # Settings → Privacy: what CoffeePing did in the mailbox, counted from the access log.
    _nav(page, "Settings")
    page.get_by_role("link", name="See what CoffeePing did with your Gmail").click()
    page.get_by_role("heading", name="What CoffeePing did with your Gmail").wait_for()
    assert page.locator("[data-content-reads]").inner_text() == "0"
    log = page.locator(".access-log li .what")

    def described(prefix: str) -> list[str]:
        """The entries' plain words once one from ``prefix`` (a service) shows: records come in batches."""
        for _ in range(40):
            if any(text.startswith(prefix) for text in log.all_inner_texts()):
                break
            page.wait_for_timeout(250)
            page.reload()
        return log.all_inner_texts()

    assert any(text.startswith("Mailer sent") for text in described("Mailer sent"))
    assert f"ada.{tag}@example.com" not in page.content()  # ids and methods, never an address
    person.assert_accessible("privacy")
    page.get_by_label("By").select_option("reply-watcher")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/settings/privacy?*service=reply-watcher*")
    watcher = described("Reply watcher")
    assert watcher and all(text.startswith("Reply watcher") for text in watcher), watcher

    # 8. Download the export.
    _nav(page, "Settings")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download your data").click()
    exported = json.loads(download.value.path().read_text())
    assert exported["complete"] is True
    assert f"ada.{tag}@example.com" in json.dumps(exported["sections"])

    # 9. Delete the account: a typed confirmation, then its progress live until it completes.
    page.get_by_role("link", name="Delete my account…").click()
    page.get_by_label("To confirm, type").fill("delete it")
    page.get_by_role("button", name="Delete my account").click()
    page.locator("#confirm-error").wait_for()
    person.assert_accessible("delete-refused")
    page.get_by_label("To confirm, type").fill("delete my account")
    page.get_by_role("button", name="Delete my account").click()
    page.wait_for_url("**/account/deletion")
    page.evaluate("window.__sameDocument = true")
    page.get_by_role("heading", name="Your account is deleted").wait_for(timeout=90_000)
    assert page.evaluate("window.__sameDocument") is True
    person.assert_accessible("deletion-completed")

    # The progress stays reachable after signing out; the rest of the console leads back to it.
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("heading", name="You are signed out").wait_for()
    person.assert_accessible("signed-out")
    page.get_by_role("link", name="Follow its progress").click()
    page.get_by_role("heading", name="Your account is deleted").wait_for()

    assert person.csp_violations == [], f"Content-Security-Policy violations: {person.csp_violations}"


def test_contacts_are_added_edited_and_deleted_with_a_warning(person):
    page = person.page
    tag = uuid.uuid4().hex[:8]
    _sign_in(person, f"bea.{tag}@example.com")
    _nav(page, "Contacts")
    page.get_by_role("link", name="Add a contact").click()
    page.get_by_label("Email address").fill("not an address")
    page.get_by_role("button", name="Add contact").click()
    page.locator("#email-error").wait_for()
    assert page.get_by_label("Email address").get_attribute("aria-invalid") == "true"
    person.assert_accessible("contact-refused")
    page.get_by_label("Email address").fill(f"lin.{tag}@example.com")
    page.get_by_label("First name").fill("Lin")
    page.get_by_role("button", name="Add contact").click()
    page.get_by_text("Contact saved.").wait_for()
    page.get_by_label("Role").fill("Engineer")
    page.get_by_role("button", name="Save changes").click()
    page.get_by_text("Contact saved.").wait_for()
    assert page.get_by_label("Role").input_value() == "Engineer"
    person.assert_accessible("contact-edit")

    page.get_by_role("link", name="Write to them").click()
    assert page.get_by_label("To", exact=True).input_value() != ""  # the contact is chosen
    page.get_by_label("Subject").fill("Hello {{first_name}}")
    page.get_by_label("First email").fill("Coffee sometime, {{first_name}}?")
    page.get_by_label("Message").fill("Following up.")
    page.get_by_role("button", name="Save without sending").click()
    page.get_by_role("heading", name="Hello Lin").wait_for()
    assert page.locator("[data-status]").inner_text() == "Not sent yet"
    person.assert_accessible("sequence-draft")

    page.get_by_role("link", name=f"lin.{tag}@example.com").click()
    page.get_by_role("link", name="Delete contact").click()
    page.get_by_text("This cannot be undone.").wait_for()
    assert "their 1 email" in page.locator("main").inner_text()
    person.assert_accessible("contact-delete-warning")
    page.get_by_role("button", name="Delete the contact and their emails").click()
    page.get_by_text("The contact, their sequences and their emails are deleted.").wait_for()
    assert page.get_by_text("No contacts yet.").is_visible()
    _nav(page, "Home")
    page.get_by_text("No emails yet.").wait_for()
    assert person.csp_violations == [], f"Content-Security-Policy violations: {person.csp_violations}"


def test_console_pages_are_locked_down(stack, console):
    signed_out = requests.get(f"{console}/contacts", allow_redirects=False, timeout=10)
    assert signed_out.status_code == 303 and signed_out.headers["Location"] == "/sign-in?next=%2Fcontacts"
    api = requests.get(f"{console}/v1/contacts", timeout=10)
    assert api.status_code == 401 and api.headers["Content-Type"] == "application/problem+json"

    policy = requests.get(f"{console}/sign-in", timeout=10).headers["Content-Security-Policy"]
    directives = dict(d.split(" ", 1) for d in policy.split("; "))
    assert directives["frame-ancestors"] == "'none'" and directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and "unsafe" not in policy

    user = f"user_console_{uuid.uuid4().hex[:8]}"
    cookies = {"__session": stack.token(user, azp=console)}
    foreign = requests.post(f"{console}/contacts/new", data={"email": "x@example.com"}, cookies=cookies,
                            headers={"Origin": "https://evil.example"}, allow_redirects=False, timeout=10)
    assert foreign.status_code == 403 and foreign.headers["Content-Type"].startswith("text/html")
    own = requests.post(f"{console}/contacts/new", data={"email": "not an address"}, cookies=cookies,
                        headers={"Origin": console}, allow_redirects=False, timeout=10)
    assert own.status_code == 422 and "field-error" in own.text

    searched = requests.post(f"{console}/contacts/search", data={"q": "secret-term"}, cookies=cookies,
                             headers={"Origin": console}, timeout=10)
    assert searched.status_code == 200
    log = (stack.config.log_dir / "auth-gateway.log").read_text()
    assert "secret-term" not in log
