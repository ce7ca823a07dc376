// The Clerk session on the console's pages. The gateway reads the session token from the __session
// cookie, and that token lives 60 seconds: this keeps it fresh while a page is open.
//  - Production: Clerk's frontend script (loaded by the page) refreshes the cookie itself.
//  - Development: the sandbox's Clerk stand-in hands out a fresh token for the browser's session at
//    <frontend api>/v1/client/token, and this script writes the cookie, as Clerk's script does.
const root = document.documentElement;
const frontendApi = root.dataset.frontendApi;
const clerkJs = root.hasAttribute("data-clerk-js");
const REFRESH_EVERY_MS = 30_000;
const FRESH_FOR_MS = 40_000;
let refreshedAt = 0;

function writeCookie(token) {
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `__session=${token}; Path=/; SameSite=Lax${secure}`;
}

async function clerk() {
  while (!window.Clerk) await new Promise((resolve) => setTimeout(resolve, 50));
  await window.Clerk.load();
  return window.Clerk;
}

async function refreshFromClerk() {
  const instance = await clerk();
  if (!instance.session) return false;
  await instance.session.getToken();
  return true;
}

async function refreshFromStandIn() {
  const reply = await fetch(`${frontendApi}/v1/client/token`, { method: "POST", credentials: "include" });
  if (!reply.ok) return false;
  writeCookie((await reply.json()).jwt);
  return true;
}

/** A fresh session token in the cookie; false when the person is signed out. */
export async function refresh() {
  try {
    const ok = await (clerkJs ? refreshFromClerk() : refreshFromStandIn());
    if (ok) refreshedAt = Date.now();
    return ok;
  } catch {
    return false;
  }
}

/** Refresh unless the token is recent enough for the next request. */
export async function ensureFresh() {
  return Date.now() - refreshedAt < FRESH_FOR_MS ? true : refresh();
}

export async function signOut() {
  try {
    if (clerkJs) await (await clerk()).signOut();
    else await fetch(`${frontendApi}/v1/client/sign-out`, { method: "POST", credentials: "include" });
  } catch {
    // The server forgets the cookie all the same.
  }
}

export function signInAgain() {
  location.assign(`/sign-in?next=${encodeURIComponent(location.pathname + location.search)}`);
}

/** Keep the cookie fresh while the page is open, and before any form is sent. */
export function keepFresh() {
  refresh();
  setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_EVERY_MS);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) ensureFresh(); });
  const resending = new WeakSet();
  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (form.hasAttribute("data-sign-out") || resending.has(form) || Date.now() - refreshedAt < FRESH_FOR_MS) return;
    event.preventDefault();
    await refresh();
    resending.add(form);
    form.requestSubmit(event.submitter || undefined);
    resending.delete(form);
  });
  for (const form of document.querySelectorAll("form[data-sign-out]")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      await signOut();
      form.submit();
    });
  }
}

/** The sign-in page: back where the person was if their session is alive, else on to Clerk's sign-in. */
export async function handshake(section) {
  const tries = Number(sessionStorage.getItem("cp-sign-in-tries") || "0");
  if (tries >= 2) {
    // The token was refreshed but the page still sent us here: show it rather than loop.
    sessionStorage.removeItem("cp-sign-in-tries");
    section.querySelector('[data-state="checking"]').hidden = true;
    section.querySelector('[data-state="failed"]').hidden = false;
    return;
  }
  if (await refresh()) {
    sessionStorage.setItem("cp-sign-in-tries", String(tries + 1));
    location.replace(section.dataset.next);
  } else {
    sessionStorage.removeItem("cp-sign-in-tries");
    location.replace(section.dataset.signInHref);
  }
}

export function signedIn() {
  sessionStorage.removeItem("cp-sign-in-tries");
}
