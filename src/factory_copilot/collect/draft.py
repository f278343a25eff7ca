"""What a browsed line file proposes the same way whichever protocol it was browsed over: ids and bands."""

from __future__ import annotations

import math
import re


def ident(name: str) -> str:
    """A line-file id from a server's name: 'Pump 1/Flow' -> 'pump_1_flow'."""
    return re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_").lower() or "unnamed"


def proposed_band(value: float | None) -> tuple[float, float]:
    """+-10 % around the one value read while browsing (0, 0 when there was none): a placeholder to replace."""
    if value is None or not math.isfinite(value):
        return 0.0, 0.0
    margin = abs(value) * 0.1 or 1.0
    return round(value - margin, 6), round(value + margin, 6)
