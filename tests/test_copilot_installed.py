"""Installable: a wheel installed outside the checkout has the demo line, its catalogue and runbooks, and explains alarms."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile

import pytest

from factory_copilot.config import REPO_ROOT

pytestmark = pytest.mark.slow

PROBE = textwrap.dedent("""
    import json, factory_copilot
    from factory_copilot.config import SEEDS_DIR, SIMULATED_LINE, load_line
    from factory_copilot.copilot import Copilot
    from factory_copilot.records import Alarm, AlarmState, Anomaly, Priority, Reading
    line = load_line(SIMULATED_LINE)
    cop = Copilot(line)
    for i in range(120):
        cop.observe(Reading(i * 5.0, "product_pump", "vibration", 2.0 + 4.0 * i / 119))
        cop.observe(Reading(i * 5.0, "product_pump", "bearing_temperature", 55 + 25 * i / 119))
    an = Anomaly(ts=600.0, asset="product_pump", kind="multivariate", score=9.0, threshold=1.0)
    d = cop.explain_now(Alarm("A-1", "product_pump", "fault", AlarmState.ACTIVE_UNACK, Priority.HIGH, "x", 600.0, 600.0, an))
    from factory_copilot.publish import payloads
    rejected = payloads.parse_command(b'{"schema": "command/1", "command": "explode"}', "ann")
    print(json.dumps({"package": factory_copilot.__file__, "schemas": str(payloads.SCHEMAS_DIR),
                      "command_refused": type(rejected).__name__, "seeds": str(SEEDS_DIR), "faults": len(cop.faults),
                      "runbooks": len(cop.library), "cause": d.causes[0].fault_type,
                      "steps": [s.runbook_id for s in d.steps][:1]}))
""")


def test_a_wheel_installed_elsewhere_explains_alarms_from_its_package_data(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(REPO_ROOT)], check=True, timeout=240)
    wheel = next(wheels.glob("factory_copilot-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "factory_copilot/seeds/lines/packaging_line.yaml" in names and "factory_copilot/seeds/faults.yaml" in names
    assert sum(n.startswith("factory_copilot/seeds/runbooks/RB-") for n in names) == 9
    assert "factory_copilot/publish/schemas/alarm/1.json" in names and "factory_copilot/publish/schemas/command/1.json" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # run from an unrelated folder, with the unpacked wheel first on the path (ahead of the editable checkout)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["package"].startswith(str(site)) and got["seeds"].startswith(str(site))
    assert got["schemas"].startswith(str(site)) and got["command_refused"] == "Rejected"  # checked against its schema
    assert got["faults"] == 9 and got["runbooks"] == 9
    assert got["cause"] == "bearing_wear" and got["steps"] == ["RB-PUMP-001#checks"]
