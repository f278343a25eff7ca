"""Read the Tennessee Eastman benchmark files (Braatz's d00..d21.dat) as DataFrames, from where they lie."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

ENV = "FACTORY_COPILOT_TEP"  # the folder holding d00.dat..d21.dat, where `evaluate --tep` is not given
HOW = f"pass --tep DIR or set {ENV} to the folder holding the Tennessee Eastman set (d00.dat..d21.dat)"
# faults whose effect on the measurements is known to be nearly invisible
INVISIBLE_FAULTS = (3, 9, 15)
COLUMNS = [f"xmeas_{i}" for i in range(1, 42)] + [f"xmv_{i}" for i in range(1, 12)]


def folder(given: str | Path | None = None) -> Path | None:
    """The TEP folder: the one given, else ``$FACTORY_COPILOT_TEP``, else none (the data is no part of the product)."""
    chosen = given if given is not None else os.environ.get(ENV) or None
    return Path(chosen) if chosen is not None else None


def _read(path: Path) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"{path}: TEP file missing; {HOW}")
    return np.loadtxt(path)


def load_normal(tep_dir: str | Path) -> pd.DataFrame:
    """d00.dat: 500 normal samples at 3-minute intervals (the file is stored transposed, 52 x 500)."""
    data = _read(Path(tep_dir) / "d00.dat")
    if data.shape[0] == len(COLUMNS):
        data = data.T
    return pd.DataFrame(data, columns=COLUMNS)


def load_fault(fault: int, tep_dir: str | Path) -> pd.DataFrame:
    """dNN.dat: 480 samples, every one after the fault's onset."""
    data = _read(Path(tep_dir) / f"d{fault:02d}.dat")
    if data.shape[1] != len(COLUMNS):
        data = data.T
    return pd.DataFrame(data, columns=COLUMNS)


def available(tep_dir: str | Path | None) -> bool:
    return tep_dir is not None and (Path(tep_dir) / "d00.dat").exists()


def load_all(tep_dir: str | Path, faults: range | list[int] = range(1, 22)) -> tuple[pd.DataFrame, dict[int, pd.DataFrame]]:
    return load_normal(tep_dir), {f: load_fault(f, tep_dir) for f in faults}
