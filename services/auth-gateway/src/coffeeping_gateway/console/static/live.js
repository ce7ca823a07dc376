// Regions that refresh in place: an element with data-live="<fragment URL>" is fetched again every few
// seconds while the page is visible, and replaced when it changed (a reply shows without a reload).
// A fragment holding [data-live-done] is final: its region stops refreshing.
import { ensureFresh, refresh, signInAgain } from "./session.js";
import { localTimes } from "./time.js";

const DEFAULT_INTERVAL_MS = 3000;

async function load(url) {
  const request = () => fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
  await ensureFresh();
  let reply = await request();
  if (reply.status === 401 && await refresh()) reply = await request();
  return reply;
}

function follow(region) {
  const url = region.dataset.live;
  const every = Number(region.dataset.liveInterval || DEFAULT_INTERVAL_MS);
  let last = null; // the fragment as last fetched (the first fetch always replaces what the page was served with)
  const tick = async () => {
    if (document.hidden) return schedule();
    region.setAttribute("aria-busy", "true");
    try {
      const reply = await load(url);
      if (reply.status === 401) return signInAgain();
      if (reply.status === 410) return location.assign("/account/deletion");
      if (reply.ok) {
        const html = await reply.text();
        if (html !== last) {
          region.innerHTML = html;
          localTimes(region);
        }
        last = html;
        region.removeAttribute("data-stale");
      } else {
        region.setAttribute("data-stale", "");
      }
    } catch {
      region.setAttribute("data-stale", "");
    } finally {
      region.removeAttribute("aria-busy");
    }
    if (!region.querySelector("[data-live-done]")) schedule();
  };
  const schedule = () => setTimeout(tick, every);
  if (!region.querySelector("[data-live-done]")) schedule();
}

export function liveRegions() {
  for (const region of document.querySelectorAll("[data-live]")) follow(region);
}
