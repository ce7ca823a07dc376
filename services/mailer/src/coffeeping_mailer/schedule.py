"""When each email of a sequence is due: ISO 8601 delays, business days, send windows, time zones.

Days are counted in the sequence's time zone on the wall clock (so ``P1D`` across a daylight-saving
change lands at the same local time), hours, minutes and seconds as elapsed time. A send window moves
a time outside it to the next window opening; with business days, Saturdays and Sundays are skipped.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC = dt.UTC
_DURATION = re.compile(
    r"^P(?!$)(?:(?P<w>\d{1,4})W)?(?:(?P<d>\d{1,4})D)?"
    r"(?:T(?=\d)(?:(?P<h>\d{1,5})H)?(?:(?P<m>\d{1,6})M)?(?:(?P<s>\d{1,8})S)?)?$"
)
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
MAX_DELAY = dt.timedelta(days=366)


@dataclass(frozen=True)
class Delay:
    days: int
    seconds: int

    @property
    def total(self) -> dt.timedelta:
        return dt.timedelta(days=self.days, seconds=self.seconds)


def parse_delay(text: str) -> Delay:
    """``P3D``, ``PT10S``, ``P1DT2H``, ``P2W``; months and years are refused (their length varies)."""
    if not isinstance(text, str):
        raise ValueError("must be an ISO 8601 duration such as P3D or PT10S")
    match = _DURATION.match(text.strip().upper())
    if not match or text.strip().upper().endswith("T"):
        raise ValueError("must be an ISO 8601 duration in weeks, days, hours, minutes or seconds (P3D, PT10S)")
    parts = {k: int(v) for k, v in match.groupdict().items() if v}
    delay = Delay(parts.get("w", 0) * 7 + parts.get("d", 0),
                  parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0))
    if delay.total <= dt.timedelta(0):
        raise ValueError("must be longer than zero")
    if delay.total > MAX_DELAY:
        raise ValueError("must be at most a year")
    return delay


def parse_zone(name: str) -> ZoneInfo:
    if (not isinstance(name, str) or len(name) > 64
            or not re.fullmatch(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+){0,2}", name)):
        raise ValueError("must be an IANA time zone such as Europe/Paris")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder such as "Europe"
        raise ValueError("must be an IANA time zone such as Europe/Paris") from None


def parse_clock(text: str) -> dt.time:
    match = _CLOCK.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError("must be a time of day HH:MM")
    return dt.time(int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True)
class Rules:
    zone: ZoneInfo
    business_days: bool = False
    window_start: dt.time | None = None
    window_end: dt.time | None = None


def _local(date: dt.date, clock: dt.time, zone: ZoneInfo) -> dt.datetime:
    """The instant of a local wall-clock time; a time skipped by a DST jump moves forward past the gap."""
    naive = dt.datetime.combine(date, clock)
    aware = naive.replace(tzinfo=zone)
    # Round-trip through UTC: a nonexistent local time comes back shifted by the gap.
    return aware.astimezone(UTC).astimezone(zone)


def _is_weekend(day: dt.date) -> bool:
    return day.weekday() >= 5


def add_business_days(day: dt.date, count: int) -> dt.date:
    while _is_weekend(day):
        day += dt.timedelta(days=1)
    while count > 0:
        day += dt.timedelta(days=1)
        if not _is_weekend(day):
            count -= 1
    return day


def fit_window(when: dt.datetime, rules: Rules) -> dt.datetime:
    """``when`` itself if it is allowed, else the next opening of the window (on a business day)."""
    local = when.astimezone(rules.zone)
    for _ in range(15):
        day = local.date()
        open_day = not (rules.business_days and _is_weekend(day))
        if rules.window_start is None or rules.window_end is None:
            if open_day:
                return local.astimezone(UTC)
            local = _local(day + dt.timedelta(days=1), dt.time(0, 0), rules.zone)
            continue
        start = _local(day, rules.window_start, rules.zone)
        end = _local(day, rules.window_end, rules.zone)
        if open_day and start <= local < end:
            return local.astimezone(UTC)
        if open_day and local < start:
            return start.astimezone(UTC)
        local = _local(day + dt.timedelta(days=1), rules.window_start, rules.zone)
    return local.astimezone(UTC)


def next_due(previous: dt.datetime, delay: Delay, rules: Rules) -> dt.datetime:
    """When an email ``delay`` after one sent at ``previous`` is due."""
    local = previous.astimezone(rules.zone)
    if delay.days:
        if rules.business_days:
            day = add_business_days(local.date(), delay.days)
        else:
            day = local.date() + dt.timedelta(days=delay.days)
        local = _local(day, local.timetz().replace(tzinfo=None), rules.zone)
    when = local.astimezone(UTC) + dt.timedelta(seconds=delay.seconds)
    return fit_window(when, rules)
