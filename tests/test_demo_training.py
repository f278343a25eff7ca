"""The first demo trains in a child process: the serving process never holds training's libraries or peak."""

from __future__ import annotations

import json
import subprocess
import sys

from factory_copilot.config import REPO_ROOT

PROBE = """
import json, sys
from pathlib import Path
from factory_copilot.config import SIMULATED_LINE, load_line
from simulators.demo import trained_models
line = load_line(SIMULATED_LINE)
models = trained_models(line, Path(sys.argv[1]), hours=0.5, seed=3)
print(json.dumps({"loaded": type(models).__name__, "held": sorted(m for m in ("sklearn", "scipy", "pandas")
                                                                  if m in sys.modules)}))
"""


def test_the_first_demo_trains_in_a_child_and_serves_without_training_s_libraries(tmp_path):
    path = tmp_path / "detector.joblib"
    out = subprocess.run([sys.executable, "-c", PROBE, str(path)], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert path.exists() and report["loaded"] == "TrainedDetector"
    assert report["held"] == [], f"the serving process imported {report['held']} to train"
