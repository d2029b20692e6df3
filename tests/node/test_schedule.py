from datetime import datetime, timezone

import pytest

from node.schedule import Schedule

# 2024-01-01 is a Monday.
MON, TUE, WED, FRI, SAT, SUN = 1, 2, 3, 5, 6, 7


def at(day: int, hhmm: str) -> datetime:
    hour, minute = map(int, hhmm.split(":"))
    return datetime(2024, 1, day, hour, minute, tzinfo=timezone.utc)


def test_weekday_range_with_a_window_crossing_midnight_belongs_to_the_day_it_starts():
    schedule = Schedule.parse("mon-fri 22:00-07:00, sat-sun *")
    assert schedule.allows(at(MON, "22:00")) and schedule.allows(at(MON, "23:59"))
    assert schedule.allows(at(TUE, "03:00"))  # Monday night's window
    assert not schedule.allows(at(MON, "03:00"))  # Sunday night is covered by "sat-sun *" only until midnight
    assert not schedule.allows(at(TUE, "07:00")) and not schedule.allows(at(WED, "12:00"))
    assert schedule.allows(at(SAT, "06:59"))  # Friday night's window, and Saturday all day anyway
    assert schedule.allows(at(SAT, "12:00")) and schedule.allows(at(SUN, "23:59"))


def test_friday_night_window_reaches_into_saturday_but_not_friday_morning():
    schedule = Schedule.parse("fri 22:00-07:00")
    assert schedule.allows(at(SAT, "03:00"))
    assert not schedule.allows(at(FRI, "03:00"))
    assert not schedule.allows(at(SAT, "07:00"))


def test_day_lists_full_names_groups_and_several_windows():
    schedule = Schedule.parse("Mon,wednesday 9-12 14:30-24:00, weekends")
    assert schedule.allows(at(MON, "09:00")) and schedule.allows(at(WED, "23:59"))
    assert not schedule.allows(at(MON, "12:00")) and not schedule.allows(at(TUE, "10:00"))
    assert schedule.allows(at(SUN, "05:00"))


def test_star_and_window_without_days_mean_every_day():
    assert all(Schedule.parse("*").allows(at(day, "04:00")) for day in range(1, 8))
    nightly = Schedule.parse("23:00-06:00")
    assert nightly.allows(at(WED, "01:00")) and not nightly.allows(at(WED, "12:00"))


def test_wrapping_day_range():
    schedule = Schedule.parse("fri-mon *")
    assert [schedule.allows(at(day, "12:00")) for day in range(1, 8)] == [True, False, False, False, True, True, True]


def test_next_change():
    schedule = Schedule.parse("mon-fri 22:00-07:00, sat-sun *")
    assert schedule.next_change(at(MON, "12:00")) == at(MON, "22:00")
    assert schedule.next_change(at(MON, "23:00")) == at(TUE, "07:00")
    assert schedule.next_change(at(SAT, "12:00")) == at(8, "00:00")  # Monday 00:00 until 22:00 is off
    assert Schedule.parse("*").next_change(at(MON, "12:00")) is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("funday *", "'funday' is not a day"),
        ("mon 25:00-26:00", "'25:00' is not a time of day"),
        ("mon 10:61-11:00", "not a time of day"),
        ("mon 10:00", "without an end"),
        ("mon 10-10", "is empty"),
        ("mon 10-12 tue", "expected ','"),
        ("mon-", "expected a day after '-'"),
        ("mon; 10-12", "unexpected ';"),
    ],
)
def test_bad_syntax_is_explained(text, message):
    with pytest.raises(ValueError, match="schedule") as error:
        Schedule.parse(text)
    assert message in str(error.value)
