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


def row_times(seconds: np.ndarray, interval: float) -> np.ndarray:
    """The time the detect station stamps each sample's row with: the start of its sampling interval.

    Evaluate's rows and replay's labelled events are timed so, as the alarms raised on those rows are.
    """
    return np.floor(np.asarray(seconds, dtype=float) / interval) * interval


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


def read_table(path, what: str = "history file"):
    """A history file as read (CSV, Parquet, JSON lines: the raw rows), or ValueError naming the file and why.

    Train, evaluate and replay all read files through here, so a file one accepts the others accept.
    """
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise ValueError(f"{what} {p} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(p)
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(p, lines=True)
        df = pd.read_csv(p)
        # a spreadsheet export with ';' or tabs between columns reads as one column: re-read with that separator
        if len(df.columns) == 1 and any(sep in str(df.columns[0]) for sep in (";", "\t")):
            df = pd.read_csv(p, sep=";" if ";" in str(df.columns[0]) else "\t")
        return df
    except Exception as exc:
        raise ValueError(f"cannot read {what} {p}: {exc}") from None


def fault_events(labels: pd.Series, ts: np.ndarray, interval: float) -> list[tuple[float, float, str]]:
    """Each labelled fault as (start, end, label): end is the first healthy row's time (or the last row's + interval).

    As evaluate counts them: a stretch of consecutive fault rows is one event, named by its first row.
    """
    truth = fault_rows(labels)
    text = labels.astype(str).to_numpy()
    out: list[tuple[float, float, str]] = []
    i = 0
    while i < len(truth):
        if not truth[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(truth) and truth[j + 1]:
            j += 1
        end = float(ts[j + 1]) if j + 1 < len(truth) else float(ts[j]) + interval
        out.append((float(ts[i]), end, str(text[i])))
        i = j + 1
    return out


def event_delay(start: float, end: float, alarm_times) -> float | None:
    """Seconds from an event's first labelled row to the first alarm raised while it is on ([start, end)), or None.

    Evaluate and replay both measure detection delays with this, from the same reference: the event's first row.
    """
    inside = [t for t in alarm_times if start <= t < end]
    return float(min(inside) - start) if inside else None
