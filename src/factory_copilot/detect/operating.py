"""Operating modes in history: which mode each row of a table is in, and how much normal history each mode or regime has.

The line file declares the modes (``LineConfig.modes``): a coded mode signal, or ranges of a load
signal. A history table names them in a ``mode`` column (names, or the mode signal's codes) or
carries the signal itself; both are read here, so training, evaluation and replay agree with the
live station about the mode of every row.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from factory_copilot.config import LineConfig


def row_modes(line: LineConfig, table: pd.DataFrame, column: str = "mode") -> np.ndarray | None:
    """The mode name of every row, or None for a line that declares no modes and a table without a mode column.

    A ``mode`` column may hold mode names or the mode signal's codes; without it the mode is read from
    the line's mode signal column as the station reads it live (ranges with their hysteresis).
    Raises ValueError naming the column and the first unknown value.
    """
    names = line.mode_names()
    if column in table.columns:
        raw = table[column]
        mapping = {}
        for v in pd.unique(raw):
            text = str(v).strip()
            mode = text if text in names else (line.mode_of(v) if line.modes and line.modes.codes is not None else None)
            if mode is None:
                row = int(np.flatnonzero((raw == v).to_numpy())[0]) if v == v else int(np.flatnonzero(raw.isna().to_numpy())[0])
                declared = ", ".join(names) if line.modes else "none (the line file has no 'modes:' section)"
                raise ValueError(f"history column {column!r}, row {row}: {v!r} is not a mode of the line (declared: {declared})")
            mapping[v] = mode
        return raw.map(mapping).to_numpy(dtype=object)
    if not line.modes:
        return None
    key = line.mode_key
    if key not in table.columns:
        raise ValueError(f"history has neither a {column!r} column nor the mode signal {key!r}: the mode of its rows is unknown")
    values = table[key].to_numpy(dtype=float)
    if line.modes.codes is not None:
        out = np.array([line.mode_of(v) for v in values], dtype=object)
        out = pd.Series(out).ffill().to_numpy(dtype=object)  # an unreadable code keeps the mode before it
    else:
        out = np.empty(len(table), dtype=object)
        current = None
        for i, v in enumerate(values):
            current = line.mode_of(v, current) or current
            out[i] = current
    # rows before the first readable value take the first mode read
    first = next((m for m in out if m is not None), line.production_mode)
    out[[i for i in range(len(out)) if out[i] is None]] = first
    return out


def regimes(line: LineConfig, table: pd.DataFrame) -> np.ndarray | None:
    """For lines told by load ranges: each row's regime, or ``between A and B`` off the declared ranges."""
    if not line.modes_by_range or line.mode_key not in table.columns:
        return None
    return np.array([line.modes.regime_of(v) for v in table[line.mode_key].to_numpy(dtype=float)], dtype=object)


def row_groups(line: LineConfig, table: pd.DataFrame, default: str) -> np.ndarray:
    """What the detector keeps a normal for, row by row: the load regime, else the mode, else ``default``."""
    groups = regimes(line, table)
    if groups is None:
        modes = row_modes(line, table)
        groups = modes if modes is not None else np.full(len(table), default, dtype=object)
    return groups


def untrained_rows(line: LineConfig, table: pd.DataFrame, trained: dict[str, int], default: str) -> dict[str, int]:
    """Rows of ``table`` per mode or regime that had no normal history in training (``trained``: rows per group)."""
    counts = pd.Series(row_groups(line, table, default)).astype(str).value_counts(sort=False)
    return {g: int(n) for g, n in counts.items() if not trained.get(g)}


def untrained_note(line: LineConfig, source: str, rows: int, untrained: dict[str, int]) -> str | None:
    """One line for a file whose rows sit in modes or regimes the model was not trained on, or None."""
    n = sum(untrained.values())
    if not rows or n < 0.1 * rows:
        return None
    names = sorted(untrained.items(), key=lambda kv: -kv[1])
    where = " and ".join(_describe(line, g) + ("" if len(names) == 1 else f" ({n_g} rows)") for g, n_g in names)
    how_many = f"all {rows} rows" if n == rows else f"{'most' if n > rows / 2 else 'some'} rows ({n} of {rows})"
    return (f"{source}: {how_many} are in {where}, "
            "which the model was not trained on: its figures there say little (train with normal history of it)")


def stretch_tails(labels: np.ndarray, run_ids: np.ndarray, share: float) -> np.ndarray:
    """The last ``share`` of every stretch of equal labels within a run (the held-out rows of each stretch)."""
    held = np.zeros(len(labels), dtype=bool)
    if not len(labels) or share <= 0:
        return held
    keys = np.array([f"{r}|{m}" for r, m in zip(run_ids, labels)], dtype=object)
    change = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    for a, b in zip(np.concatenate([[0], change]), np.concatenate([change, [len(keys)]])):
        k = int(math.floor((b - a) * share))
        if k > 0:
            held[b - k : b] = True
    return held


def duration(rows: int, interval_s: float, unit: str | None = None) -> str:
    """How long ``rows`` rows last: seconds to hours, or counted in the line's own ``unit`` (cycles) if it has one."""
    if unit:
        n = rows * interval_s
        return f"{n:g} {unit}" + ("" if n == 1 or unit.endswith("s") else "s")
    s = rows * interval_s
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _describe(line: LineConfig, name: str) -> str:
    """``mode running`` or ``regime day (header.flow 10-16 m3/min)``."""
    if line.modes_by_range:
        unit = line.signal(line.mode_key).unit
        if name in line.modes.ranges:
            lo, hi = line.modes.ranges[name]
            return f"regime {name} ({line.mode_key} {lo:g}-{hi:g} {unit})".rstrip()
        return f"{line.mode_key} {name}"
    if not line.modes:
        return "the line"  # a line without operating modes: there is no mode to name
    return f"mode {name}"


def coverage_report(line: LineConfig, calibration: dict, rows_by_group: dict[str, int]) -> list[str]:
    """One line per mode or regime: its normal history, and whether the false-alarm target could be checked there."""
    target = calibration["target"]
    interval = line.sampling_interval_s
    out = []
    groups = calibration.get("groups") or {}
    names = list(rows_by_group) + [n for n in line.mode_names() if n not in rows_by_group] if line.modes else list(rows_by_group)
    for name in names:
        rows = rows_by_group.get(name, 0)
        what = _describe(line, name)
        if not rows:
            out.append(f"{what}: no normal history; the detector has not seen it and will flag running there")
            continue
        g = groups.get(name) or calibration["modes"].get(name) or {}
        n = g.get("held_out", 0)
        head = f"{what}: {duration(rows, interval, line.time_unit)} of normal history"
        if not n:
            out.append(f"{head}; none held out (too short to spare): its false-alarm rate is not checked")
            continue
        rate = g["flagged"] / n
        head += f", {duration(n, interval, line.time_unit)} held out: false-alarm rate {rate:.1e} (target {target:.0e})"
        if rate > target and not g.get("missed"):
            head += f"; {g['episodes']} episode(s), within chance for this much history"
        if g.get("estimable"):
            out.append(head + ("; above the target" if g.get("missed") else "; the target holds there"))
        else:
            out.append(head + f"; too short to tell: the false-alarm rate there cannot be held below {g['shown_below']:.0e}")
    for signal in calibration.get("unjudged") or []:
        out.append(f"{signal}: off its usual value in too few healthy rows to learn its normal spread from, so the "
                   f"detector leaves it out; only the line file's limits for it apply")
    for signal, n_eff in (calibration.get("drifting") or {}).items():
        out.append(f"{signal}: moves slowly for this much history (about {n_eff:.0f} independent rows): judged by its "
                   f"departure from its level over the last {duration(calibration.get('level_rows', 0.0), interval, line.time_unit)}, "
                   f"so a change in it slower than that is not caught; more history lets it be judged on its level")
    asked, used = calibration.get("asked_smoothing"), calibration.get("smoothing")
    if asked and used and min(used) > min(asked):
        out.append(f"the slowest average is over {duration(1.0 / min(used), interval, line.time_unit)}, not "
                   f"{duration(1.0 / min(asked), interval, line.time_unit)}: {calibration.get('fit_rows', 0)} rows of "
                   f"history fit the model, too few to learn the spread of a slower one; a slow drift is caught later, "
                   f"and more history restores it")
    for mode, m in calibration["modes"].items():
        if m.get("factor", 1.0) > 1.0:
            scope = "the line's one normal" if mode == "all" else f"mode {mode}"
            out.append(f"{scope}: held-out false-alarm rate {m['flagged'] / m['held_out']:.1e} in {m['episodes']} episodes "
                       f"missed the target {target:.0e}: threshold widened x{m['factor']:.2f} "
                       f"(held-out rate now {m.get('rate_after', 0):.1e})")
    return out
