"""What `train` and `evaluate` print, read as a plant engineer reads a report on a terminal (issue 25)."""

from __future__ import annotations

import re
import subprocess
import sys

from factory_copilot.cli import main
from tests.test_detect_onboarding import engine_line, engine_runs

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR)", re.M)


def _trained(tmp_path):
    line = engine_line(tmp_path)
    runs = engine_runs(units=3, cycles=120, worn_from=90)
    runs[runs["fault"] == "normal"].drop(columns="fault").to_csv(tmp_path / "healthy.csv", index=False)
    runs.to_csv(tmp_path / "worn.csv", index=False)
    assert main(["train", "--line", line, "--history", str(tmp_path / "healthy.csv"),
                 "--out", str(tmp_path / "m.joblib")]) == 0
    return line


def _evaluate(tmp_path, line, *extra, **run):
    return subprocess.run(
        [sys.executable, "-m", "factory_copilot.cli", "evaluate", *extra, "--line", line, "--history",
         str(tmp_path / "worn.csv"), "--models", str(tmp_path / "m.joblib"), "--out", str(tmp_path / "eval")],
        text=True, timeout=300, **run)


def test_evaluate_on_a_terminal_shows_its_report_and_no_log_lines(tmp_path):
    line = _trained(tmp_path)
    # a terminal shows both streams together: the report must not be interleaved with INFO lines
    shown = _evaluate(tmp_path, line, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert shown.returncode == 0, shown.stdout
    assert "events detected" in shown.stdout
    assert not LOG_LINE.findall(shown.stdout), shown.stdout


def test_evaluate_verbose_logs_to_stderr_and_keeps_stdout_the_report(tmp_path):
    line = _trained(tmp_path)
    said = _evaluate(tmp_path, line, "--verbose", capture_output=True)
    assert said.returncode == 0, said.stderr
    assert "events detected" in said.stdout and not LOG_LINE.findall(said.stdout)
    assert re.search(r" INFO +factory_copilot\.detect\.persist: detector ", said.stderr), said.stderr


def test_train_reads_a_semicolon_separated_history(tmp_path, capsys):
    """A spreadsheet export with ';' (or tabs) between columns trains as the same file with commas would."""
    line = engine_line(tmp_path)
    runs = engine_runs(units=2, cycles=60, worn_from=90)
    runs = runs[runs["fault"] == "normal"].drop(columns="fault")
    for name, sep in (("semi.csv", ";"), ("tabs.csv", "\t")):
        runs.to_csv(tmp_path / name, index=False, sep=sep)
        assert main(["train", "--line", line, "--history", str(tmp_path / name),
                     "--out", str(tmp_path / f"{name}.joblib")]) == 0, capsys.readouterr().err


def test_train_names_every_missing_column_and_the_file(tmp_path, capsys):
    line = engine_line(tmp_path)
    runs = engine_runs(units=2, cycles=60, worn_from=90)
    runs[["run"]].to_csv(tmp_path / "bare.csv", index=False)
    assert main(["train", "--line", line, "--history", str(tmp_path / "bare.csv"),
                 "--out", str(tmp_path / "m.joblib")]) == 2
    err = capsys.readouterr().err
    from factory_copilot.config import load_line
    for key in load_line(line).signal_keys():
        assert key in err, err
    assert "bare.csv" in err, err


def test_train_on_a_line_without_modes_mentions_no_mode(tmp_path, capsys):
    _trained(tmp_path)
    out = capsys.readouterr().out
    assert "trained on" in out
    assert not re.search(r"\bmodes?\b", out), out


def test_evaluate_says_when_a_file_runs_in_a_mode_the_model_never_saw(tmp_path, capsys):
    import numpy as np
    import pandas as pd
    import yaml

    from tests.test_detect_modes import tank

    line = tmp_path / "tank.yaml"
    line.write_text(yaml.safe_dump(tank()))
    rng = np.random.default_rng(3)

    def rows(state, level, temperature, n=400):
        return pd.DataFrame({"tank.state": float(state), "tank.level": level + rng.normal(0, 1, n),
                             "tank.temperature": temperature + rng.normal(0, 0.5, n),
                             "tank.agitator_current": 7 + rng.normal(0, 0.2, n), "fault": "normal"})

    rows(2, 55, 50).drop(columns="fault").to_csv(tmp_path / "mixing.csv", index=False)
    rows(5, 15, 75).to_csv(tmp_path / "cleaning.csv", index=False)
    assert main(["train", "--line", str(line), "--history", str(tmp_path / "mixing.csv"),
                 "--out", str(tmp_path / "m.joblib")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--line", str(line), "--history", str(tmp_path / "cleaning.csv"),
                 "--models", str(tmp_path / "m.joblib"), "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"cleaning\.csv: all 400 rows .*mode cip.*not trained", out), out


def test_the_untrained_mode_note_says_most_and_stays_quiet_for_a_few_rows():
    from factory_copilot.config import parse_line
    from factory_copilot.detect.operating import untrained_note
    from tests.test_detect_modes import tank

    line = parse_line(tank())
    assert untrained_note(line, "x.csv", 400, {"cip": 300, "stopped": 20}).startswith(
        "x.csv: most rows (320 of 400) are in mode cip (300 rows) and mode stopped (20 rows), which the model was not trained on")
    assert untrained_note(line, "x.csv", 400, {"cip": 30}) is None
