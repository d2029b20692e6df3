"""Weekly schedule windows: "mon-fri 22:00-07:00, sat-sun *".

Grammar (case-insensitive, whitespace-tolerant):

    schedule := clause ("," clause)*
    clause   := [days] [window+]        (no days: every day; no window: all day)
    days     := day-item ("," day-item)*
    day-item := DAY | DAY "-" DAY       (mon … sun, full names, or daily / weekdays / weekends)
    window   := "*" | TIME "-" TIME     (TIME: 7, 07, 7:30, 22:00; 24:00 as an end)

A comma followed by a day name continues the day list until the clause has a window; after a window, a
comma starts a new clause. Clauses are OR'ed. A window that ends before it starts crosses midnight and
belongs to the day it starts on: "fri 22:00-07:00" includes Saturday 03:00, not Friday 03:00.
"""

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Optional

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
GROUPS = {"daily": frozenset(range(7)), "weekdays": frozenset(range(5)), "weekends": frozenset({5, 6})}
MINUTES_PER_DAY = 24 * 60
_TOKEN = re.compile(r"\s*(?:(?P<word>[a-z]+)|(?P<time>\d{1,2}(?::\d{2})?)|(?P<punct>[-,*]))", re.IGNORECASE)


@dataclass(frozen=True)
class Window:
    """Minutes [start, end) after midnight on each of `days` (0 = Monday); end < start crosses midnight."""

    days: frozenset
    start: int
    end: int

    def contains(self, weekday: int, minute: int) -> bool:
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        # crosses midnight: the evening part on the day itself, the morning part on the next day
        return (weekday in self.days and minute >= self.start) or ((weekday - 1) % 7 in self.days and minute < self.end)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, position, text = [], 0, text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise ValueError(f"schedule {text!r}: unexpected {text[position:].strip()[:12]!r}")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind).lower()))
        position = match.end()
        while position < len(text) and text[position].isspace():
            position += 1
    return tokens


def _day(word: str, text: str) -> int:
    if word in DAYS:
        return DAYS.index(word)
    if word in FULL_NAMES:
        return FULL_NAMES.index(word)
    raise ValueError(f"schedule {text!r}: {word!r} is not a day (use mon, tue, wed, thu, fri, sat, sun)")


def _minutes(value: str, text: str, end: bool) -> int:
    hours, _, minutes = value.partition(":")
    hours, minutes = int(hours), int(minutes or 0)
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not end)):
        raise ValueError(f"schedule {text!r}: {value!r} is not a time of day (00:00 to 23:59, or 24:00 as an end)")
    return hours * 60 + minutes


class _Parser:
    def __init__(self, text: str):
        self.text, self.tokens, self.position = text, _tokenize(text), 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        index = self.position + offset
        return self.tokens[index] if index < len(self.tokens) else ("end", "")

    def take(self) -> tuple[str, str]:
        token = self.peek()
        self.position += 1
        return token

    def fail(self, message: str) -> ValueError:
        return ValueError(f"schedule {self.text!r}: {message}")

    def parse(self) -> list[Window]:
        if not self.tokens:
            raise self.fail("empty; write e.g. 'mon-fri 22:00-07:00, sat-sun *'")
        windows = self.clause()
        while self.peek() != ("end", ""):
            if self.take() != ("punct", ","):
                raise self.fail(f"expected ',' between clauses, got {self.tokens[self.position - 1][1]!r}")
            windows += self.clause()
        return windows

    def clause(self) -> list[Window]:
        days = self.days() if self.peek()[0] == "word" else GROUPS["daily"]
        spans = []
        while self.peek()[0] == "time" or self.peek() == ("punct", "*"):
            spans.append(self.window())
        if not spans and days is GROUPS["daily"]:
            raise self.fail(f"expected days or a time window, got {self.peek()[1] or 'the end'!r}")
        return [Window(days, start, end) for start, end in spans or [(0, MINUTES_PER_DAY)]]

    def days(self) -> frozenset:
        days = set(self.day_item())
        while self.peek() == ("punct", ",") and self.peek(1)[0] == "word":
            self.take()
            days |= self.day_item()
        return frozenset(days)

    def day_item(self) -> frozenset:
        _, word = self.take()
        if word in GROUPS:
            return GROUPS[word]
        first = _day(word, self.text)
        if self.peek() != ("punct", "-"):
            return frozenset({first})
        self.take()
        kind, word = self.take()
        if kind != "word":
            raise self.fail(f"expected a day after '-', got {word or 'the end'!r}")
        last = _day(word, self.text)
        return frozenset((first + offset) % 7 for offset in range((last - first) % 7 + 1))  # fri-mon wraps

    def window(self) -> tuple[int, int]:
        kind, value = self.take()
        if kind == "punct":  # "*"
            return 0, MINUTES_PER_DAY
        if self.take() != ("punct", "-") or self.peek()[0] != "time":
            raise self.fail(f"a time window looks like 22:00-07:00, got {value!r} without an end")
        start, end = _minutes(value, self.text, end=False), _minutes(self.take()[1], self.text, end=True)
        if start == end:
            raise self.fail(f"window {value}-{self.tokens[self.position - 1][1]} is empty (use * for all day)")
        return start, end


class Schedule:
    """When computing is allowed, in the wall-clock time of the datetimes it is asked about."""

    def __init__(self, text: str, windows: list[Window]):
        self.text, self.windows = text, windows

    @classmethod
    def parse(cls, text: str) -> "Schedule":
        return cls(" ".join(text.split()), _Parser(text).parse())

    def __str__(self) -> str:
        return self.text

    def allows(self, moment: datetime) -> bool:
        minute = moment.hour * 60 + moment.minute
        return any(window.contains(moment.weekday(), minute) for window in self.windows)

    def next_change(self, moment: datetime) -> Optional[datetime]:
        """The first window edge after `moment` where `allows` flips; None when it never does."""
        current = self.allows(moment)
        midnight = datetime.combine(moment.date(), time(0), tzinfo=moment.tzinfo)
        edges = sorted({edge % MINUTES_PER_DAY for window in self.windows for edge in (window.start, window.end)})
        for day in range(8):
            for edge in edges:
                candidate = midnight + timedelta(days=day, minutes=edge)
                if candidate > moment and self.allows(candidate) != current:
                    return candidate
        return None
