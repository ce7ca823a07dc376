// Times come from the server in UTC; shown in the reader's own time zone.
const format = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function localTimes(scope = document) {
  for (const element of scope.querySelectorAll("time[data-local]")) {
    const moment = new Date(element.getAttribute("datetime"));
    if (!Number.isNaN(moment.getTime())) element.textContent = format.format(moment);
  }
}

export function timeZoneNote() {
  const note = document.querySelector("[data-time-zone-note]");
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  if (note && zone) note.textContent = `Times are shown in your time zone, ${zone}.`;
}
