"""The README as a newcomer follows it on a fresh machine: two commands, then the commands of the page.

Issue 25: after the quick start no README command worked: the CLI is in .venv/bin, which is not on the PATH, and the
README never said so; `factory-copilot alerts tail ...`, which the demo prints as the next step, was "command not
found".
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from factory_copilot.config import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def quick_start() -> list[str]:
    section = README[README.index("## Quick start"):]
    section = section[: section.index("\n## ", 3)]
    return [ln.strip() for ln in section.splitlines() if ln.startswith("    ") and ln.strip()]


def test_the_quick_start_is_two_commands_and_says_where_the_cli_is():
    assert [c.split("#")[0].strip() for c in quick_start()] == ["bash scripts/bootstrap.sh demo",
                                                                "bash scripts/bootstrap.sh test"]
    section = README[README.index("## Quick start"): README.index("## How it works")]
    assert ". .venv/bin/activate" in section and ".venv/bin/factory-copilot" in section


@pytest.mark.skipif(not (Path(sys.executable).parent / "factory-copilot").exists(),
                    reason="runs the installed console script beside this interpreter (the bootstrap's .venv)")
def test_the_next_step_the_demo_prints_runs_as_printed_in_a_shell_without_the_venv(tmp_path):
    """A fresh shell after the quick start: the venv's bin is not on the PATH."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if Path(p).resolve() != Path(sys.executable).parent.resolve())
    env = {**os.environ, "PATH": path}
    printed = subprocess.run([sys.executable, "-c", "from factory_copilot.cli import command; print(command())"],
                             cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert printed != "factory-copilot" and printed.endswith("factory-copilot"), printed
    # as the demo prints it: "<command> alerts tail --port N --username viewer --password P"
    ran = subprocess.run(shlex.split(printed) + ["alerts", "tail", "--help"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0 and "--folded" in ran.stdout, ran.stderr
    # with the venv activated the plain name is what runs, and what is printed
    active = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), path])}
    again = subprocess.run([sys.executable, "-c", "from factory_copilot.cli import command; print(command())"],
                           cwd=tmp_path, env=active, capture_output=True, text=True, check=True).stdout.strip()
    assert again == "factory-copilot"


def test_every_command_in_the_readme_table_is_one_the_cli_has():
    from factory_copilot.cli import build_parser

    parser = build_parser()
    names = set(parser._subparsers._group_actions[0].choices)  # the sub-commands
    rows = re.findall(r"^\| `factory-copilot ([a-z-]+)", README, flags=re.M)
    assert rows and set(rows) <= names, set(rows) - names
    check = next(a for a in parser._subparsers._group_actions[0].choices["check"]._actions if a.dest == "listen")
    assert "--listen" in check.option_strings and "--seconds" in check.option_strings
    assert "check --config LINE.yaml [--listen 30]" in README
