"""``factory-copilot demo --site N`` as a newcomer runs it: two lines bridged to a site broker, two explainers on the
tiny GGUF, PostgreSQL; both lines' alarms at the site and stored, and no process of it left once it exits (after its
duration, or SIGTERM). Beside them, what needs no run: the option's default, and PostgreSQL missing (issue 22)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from factory_copilot.cli import build_parser
from factory_copilot.plumbing.broker import MOSQUITTO
from tests.support.copilot import make_tiny_qwen
from tests.support.output import Lines
from tests.support.postgres import pg_bin

CLI = [sys.executable, "-m", "factory_copilot.cli"]
needs_site = pytest.mark.skipif(MOSQUITTO is None or pg_bin() is None,
                                reason="demo --site needs Mosquitto and PostgreSQL (scripts/bootstrap.sh test)")


def test_site_option_defaults_to_three_lines():
    assert build_parser().parse_args(["demo", "--site"]).site == 3
    assert build_parser().parse_args(["demo", "--site", "5"]).site == 5
    assert build_parser().parse_args(["demo"]).site is None


def test_missing_postgres_is_named_with_its_package(monkeypatch, capsys, tmp_path):
    import simulators.site as site

    monkeypatch.setattr(site, "pg_bin", lambda: None)
    args = build_parser().parse_args(["demo", "--site", "2", "--headless", "--state-dir", str(tmp_path / "s")])
    assert site.run_site_demo(args) == 2
    err = capsys.readouterr().err
    assert "PostgreSQL" in err and "apt-get install postgresql" in err
    assert not (tmp_path / "s").exists(), "nothing started, nothing written"


class Watched(Lines):
    """The demo's process, its output, and every process below it seen while it ran (polled each 0.5 s)."""

    def __init__(self, cmd: list[str]):
        super().__init__(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        # pid -> its start time: on a busy box a pid is reused, and a later process under it is not the demo's
        self.seen: dict[int, float] = {}
        threading.Thread(target=self._poll, daemon=True).start()

    @property
    def pids(self) -> set[int]:
        return set(self.seen)

    def _poll(self) -> None:
        me = psutil.Process(self.proc.pid)
        while self.proc.poll() is None:
            try:
                children = me.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for p in children:
                try:
                    self.seen.setdefault(p.pid, p.create_time())
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.5)

    def summary(self) -> dict:
        start = max(i for i, ln in enumerate(self.lines) if ln == "{")
        return json.loads("\n".join(self.lines[start:self.lines.index("}", start) + 1]))

    def left_behind(self, *folders: str) -> list[str]:
        """Processes the demo started still running, and any naming one of ``folders`` (postgres is no child)."""
        found = []
        for p in psutil.process_iter(["pid", "cmdline", "status", "create_time"]):
            if p.info["status"] == psutil.STATUS_ZOMBIE or p.pid == self.proc.pid:
                continue
            cmd = " ".join(p.info["cmdline"] or [])
            if self.seen.get(p.pid) == p.info["create_time"] or any(f in cmd for f in folders):
                found.append((p, cmd))
        # one still exiting (its cmdline already gone) is not left behind: wait for the exits, report who outlives them
        gone, alive = psutil.wait_procs([p for p, _ in found], timeout=10)
        return [f"{p.pid}: {cmd[:160]}" for p, cmd in found if p in alive]


@pytest.fixture(scope="module")
def site_state(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("site-demo")


@needs_site
@pytest.mark.slow
def test_two_lines_alarms_reach_the_site_and_postgres_and_nothing_is_left(site_state):
    model = make_tiny_qwen(site_state / "tiny-qwen.gguf")
    demo = Watched([*CLI, "demo", "--site", "2", "--headless", "--duration", "80", "--model", str(model),
                    "--train-hours", "1", "--state-dir", str(site_state)])
    try:
        assert demo.proc.wait(600) == 0, "\n".join(demo.lines[-60:])
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
    result = demo.summary()
    assert set(result["per_line"]) == {"line-01", "line-02"}
    for name, line in result["per_line"].items():
        assert line["alarms_raised"] >= 1, (name, line)
        assert line["alarms_at_site"] == line["alarms_raised"], (name, line)
        assert line["alarms_stored"] == line["alarms_raised"], (name, line)
        assert line["postgres_rows"]["alarm_events"] >= line["alarms_raised"]
    assert {f["line"] for f in result["faults_injected"]} == {"line-01", "line-02"}
    assert len({f["fault"] for f in result["faults_injected"]}) > 1, "the lines' faults differ"
    assert result["all_lines_at_site_and_stored"] is True
    assert not any("Traceback" in ln for ln in demo.lines), "\n".join(demo.lines)
    assert len(demo.pids) >= 2 + 2 + 3 + 1, f"the lines, explainers, brokers, plant were seen: {demo.pids}"
    assert demo.left_behind(str(site_state), result["postgres"]["folder"]) == []


@needs_site
@pytest.mark.slow
def test_sigterm_stops_every_process_of_the_site(site_state):
    demo = Watched([*CLI, "demo", "--site", "2", "--headless", "--duration", "600", "--no-model",
                    "--train-hours", "1", "--state-dir", str(site_state)])
    try:
        demo.wait_for("lines online at the site broker", 300)
        pg = next(ln for ln in demo.lines if ln.startswith("PostgreSQL:")).split("cluster in ")[1].rstrip(")")
        demo.proc.send_signal(signal.SIGTERM)
        demo.proc.wait(120)
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
    assert "Explainers: none (no model)" in "\n".join(demo.lines)
    assert demo.summary()["lines"] == 2
    assert demo.left_behind(str(site_state), pg) == []
