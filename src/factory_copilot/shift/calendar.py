"""The line's shifts in the plant's local time: which shift runs at a moment, and where each one begins and ends.

A shift starts at its ``start`` (HH:MM in the line's ``timezone``) and ends where the next shift of the day
starts; a shift whose next start is earlier in the day (a night shift) ends on the following day. A shift
is named by its start date and name, ``2026-12-03/early``. Times are epoch seconds (UTC); daylight saving
is the zone's own (zoneinfo).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

from factory_copilot.config import LineConfig, Shift
from factory_copilot.errors import GiveUp


@dataclass(frozen=True, slots=True)
class ShiftWindow:
    name: str
    date: str  # the local date the shift starts on, YYYY-MM-DD
    start: float
    end: float

    @property
    def handover_id(self) -> str:
        return f"{self.date}/{self.name}"


def zone(name: str) -> dt.tzinfo:
    """The line's time zone; UTC needs no zone database (a machine without tzdata still has it)."""
    return dt.timezone.utc if name == "UTC" else zoneinfo.ZoneInfo(name)


class NoShifts(GiveUp, ValueError):
    """The line file names no shifts."""


def _day(line: LineConfig) -> list[Shift]:
    if not line.shifts:
        raise NoShifts(f"{line.path or 'the line file'}: names no shifts; add 'shifts: [{{name: early, start: "
                       "\"06:00\"}, ...]' (and 'timezone:') to write handovers")
    return sorted(line.shifts, key=lambda s: s.minute_of_day)


def _at(date: dt.date, shift: Shift, tz: dt.tzinfo) -> float:
    hours, minutes = divmod(shift.minute_of_day, 60)
    return dt.datetime(date.year, date.month, date.day, hours, minutes, tzinfo=tz).timestamp()


def shift_window(line: LineConfig, name: str, date: str | dt.date) -> ShiftWindow:
    """The shift ``name`` that starts on local ``date`` (YYYY-MM-DD)."""
    day = _day(line)
    tz = zone(line.timezone)
    if isinstance(date, str):
        try:
            date = dt.date.fromisoformat(date)
        except ValueError:
            raise ValueError(f"date {date!r}: write it as YYYY-MM-DD") from None
    names = [s.name for s in day]
    if name not in names:
        raise ValueError(f"shift {name!r}: the line's shifts are {', '.join(names)}")
    i = names.index(name)
    start = _at(date, day[i], tz)
    if i + 1 < len(day):
        end = _at(date, day[i + 1], tz)
    else:
        end = _at(date + dt.timedelta(days=1), day[0], tz)
    return ShiftWindow(name, date.isoformat(), start, end)


def shift_at(line: LineConfig, ts: float) -> ShiftWindow:
    """The shift running at ``ts``."""
    day = _day(line)
    local = dt.datetime.fromtimestamp(ts, zone(line.timezone)).date()
    for date in (local, local - dt.timedelta(days=1)):
        for s in reversed(day):
            w = shift_window(line, s.name, date)
            if w.start <= ts < w.end:
                return w
    raise AssertionError(f"no shift of {[s.name for s in day]} runs at {ts}")  # the shifts cover the whole day


def previous(line: LineConfig, window: ShiftWindow) -> ShiftWindow:
    """The shift that ended when ``window`` began."""
    return shift_at(line, window.start - 1e-3)


def last_completed(line: LineConfig, ts: float) -> ShiftWindow:
    """The newest shift that has ended at ``ts``."""
    return previous(line, shift_at(line, ts))


def named_or_last(line: LineConfig, shift: str | None, date: str | None, now: float) -> ShiftWindow:
    """The shift options name: name and date, that one; a name only, its newest ended run; none, the newest ended."""
    if date and not shift:
        raise ValueError("a date needs a shift name: which shift of that day")
    if shift and date:
        return shift_window(line, shift, date)
    window = last_completed(line, now)
    if shift:
        shift_window(line, shift, window.date)  # a shift of the line, or the error says which there are
        while window.name != shift:
            window = previous(line, window)
    return window
