"""The line overview the dashboard shows: how each asset is doing right now, from the store's records."""

from __future__ import annotations

import time
from dataclasses import dataclass

from factory_copilot.config import LineConfig
from factory_copilot.records import Priority
from factory_copilot.store import Store

DAY = 86_400.0


@dataclass(slots=True)
class AssetHealth:
    """How one asset is doing right now, for the line overview (worst first)."""

    asset: str
    name: str
    status: str  # "alarm", "warning", "stale", "ok", "no data"
    worst_priority: Priority | None = None
    active_alarms: int = 0
    unacknowledged: int = 0
    shelved: int = 0
    anomalies: int = 0  # in the recent window
    peak_ratio: float = 0.0  # largest score/threshold among recent anomalies
    last_reading: float | None = None
    bad_quality_share: float = 0.0

    @property
    def rank(self) -> tuple:
        """Sort key: alarms first by priority, then unacknowledged, anomalies, staleness."""
        order = {"alarm": 0, "warning": 1, "stale": 2, "no data": 3, "ok": 4}
        return (
            order[self.status],
            int(self.worst_priority) if self.worst_priority else 9,
            -self.unacknowledged,
            -self.active_alarms,
            -self.peak_ratio,
            self.asset,
        )


def line_health(store: Store, line: LineConfig | None = None, now: float | None = None, window_s: float = 300.0,
                stale_s: float = 30.0) -> list[AssetHealth]:
    """Health of every asset, worst first: its active alarms, recent anomalies and data freshness."""
    now = time.time() if now is None else now
    names: dict[str, str] = {a.id: a.name for a in line.assets} if line is not None else {}
    health: dict[str, AssetHealth] = {a: AssetHealth(a, n, "no data") for a, n in names.items()}

    def of(asset: str) -> AssetHealth:
        if asset not in health:
            health[asset] = AssetHealth(asset, names.get(asset, asset), "no data")
        return health[asset]

    for alarm in store.active_alarms():
        h = of(alarm.asset)
        if alarm.shelved or alarm.out_of_service or alarm.suppressed:
            h.shelved += 1
            continue
        h.active_alarms += 1
        h.unacknowledged += not alarm.state.acknowledged
        if h.worst_priority is None or alarm.priority < h.worst_priority:
            h.worst_priority = alarm.priority
    for asset, (count, peak) in store.anomaly_summary(now - window_s).items():
        h = of(asset)
        h.anomalies, h.peak_ratio = count, peak
    for asset, share in store.quality_by_asset(now - window_s).items():
        of(asset).bad_quality_share = share
    for asset, last in store.last_reading_by_asset(now - 7 * DAY).items():
        of(asset).last_reading = last
    for h in health.values():
        if h.active_alarms:
            h.status = "alarm"
        elif h.anomalies or h.shelved or h.bad_quality_share > 0.2:
            h.status = "warning"
        elif h.last_reading is None:
            h.status = "no data"
        elif now - h.last_reading > stale_s:
            h.status = "stale"
        else:
            h.status = "ok"
    return sorted(health.values(), key=lambda h: h.rank)
