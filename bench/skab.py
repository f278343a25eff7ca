"""SKAB, the Skoltech Anomaly Benchmark: a water-pump rig's labelled runs, read as its standard protocol says.

Katser & Kozitsin, "Skoltech Anomaly Benchmark (SKAB)", Kaggle 2020, doi:10.34740/KAGGLE/DSV/1693952;
data and leaderboard at https://github.com/waico/SKAB (data/valve1, data/valve2, data/other; 1 Hz, 8 sensors:
two accelerometers' RMS, motor current, pressure, water temperature, thermocouple, voltage, volume flow; column
``anomaly`` 1 on the rows of an induced fault). Standard protocol of the outlier leaderboard (core/ and the
notebooks): every run except ``anomaly-free`` is one case, its first 400 rows (all normal) fit the method and
the rest are scored; the figures are binary F1, FAR and MAR over all cases' scored rows pooled.

Published figures on that table (README "Proposed Leaderboard", outlier detection), F1 / FAR % / MAR %:
Conv-AE 0.78 / 13.55 / 28.02, MSET 0.78 / 39.73 / 14.13, T²+Q (PCA) 0.76 / 26.62 / 24.92, LSTM-AE 0.74 /
29.96 / 25.92, T² 0.66 / 19.21 / 42.6, IsolationForest 0.29 / 2.56 / 82.89.

``healthy_cases`` (not part of SKAB's protocol): the ``anomaly-free`` run (9,405 rows) cut as a labelled run is,
400 rows fit and the next 750 scored (about what a labelled run scores after its first 400), a window every 400
rows; every scored row is normal, so what is flagged there is the false-alarm rate alone, on a rig just met.

Getting the data (not part of this project): ``git clone https://github.com/waico/SKAB`` and pass its folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

TRAIN_ROWS = 400
HEALTHY_SCORED = 750  # rows scored after each fit window of the anomaly-free run
SIGNALS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
           "Voltage", "Volume Flow RateRMS"]
PUBLISHED = {  # F1, FAR, MAR (fractions) from the SKAB README's outlier leaderboard
    "Conv-AE": (0.78, 0.1355, 0.2802), "T2+Q (PCA)": (0.76, 0.2662, 0.2492), "LSTM-AE": (0.74, 0.2996, 0.2592),
    "IsolationForest": (0.29, 0.0256, 0.8289),
}


@dataclass
class Case:
    """One run of a benchmark's protocol: normal rows to fit on, rows to score, their labels (1 = fault)."""

    name: str
    train: pd.DataFrame
    test: pd.DataFrame
    labels: np.ndarray
    sampling_s: float


def cases(root: Path) -> list[Case]:
    """Every labelled run of a SKAB checkout at ``root`` (its ``data/`` folder), split as the protocol says."""
    data = Path(root) / "data"
    if not data.is_dir():
        raise SystemExit(f"{root}: no data/ folder; pass a checkout of https://github.com/waico/SKAB")
    out = []
    for folder in ("valve1", "valve2", "other"):
        files = sorted((data / folder).glob("*.csv"), key=lambda p: int(p.stem))
        for path in files:
            frame = _read(path)
            signals = frame[SIGNALS].astype(float).reset_index(drop=True)
            labels = frame["anomaly"].to_numpy().astype(int)
            out.append(Case(f"{folder}/{path.stem}", signals.iloc[:TRAIN_ROWS].reset_index(drop=True),
                            signals.iloc[TRAIN_ROWS:].reset_index(drop=True), labels[TRAIN_ROWS:], 1.0))
    return out


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep=";", index_col="datetime", parse_dates=True)


def healthy_cases(root: Path) -> list[Case]:
    """Windows of the anomaly-free run: TRAIN_ROWS fit, the next HEALTHY_SCORED scored (all normal)."""
    path = Path(root) / "data" / "anomaly-free" / "anomaly-free.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: not found; pass a checkout of https://github.com/waico/SKAB")
    signals = _read(path)[SIGNALS].astype(float).reset_index(drop=True)
    out = []
    for start in range(0, len(signals) - TRAIN_ROWS - HEALTHY_SCORED + 1, TRAIN_ROWS):
        fit = signals.iloc[start : start + TRAIN_ROWS].reset_index(drop=True)
        scored = signals.iloc[start + TRAIN_ROWS : start + TRAIN_ROWS + HEALTHY_SCORED].reset_index(drop=True)
        out.append(Case(f"anomaly-free@{start}", fit, scored, np.zeros(len(scored), dtype=int), 1.0))
    return out
