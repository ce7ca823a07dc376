"""When follow-ups are due: ISO 8601 delays, business days, send windows and daylight-saving changes."""

from __future__ import annotations

import datetime as dt

import pytest

from coffeeping_mailer.schedule import Rules, fit_window, next_due, parse_clock, parse_delay, parse_zone

NY = parse_zone("America/New_York")
PARIS = parse_zone("Europe/Paris")
WINDOW = {"window_start": parse_clock("09:00"), "window_end": parse_clock("17:00")}


def local(zone, *args):
    return dt.datetime(*args, tzinfo=zone)


def test_a_day_delay_across_spring_forward_keeps_the_local_time():
    sent = local(NY, 2026, 3, 7, 10, 0)  # Saturday before the change (8 March 2026)
    due = next_due(sent, parse_delay("P1D"), Rules(NY))
    assert due.astimezone(NY) == local(NY, 2026, 3, 8, 10, 0)
    assert due - sent == dt.timedelta(hours=23)


def test_a_day_delay_across_fall_back_keeps_the_local_time():
    sent = local(PARIS, 2026, 10, 24, 9, 30)
    due = next_due(sent, parse_delay("P1D"), Rules(PARIS))
    assert due.astimezone(PARIS) == local(PARIS, 2026, 10, 25, 9, 30)
    assert due - sent == dt.timedelta(hours=25)


def test_hours_are_elapsed_time_across_a_dst_change():
    sent = local(NY, 2026, 3, 8, 1, 0)
    due = next_due(sent, parse_delay("PT2H"), Rules(NY))
    assert due - sent == dt.timedelta(hours=2)
    assert due.astimezone(NY).hour == 4  # 02:00-03:00 does not exist that night


def test_a_window_opening_skipped_by_dst_moves_past_the_gap():
    rules = Rules(NY, window_start=parse_clock("02:30"), window_end=parse_clock("05:00"))
    due = fit_window(local(NY, 2026, 3, 8, 1, 0), rules)
    assert due.astimezone(NY) == local(NY, 2026, 3, 8, 3, 30)


def test_business_days_skip_the_weekend():
    friday = local(NY, 2026, 12, 4, 15, 0)
    assert next_due(friday, parse_delay("P1D"), Rules(NY, business_days=True)).astimezone(NY) == \
        local(NY, 2026, 12, 7, 15, 0)
    assert next_due(friday, parse_delay("P3D"), Rules(NY, business_days=True)).astimezone(NY) == \
        local(NY, 2026, 12, 9, 15, 0)
    assert next_due(friday, parse_delay("P3D"), Rules(NY)).astimezone(NY) == local(NY, 2026, 12, 7, 15, 0)


def test_a_business_day_delay_from_a_weekend_counts_from_monday():
    saturday = local(NY, 2026, 12, 5, 10, 0)
    assert next_due(saturday, parse_delay("P1D"), Rules(NY, business_days=True)).astimezone(NY) == \
        local(NY, 2026, 12, 8, 10, 0)


def test_a_time_after_the_window_moves_to_the_next_opening():
    rules = Rules(NY, **WINDOW)
    due = next_due(local(NY, 2026, 12, 2, 16, 59, 55), parse_delay("PT10S"), rules)
    assert due.astimezone(NY) == local(NY, 2026, 12, 3, 9, 0)


def test_a_time_before_the_window_waits_for_it_and_inside_it_stays():
    rules = Rules(NY, **WINDOW)
    assert fit_window(local(NY, 2026, 12, 2, 7, 0), rules).astimezone(NY) == local(NY, 2026, 12, 2, 9, 0)
    assert fit_window(local(NY, 2026, 12, 2, 12, 0), rules).astimezone(NY) == local(NY, 2026, 12, 2, 12, 0)


def test_window_with_business_days_skips_to_monday_morning():
    rules = Rules(NY, business_days=True, **WINDOW)
    due = next_due(local(NY, 2026, 12, 4, 16, 0), parse_delay("PT2H"), rules)  # Friday 18:00 -> Monday 09:00
    assert due.astimezone(NY) == local(NY, 2026, 12, 7, 9, 0)


def test_window_is_evaluated_in_the_sequence_time_zone_not_utc():
    rules = Rules(PARIS, **WINDOW)
    utc_evening = dt.datetime(2026, 7, 1, 16, 30, tzinfo=dt.UTC)  # 18:30 in Paris (CEST)
    assert fit_window(utc_evening, rules) == dt.datetime(2026, 7, 2, 7, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize("text, seconds", [("PT10S", 10), ("PT5M", 300), ("P3D", 3 * 86400), ("P1W", 7 * 86400),
                                           ("P1DT2H", 86400 + 7200), ("pt5s", 5)])
def test_iso_durations_are_understood(text, seconds):
    assert parse_delay(text).total.total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "P", "PT", "P1M", "P1Y", "-P1D", "P0D", "PT0S", "3d", "P9999D", None, 5])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        parse_delay(text)


@pytest.mark.parametrize("name", ["Europe", "America", "Mars/Olympus", "../../etc/passwd", "A" * 300, "Europe/" + "x" * 250])
def test_a_time_zone_that_is_not_one_is_a_value_error(name):
    with pytest.raises(ValueError, match="IANA time zone"):
        parse_zone(name)
