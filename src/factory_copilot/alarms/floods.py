"""Alarm floods (EEMUA 191): too many new alarms at one operator position within a window.

More than ``count`` new annunciated alarms within ``window_s`` at one position starts a flood named after the
first alarm of the window (its ``flood_id``); the flood ends when fewer than ``end_count`` remain in the window.
``Floods`` only counts and says what started or ended; the engine marks the alarms and emits the events. Times
are the engine's clock, passed in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Flood:
    raises: deque = field(default_factory=deque)  # (ts, alarm_id) of new annunciated alarms
    flood_id: str | None = None
    started_at: float | None = None


@dataclass(frozen=True, slots=True)
class Start:
    """A flood that just started: named after its first alarm, with the window's other earlier alarms."""

    position: str
    flood_id: str
    size: int  # new alarms in the window, the one that started it included
    members: tuple[str, ...]  # the alarms between the first and the one that started it


@dataclass(frozen=True, slots=True)
class End:
    position: str
    flood_id: str
    size: int  # new alarms left in the window


class Floods:
    """The floods of each operator position, counted on the engine's clock."""

    def __init__(self, count: int, window_s: float, end_count: int):
        self.count, self.window_s, self.end_count = count, window_s, end_count
        self._floods: dict[str, _Flood] = {}

    def current(self) -> dict[str, str]:
        """Operator position -> flood id of the floods in progress."""
        return {p: f.flood_id for p, f in self._floods.items() if f.flood_id}

    def raised(self, position: str, alarm_id: str, now: float) -> tuple[str | None, Start | None]:
        """A new annunciated alarm at ``position``: (the flood it belongs to or None, the flood it started or None)."""
        flood = self._floods.setdefault(position, _Flood())
        self._prune(flood, now)
        flood.raises.append((now, alarm_id))
        if flood.flood_id:
            return flood.flood_id, None
        if len(flood.raises) <= self.count:
            return None, None
        first_id = flood.raises[0][1]
        flood.flood_id, flood.started_at = first_id, now
        members = tuple(member_id for _, member_id in list(flood.raises)[1:-1])
        return first_id, Start(position, first_id, len(flood.raises), members)

    def ending(self, now: float) -> list[End]:
        """The floods over at ``now`` (each ended here: it is not in progress any more)."""
        ended = []
        for position, flood in self._floods.items():
            self._prune(flood, now)
            if flood.flood_id and len(flood.raises) < self.end_count:
                ended.append(End(position, flood.flood_id, len(flood.raises)))
                flood.flood_id = flood.started_at = None
        return ended

    def restore_raise(self, position: str, ts: float, alarm_id: str) -> None:
        """A new alarm of the window, as the journal kept it (a restarted engine counts it again)."""
        self._floods.setdefault(position, _Flood()).raises.append((ts, alarm_id))

    def restore(self, position: str, flood_id: str, started_at: float) -> None:
        """A flood in progress, as the journal kept it."""
        flood = self._floods.setdefault(position, _Flood())
        flood.flood_id, flood.started_at = flood_id, started_at

    def _prune(self, flood: _Flood, now: float) -> None:
        while flood.raises and flood.raises[0][0] <= now - self.window_s:
            flood.raises.popleft()
