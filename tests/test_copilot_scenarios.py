"""Every simulated fault: the runbook diagnosis names the injected fault among its top two causes and cites its runbook.

The alarm is raised where the real detector (``factory_copilot.detect.LineDetector``, trained on
the fault-free first 20 minutes of the full-severity runs) first flags the run after the fault
onset (typically 20-400 s in, while the fault is still growing), and the detector's per-signal
contributions at that row go into the alarm's anomaly. No classifier vote is given
(``fault_type`` is None), so the ranking rests on the evidence and the runbook signatures alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from factory_copilot.catalogue import load_faults
from factory_copilot.config import SIMULATED_FAULTS, SIMULATED_LINE, load_line
from factory_copilot.copilot import Copilot
from factory_copilot.detect import LineDetector
from factory_copilot.records import Mode, Quality, Reading
from simulators import standard_scenarios
from tests.support.copilot import alarm_for

LINE = load_line(SIMULATED_LINE)
RUNS = standard_scenarios()
ON_DELAY = 60


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return {r.name: r.frame(LINE) for r in RUNS}


@pytest.fixture(scope="module")
def detector(frames) -> LineDetector:
    # the simulator's products and wear differ per seed: normal data from several runs, not one
    normal = [frames[r.name][frames[r.name].index < r.scenarios[0].start_s] for r in RUNS if not r.name.endswith("_mild")]
    return LineDetector().fit(pd.concat(normal, ignore_index=True).drop(columns=["fault"]))


@pytest.fixture(scope="module")
def copilot() -> Copilot:
    return Copilot(LINE)


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_runbook_diagnosis_names_the_injected_fault(run, frames, detector, copilot):
    fault_type = run.scenarios[0].fault_type
    onset = run.scenarios[0].start_s
    frame = frames[run.name]
    X = frame.drop(columns=["fault"])
    flags = detector.flag(X)
    # the alarm is raised once the detector has flagged ON_DELAY rows in a row (the alarm engine's on-delay)
    run_len = pd.Series(flags).groupby((pd.Series(flags) != pd.Series(flags).shift()).cumsum()).cumcount().to_numpy() + 1
    after = np.flatnonzero((flags == 1) & (run_len >= ON_DELAY) & (frame.index.to_numpy() >= onset))
    assert len(after), f"the detector never flagged {run.name}"
    row = after[0]
    t_alarm = float(frame.index[row])
    contributions = detector.contributions(X.iloc[: row + 1]).iloc[-1]
    contributions = {k: float(v) for k, v in contributions.sort_values(ascending=False).items() if v > 0}

    keys = LINE.signal_keys()
    recent = frame.iloc[max(0, row - 600): row + 1]
    copilot.history = type(copilot.history)()
    for ts, values in zip(recent.index, recent[keys].to_numpy()):
        for k, v in zip(keys, values):
            copilot.observe(Reading(float(ts), *k.split(".", 1), float(v), Quality.GOOD))
    asset = max({k.split(".")[0] for k in contributions}, key=lambda a: sum(v for k, v in contributions.items()
                                                                               if k.startswith(a + ".")))
    alarm = alarm_for(asset, contributions=contributions, mode=Mode(frame["mode"].iloc[row]), ts=t_alarm,
                      alarm_id=f"sim-{run.name}")
    d = copilot.explain_now(alarm)

    top_two = [c.fault_type for c in d.causes[:2]]
    assert fault_type in top_two, (run.name, f"alarm {t_alarm - onset:.0f} s after onset", [(c.fault_type, c.confidence) for c in d.causes])
    cause = d.causes[top_two.index(fault_type)]
    runbook = copilot.library.for_fault(fault_type)
    assert f"{runbook.id}#symptoms" in {e.ref for e in cause.evidence}
    assert any(e.kind == "signal" and e.ref in load_faults(SIMULATED_FAULTS)[fault_type].signals for e in cause.evidence)
