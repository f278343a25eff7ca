"""Read the Tennessee Eastman benchmark files (Braatz's d00..d21.dat, and the test set d00_te..d21_te.dat) as DataFrames.

The training files: d00.dat holds 500 normal samples, dNN.dat 480 samples all after fault NN's onset. The test
files: 960 samples each at 3-minute intervals (48 h), the fault introduced after sample ``FAULT_ONSET_TEST``
(rows 160..959 faulty; d00_te.dat normal throughout). Both lie where the user keeps them: no part of the product.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

ENV = "FACTORY_COPILOT_TEP"  # the folder holding d00.dat..d21.dat, where `evaluate --tep` is not given
HOW = f"pass --tep DIR or set {ENV} to the folder holding the Tennessee Eastman set (d00.dat..d21.dat)"
HOW_TEST = ("pass --tep-test DIR, the folder holding the Tennessee Eastman test set (d00_te.dat..d21_te.dat, "
            "e.g. from github.com/camaramm/tennessee-eastman-profBraatz), or place it beside d00.dat")
# the test files' fault is introduced after this many samples (8 h at 3 minutes): rows from here on are faulty
FAULT_ONSET_TEST = 160
# faults whose effect on the measurements is known to be nearly invisible
INVISIBLE_FAULTS = (3, 9, 15)
COLUMNS = [f"xmeas_{i}" for i in range(1, 42)] + [f"xmv_{i}" for i in range(1, 12)]


def folder(given: str | Path | None = None) -> Path | None:
    """The TEP folder: the one given, else ``$FACTORY_COPILOT_TEP``, else none (the data is no part of the product)."""
    chosen = given if given is not None else os.environ.get(ENV) or None
    return Path(chosen) if chosen is not None else None


def _read(path: Path, how: str = HOW) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"{path}: TEP file missing; {how}")
    return np.loadtxt(path, ndmin=2)


def _rows_by_signal(data: np.ndarray, path: Path) -> np.ndarray:
    """Samples as rows, one column per signal, whichever way the file stores them."""
    if data.shape[1] != len(COLUMNS) and data.shape[0] == len(COLUMNS):
        data = data.T
    if data.shape[1] != len(COLUMNS):
        raise ValueError(f"{path}: {data.shape[0]} x {data.shape[1]} values, not {len(COLUMNS)} signals per sample")
    return data


def load_normal(tep_dir: str | Path) -> pd.DataFrame:
    """d00.dat: 500 normal samples at 3-minute intervals (the file is stored transposed, 52 x 500)."""
    path = Path(tep_dir) / "d00.dat"
    return pd.DataFrame(_rows_by_signal(_read(path), path), columns=COLUMNS)


def load_fault(fault: int, tep_dir: str | Path) -> pd.DataFrame:
    """dNN.dat: 480 samples, every one after the fault's onset."""
    path = Path(tep_dir) / f"d{fault:02d}.dat"
    return pd.DataFrame(_rows_by_signal(_read(path), path), columns=COLUMNS)


def load_test(fault: int, tep_dir: str | Path) -> pd.DataFrame:
    """dNN_te.dat: 960 samples, the fault (none for d00_te) from row ``FAULT_ONSET_TEST`` on."""
    path = Path(tep_dir) / f"d{fault:02d}_te.dat"
    return pd.DataFrame(_rows_by_signal(_read(path, HOW_TEST), path), columns=COLUMNS)


def has_test_set(tep_dir: str | Path | None) -> bool:
    """Whether the folder holds the test set (d00_te.dat, and d01_te.dat: the first fault it is scored on)."""
    return tep_dir is not None and all((Path(tep_dir) / f"d{f:02d}_te.dat").exists() for f in (0, 1))



def available(tep_dir: str | Path | None) -> bool:
    return tep_dir is not None and (Path(tep_dir) / "d00.dat").exists()


def load_all(tep_dir: str | Path, faults: range | list[int] = range(1, 22)) -> tuple[pd.DataFrame, dict[int, pd.DataFrame]]:
    return load_normal(tep_dir), {f: load_fault(f, tep_dir) for f in faults}
