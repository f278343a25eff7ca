"""History files' shared reading rules (docs/history.md): a ``ts`` column in seconds, and which labels are normal.

Train, evaluate and replay all read recordings; these rules live once so the three agree on every file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# a label column: these (case-insensitive, stripped) or a missing value mean a healthy row, anything else a fault
NORMAL_LABELS = frozenset({"normal", "0", "0.0", "false", "", "nan", "none", "ok"})

_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def epoch_seconds(ts: pd.Series, where: str = "ts") -> np.ndarray:
    """A ``ts`` column as float seconds since the epoch (UTC), or ValueError naming ``where`` and a bad value.

    Numbers are epoch seconds; text is an ISO 8601 date-time, with ``Z``, with an offset, or naive (read as
    UTC). Differences of timezone-aware times, never ``astype("int64")``: pandas 3 keeps date-times in
    microseconds where pandas 2 used nanoseconds, and a hard-coded unit divides every time by 1,000.
    """
    if pd.api.types.is_numeric_dtype(ts):
        return ts.to_numpy(dtype=float)
    if pd.api.types.is_datetime64_any_dtype(ts):  # a Parquet timestamp column
        stamps = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
        return ((stamps - _EPOCH) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)
    numbers = pd.to_numeric(ts, errors="coerce")
    if numbers.notna().sum() == ts.notna().sum():  # numbers stored as text (an all-text column, a JSON string)
        return numbers.to_numpy(dtype=float)
    try:
        stamps = pd.to_datetime(ts, utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        bad = next((v for v in ts.dropna() if _not_a_time(v)), None)
        raise ValueError(f"{where}: {bad!r} is neither seconds since the epoch nor an ISO 8601 date-time "
                         f"({exc})") from None
    return ((stamps - _EPOCH) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)


def _not_a_time(value) -> bool:
    try:
        pd.to_datetime(pd.Series([value]), utc=True, format="ISO8601")
        return False
    except (ValueError, TypeError):
        return True


def fault_rows(labels: pd.Series) -> np.ndarray:
    """True where a label column marks a fault: anything but normal, 0, false, empty or missing."""
    text = labels.astype(str).str.strip().str.lower()
    return (~text.isin(NORMAL_LABELS) & labels.notna()).to_numpy()
