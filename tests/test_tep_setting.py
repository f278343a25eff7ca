"""The Tennessee Eastman folder is a setting (``evaluate --tep DIR`` / ``FACTORY_COPILOT_TEP``), never a build machine's path.

Before, ``detect/tep.py`` defaulted to an absolute path of one machine: on any other machine
``evaluate`` looked there and the product carried a test-data path.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from factory_copilot.cli import main
from factory_copilot.detect import tep

SRC = Path(__file__).resolve().parents[1] / "src" / "factory_copilot"


def test_no_machine_path_in_the_product():
    found = [f"{p.relative_to(SRC)}:{n}" for p in SRC.rglob("*.py")
             for n, text in enumerate(p.read_text().splitlines(), 1) if re.search(r"[\"']/(work|home|mnt|opt)/", text)]
    assert found == []


def test_the_folder_comes_from_the_option_else_the_environment_else_nowhere(monkeypatch, tmp_path):
    monkeypatch.delenv(tep.ENV, raising=False)
    assert tep.folder() is None and tep.folder(tmp_path) == tmp_path
    monkeypatch.setenv(tep.ENV, str(tmp_path / "site"))
    assert tep.folder() == tmp_path / "site" and tep.folder(tmp_path) == tmp_path


def test_evaluate_tep_without_a_folder_says_how_to_give_one(monkeypatch, capsys):
    monkeypatch.delenv(tep.ENV, raising=False)
    assert main(["evaluate", "--only", "tep"]) == 2
    err = capsys.readouterr().err
    assert "--tep DIR" in err and tep.ENV in err and "/work/" not in err


def test_evaluate_tep_with_a_folder_lacking_the_files_names_it(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(tep.ENV, raising=False)
    assert main(["evaluate", "--only", "tep", "--tep", str(tmp_path)]) == 2
    assert f"{tmp_path / 'd00.dat'}" in capsys.readouterr().err


def test_the_files_are_read_from_the_folder_given(tmp_path):
    rng = np.random.default_rng(0)
    np.savetxt(tmp_path / "d00.dat", rng.normal(size=(52, 500)))  # stored transposed, as Braatz's d00.dat
    np.savetxt(tmp_path / "d01.dat", rng.normal(size=(480, 52)))
    normal, faults = tep.load_all(tmp_path, faults=[1])
    assert tep.available(tmp_path) and normal.shape == (500, 52) and faults[1].shape == (480, 52)
