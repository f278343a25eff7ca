"""The fault an alarm names: what it keeps of the classifier's guess, and when it takes another name.

A fault name that cannot explain the alarm's asset (a pump fault for the conveyor that feeds the pump) is the
classifier's guess, not the alarm's: kept as unknown. An alarm takes its first name at once; another only once
the classifier named it for ``rename_after_s`` of data time, and a fault of the alarm's own asset is never
replaced by a guess upstream; an evaluation naming nothing never takes a name away.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from factory_copilot.alarms import grouping
from factory_copilot.catalogue import Fault
from factory_copilot.config import LineConfig
from factory_copilot.names import UNKNOWN
from factory_copilot.records import Anomaly


class Naming:
    """The naming rules of one line, and each alarm's pending rename (by alarm id: this part's state alone)."""

    def __init__(self, line: LineConfig, faults: Mapping[str, Fault], rename_after_s: float):
        self.line, self.faults, self.rename_after_s = line, faults, rename_after_s
        self._rename: dict[str, tuple[str, float]] = {}  # alarm id -> (another fault the classifier names, since)

    def fitting(self, anomaly: Anomaly) -> Anomaly:
        """The anomaly as its alarm keeps it: a name that cannot explain this asset is kept as unknown."""
        if grouping.fault_name(self.line, self.faults, anomaly) is None and anomaly.fault_type not in (None, UNKNOWN):
            return dataclasses.replace(anomaly, fault_type=UNKNOWN, fault_probability=0.0)
        return anomaly

    def follow(self, alarm_id: str, kept: Anomaly, anomaly: Anomaly,
               t: float) -> tuple[Anomaly, tuple[str | None, str] | None]:
        """Another evaluation ``anomaly`` (data time ``t``) of an alarm that keeps ``kept``: (the anomaly it keeps
        now, (the name before, the new name) if it takes another)."""
        before = grouping.fault_name(self.line, self.faults, kept)
        fresh = self.fitting(anomaly)
        named = self._new_name(alarm_id, kept, fresh, before, t)
        if named is None and before is not None:
            # the alarm keeps its name: an evaluation naming nothing never takes it away, another must hold first
            fresh = dataclasses.replace(fresh, fault_type=kept.fault_type, fault_probability=kept.fault_probability)
        return fresh, (None if named is None else (before, named))

    def _new_name(self, alarm_id: str, kept: Anomaly, fresh: Anomaly, before: str | None, t: float) -> str | None:
        """The fault name the alarm takes now, if it changes: a first name at once, another once it held."""
        named = grouping.fault_name(self.line, self.faults, fresh)
        if named is None or named == before:
            if named == before and self._rename:
                self._rename.pop(alarm_id, None)
            return None
        if before is None:
            return named
        if (grouping.fault_at_home(self.line, self.faults, kept) is not None
                and grouping.fault_at_home(self.line, self.faults, fresh) is None):
            return None  # a fault of this asset is not replaced by a guess upstream
        rename = self._rename.get(alarm_id)
        if rename is None or rename[0] != named:
            rename = self._rename[alarm_id] = (named, t)
        if t - rename[1] < self.rename_after_s:
            return None
        del self._rename[alarm_id]
        return named
