// The console's one script (ES modules, no build step). Nothing here is needed to read a page or send
// a form; it keeps the session fresh, refreshes lists in place, localises times and previews merges.
import { liveRegions } from "./live.js";
import { mergePreview } from "./preview.js";
import { handshake, keepFresh, signedIn } from "./session.js";
import { localTimes, timeZoneNote } from "./time.js";

const signIn = document.querySelector("[data-sign-in]");
if (signIn) {
  handshake(signIn);
} else if (!document.querySelector("[data-signed-out]")) {
  signedIn();
  keepFresh();
  localTimes();
  timeZoneNote();
  liveRegions();
  mergePreview();
}
