"""Drive a demo against a running ``deploy/run.sh`` (sandbox on): what a browser would do, step by step.

    .venv/bin/python deploy/demo.py connect  --user user_demo --email demo@example.com
    .venv/bin/python deploy/demo.py outreach --user user_demo --contact ann@example.com
    .venv/bin/python deploy/demo.py reply    --user user_demo --email demo@example.com --contact ann@example.com

Each step prints the request it makes and what came back. Session tokens are minted from the Clerk
stand-in (they last 60 s, so every request gets a fresh one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import requests

GATEWAY = "http://127.0.0.1:8080"
CLERK = "http://127.0.0.1:8701"
GOOGLE = "http://127.0.0.1:8702"
COOKIE = "cp_gmail_oauth"


class Api:
    def __init__(self, user: str) -> None:
        self.user = user
        self.http = requests.Session()

    def token(self) -> str:
        reply = requests.post(f"{CLERK}/_sandbox/tokens", json={"user_id": self.user}, timeout=10)
        reply.raise_for_status()
        return str(reply.json()["token"])

    def session_get(self, path: str) -> Any:
        """A GET without printing (for polling)."""
        reply = self.http.get(GATEWAY + path, headers={"Authorization": f"Bearer {self.token()}"}, timeout=30)
        return reply.json()

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        reply = self.http.request(method, GATEWAY + path, headers=headers, timeout=30, **kwargs)
        print(f"{method} {path.split('?')[0]} -> {reply.status_code}")
        return reply


def show(data: Any) -> None:
    print(json.dumps(data, indent=2)[:3000])


def connect(args: argparse.Namespace) -> int:
    api = Api(args.user)
    # The sandbox's consent screen answers at once; tell it which Google account consents.
    requests.post(f"{GOOGLE}/_sandbox/consent", json={"email": args.email}, timeout=10).raise_for_status()
    reply = api.call("POST", "/v1/gmail/connect")
    if reply.status_code != 200:
        show(reply.json())
        return 1
    url, cookie = reply.json()["authorization_url"], reply.cookies.get(COOKIE)
    print(f"consent URL: {url[:120]}...")
    google = requests.get(url, allow_redirects=False, timeout=10)
    callback = google.headers["Location"]
    print(f"Google redirected the browser to the callback: {callback.split('?')[0]}?code=...&state=...")
    # The browser sends the HttpOnly binding cookie back with the callback (Secure: we pass it by hand over http).
    done = api.call("GET", callback.replace(GATEWAY, ""), cookies={COOKIE: cookie or ""}, allow_redirects=False)
    print(f"the gateway sent the browser to: {done.headers.get('Location')}")
    show(api.call("GET", "/v1/me").json())
    return 0


def outreach(args: argparse.Namespace) -> int:
    api = Api(args.user)
    contact = api.call("POST", "/v1/contacts", json={"email": args.contact, "first_name": "Ann", "company": "Acme"})
    if contact.status_code == 409:
        contact_id = contact.json().get("existing_id") or contact.json().get("contact_id")
    else:
        contact_id = contact.json()["id"]
    sequence = api.call("POST", "/v1/sequences", json={
        "contact_id": contact_id,
        "subject": "Coffee next week?",
        "body": "Hi {{first_name}}, would you have 20 minutes for a coffee chat about {{company}}?",
        "follow_ups": [{"body": "Hi {{first_name}}, just bumping this up.", "delay": "PT30S"},
                       {"body": "Last try, {{first_name}}: coffee on me!", "delay": "PT60S"}],
    })
    show(sequence.json())
    if sequence.status_code >= 300:
        return 1
    sequence_id = sequence.json()["id"]
    api.call("POST", f"/v1/sequences/{sequence_id}/send")
    time.sleep(2)
    show(api.call("GET", f"/v1/sequences/{sequence_id}").json())
    print("Gmail now holds the first email and both follow-ups as drafts:")
    print(f"  {GOOGLE}/_sandbox/gmail/mailbox?user=<the connected address>")
    return 0


def reply(args: argparse.Namespace) -> int:
    mailbox = requests.get(f"{GOOGLE}/_sandbox/gmail/mailbox", params={"user": args.email}, timeout=10).json()
    threads = [t for t in mailbox.get("threads", []) if any(args.contact in (m.get("to") or "")
                                                             for m in t["messages"])]
    if not threads:
        print("no thread with that contact yet: run the outreach step first")
        return 1
    thread = threads[-1]
    api = Api(args.user)
    delivered = requests.post(f"{GOOGLE}/_sandbox/gmail/deliver", json={
        "to": args.email, "from": f"Ann <{args.contact}>", "thread_id": thread["id"], "body": "Sure, Tuesday?"},
        timeout=10)
    started = time.monotonic()
    print(f"delivered a reply into thread {thread['id']}: {delivered.status_code}")
    print("Gmail pushes the change (Pub/Sub -> the gateway -> the watcher), and the sequence stops:")
    while time.monotonic() - started < 30:
        sequences = api.session_get("/v1/sequences?limit=100").get("items", [])
        stopped = [s for s in sequences if s.get("thread_id") == thread["id"] and s["status"] == "stopped"]
        if stopped:
            print(f"stop_reason={stopped[0]['stop_reason']} {time.monotonic() - started:.1f} s after the reply arrived")
            while _drafts(args.email, thread["id"]) and time.monotonic() - started < 30:
                time.sleep(0.1)
            print(f"its follow-up drafts: {_drafts(args.email, thread['id'])} left in Gmail, "
                  f"{time.monotonic() - started:.1f} s after the reply arrived")
            return 0
        time.sleep(0.1)
    print("not stopped within 30 s (is the stack running with push on? docs/PUSH.md)")
    show(api.call("GET", "/v1/sequences").json())
    return 1


def _drafts(email: str, thread_id: str) -> int:
    mailbox = requests.get(f"{GOOGLE}/_sandbox/gmail/mailbox", params={"user": email}, timeout=10).json()
    return sum(1 for d in mailbox.get("drafts", []) if d["message"]["threadId"] == thread_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    for name in ("connect", "outreach", "reply"):
        step = sub.add_parser(name)
        step.add_argument("--user", default="user_demo")
        step.add_argument("--email", default="demo@example.com", help="the Google account that consents")
        step.add_argument("--contact", default="ann@example.com")
    args = parser.parse_args()
    try:
        return {"connect": connect, "outreach": outreach, "reply": reply}[args.step](args)
    except requests.ConnectionError:
        print("cannot reach the system: start it with deploy/run.sh first", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
