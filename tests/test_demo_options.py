"""The demo's command-line options that need no demo run: its OPC UA port (issue 25)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from factory_copilot.cli import build_parser
from factory_copilot.plumbing.broker import free_port
from simulators.demo import demo_opcua_port


def test_the_demo_serves_opcua_on_the_port_asked_for():
    args = build_parser().parse_args(["demo", "--opcua-port", "4841"])
    assert args.opcua_port == 4841
    assert build_parser().parse_args(["demo"]).opcua_port is None
    port = free_port()
    assert demo_opcua_port(port) == port
    assert 1024 <= demo_opcua_port(None) <= 65535


def test_a_taken_opcua_port_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"--opcua-port {port}: 127.0.0.1:{port} is taken"):
            demo_opcua_port(port)
        run = subprocess.run([sys.executable, "-m", "factory_copilot.cli", "demo", "--headless", "--no-model",
                              "--opcua-port", str(port), "--state-dir", str(tmp_path / "demo")],
                             capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert f"--opcua-port {port}" in run.stderr and "is taken" in run.stderr
    assert not (tmp_path / "demo").exists(), "nothing started, nothing written"
