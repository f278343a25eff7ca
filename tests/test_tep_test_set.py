"""The Tennessee Eastman test set (dNN_te.dat) by the benchmark's standard protocol, beside the blocked CV.

The blocked CV inside the training files cannot reward a classifier that reads the course of the signals: each
fault has one run, its onset in the first block. The test files hold 160 normal rows, then the fault: fit on the
training files, score the rows from the onset on. CI has no TEP files, so these tests write small ones in
Braatz's format (d00.dat stored transposed, dNN.dat 480 rows, dNN_te.dat 960 rows) with faults of clear signatures.
"""

from __future__ import annotations

import numpy as np
import pytest

from factory_copilot.cli import main
from factory_copilot.detect import tep
from factory_copilot.detect.cli import _tep_table
from factory_copilot.detect.evaluate import evaluate_tep

N = len(tep.COLUMNS)
ONSET = tep.FAULT_ONSET_TEST
# fault -> (signals it moves, by how many standard deviations); 3 is one of tep.INVISIBLE_FAULTS: it moves none
SIGNATURES = {1: ([0, 1, 2], 6.0), 2: ([20, 21, 22], -6.0), 3: ([], 0.0)}


def _normal(rows: int, rng) -> np.ndarray:
    """Autocorrelated noise around plant-like levels, as TEP's signals are."""
    e = rng.normal(size=(rows, N))
    x = np.empty_like(e)
    x[0] = e[0]
    for t in range(1, rows):
        x[t] = 0.7 * x[t - 1] + e[t]
    return 50.0 + np.arange(N) + x


def _with_fault(data: np.ndarray, fault: int, start: int) -> np.ndarray:
    signals, size = SIGNATURES[fault]
    out = data.copy()
    out[start:, signals] += size * 1.4  # the noise's standard deviation is 1 / sqrt(1 - 0.7²) ≈ 1.4
    return out


def write_set(folder, test: bool = True, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    np.savetxt(folder / "d00.dat", _normal(500, rng).T)  # stored transposed, as Braatz's d00.dat
    for f in SIGNATURES:
        np.savetxt(folder / f"d{f:02d}.dat", _with_fault(_normal(480, rng), f, 0))  # every row after the onset
    if test:
        np.savetxt(folder / "d00_te.dat", _normal(960, rng))
        for f in SIGNATURES:
            np.savetxt(folder / f"d{f:02d}_te.dat", _with_fault(_normal(960, rng), f, ONSET))


@pytest.fixture(scope="module")
def tep_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tep")
    write_set(folder)
    return folder


@pytest.fixture(scope="module")
def results(tep_set):
    return evaluate_tep(tep_set, folds=3, class_folds=4, class_folds_run=1, progress=False, tep_test_dir=tep_set,
                        faults=list(SIGNATURES))


def test_a_test_file_is_read_as_rows_of_signals_whichever_way_it_is_stored(tmp_path):
    data = np.random.default_rng(1).normal(size=(960, N))
    np.savetxt(tmp_path / "d04_te.dat", data)
    np.savetxt(tmp_path / "d05_te.dat", data.T)
    as_stored, transposed = tep.load_test(4, tmp_path), tep.load_test(5, tmp_path)
    assert as_stored.shape == transposed.shape == (960, N) and list(as_stored.columns) == tep.COLUMNS
    assert np.allclose(as_stored.to_numpy(), transposed.to_numpy()) and np.allclose(as_stored.to_numpy(), data)


def test_a_test_file_of_other_than_52_signals_is_refused_by_name(tmp_path):
    np.savetxt(tmp_path / "d06_te.dat", np.zeros((960, N - 2)))
    with pytest.raises(ValueError, match="d06_te.dat"):
        tep.load_test(6, tmp_path)


def test_a_missing_test_file_names_itself_and_where_to_get_the_set(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        tep.load_test(7, tmp_path)
    message = str(err.value)
    assert str(tmp_path / "d07_te.dat") in message and "--tep-test" in message and "tennessee-eastman" in message


def test_the_test_set_is_there_only_with_its_normal_file_and_a_fault(tmp_path):
    assert not tep.has_test_set(tmp_path) and not tep.has_test_set(None)
    np.savetxt(tmp_path / "d00_te.dat", np.zeros((3, N)))
    assert not tep.has_test_set(tmp_path)
    np.savetxt(tmp_path / "d01_te.dat", np.zeros((3, N)))
    assert tep.has_test_set(tmp_path)


def test_only_the_rows_from_the_onset_on_are_scored_as_faulty(results):
    t = results["test_set"]
    assert t["onset_row"] == ONSET
    # 800 of the 960 rows are faulty: scoring the whole file could not pass 0.84
    for f in (1, 2):
        assert t["detection_rate"]["detector"][f] > 0.95, f
        assert t["classification_accuracy_by_file"]["classifier"][f] > 0.9, f
        assert t["classification_accuracy_by_file"]["windowed"][f] > 0.9, f
    # the 160 rows before every onset are normal running: counted as false alarms, not detections
    assert t["false_alarm_rate_pre_onset"]["detector"] < 0.05
    assert t["false_alarm_rate"]["detector"] < 0.1  # d00_te: 960 rows of normal running, the detector's target 1 %


def test_the_visible_figures_leave_out_the_invisible_faults_files(results):
    t = results["test_set"]
    # fault 3 moves nothing: its rows look normal, so leaving its file out can only raise the accuracy
    for name in ("classifier", "windowed", "random_forest"):
        assert t["classification_accuracy_visible"][name] > t["classification_accuracy"][name], name
    assert t["mean_detection_rate_visible"]["detector"] > t["mean_detection_rate"]["detector"]
    assert t["detection_rate"]["detector"][3] < 0.1


def test_evaluate_tep_gives_the_test_set_beside_the_blocked_cv(results, tep_set):
    t = results["test_set"]
    for name in ("detector", "pca_t2", "pca_spe"):
        assert set(t["detection_rate"][name]) == set(SIGNATURES)
        assert 0 <= t["false_alarm_rate"][name] <= 1 and 0 <= t["false_alarm_rate_pre_onset"][name] <= 1
    assert {"classifier", "windowed", "random_forest", "classifier_named", "windowed_named"} <= set(
        t["classification_accuracy"])
    assert set(t["classification_unknown_rate"]) == {"classifier", "windowed"}
    # the blocked CV's figures stay as they were
    assert {"detection_rate", "false_alarm_rate", "classification_accuracy", "windowed_lags"} <= set(results)
    assert set(results["detection_rate"]["detector"]) == set(SIGNATURES)
    assert "test_set" not in evaluate_tep(tep_set, folds=2, class_folds=2, class_folds_run=1, progress=False,
                                          faults=[1])


def test_the_table_prints_the_test_set_beside_the_blocked_cv(results):
    text = _tep_table(results)
    assert "test set (rows 160+)" in text and "blocked CV" in text
    t = results["test_set"]
    line = next(ln for ln in text.splitlines() if ln.startswith("RandomForest"))
    assert f"{results['classification_accuracy']['random_forest']:.3f}" in line
    assert f"{t['classification_accuracy']['random_forest']:.3f}" in line
    assert f"{t['classification_accuracy_visible']['random_forest']:.3f}" in line


def test_evaluate_with_a_test_folder_lacking_the_files_names_them(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(tep.ENV, raising=False)
    write_set(tmp_path, test=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", "--only", "tep", "--tep", str(tmp_path), "--tep-test", str(empty),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(empty / "d01_te.dat") in err and "d00_te.dat" in err


def test_the_test_set_is_looked_for_beside_the_training_set_unless_given(monkeypatch, tmp_path, results, capsys):
    import factory_copilot.detect.evaluate as evaluate

    monkeypatch.delenv(tep.ENV, raising=False)
    asked = []
    monkeypatch.setattr(evaluate, "evaluate_tep", lambda where, tep_test_dir=None: asked.append(tep_test_dir) or results)
    only_training, both, elsewhere = tmp_path / "train", tmp_path / "both", tmp_path / "test"
    for folder in (only_training, both, elsewhere):
        folder.mkdir()
        np.savetxt(folder / "d00.dat", np.zeros((N, 3)))
    for folder in (both, elsewhere):
        for f in (0, 1):
            np.savetxt(folder / f"d{f:02d}_te.dat", np.zeros((3, N)))
    for args in (["--tep", str(only_training)], ["--tep", str(both)],
                 ["--tep", str(only_training), "--tep-test", str(elsewhere)]):
        assert main(["evaluate", "--only", "tep", *args, "--out", str(tmp_path / "out")]) == 0
    assert asked == [None, both, elsewhere]
    assert "test set (rows 160+)" in capsys.readouterr().out
