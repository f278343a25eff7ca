"""The house rules, checked by walking the imports of the runtime package (``src/factory_copilot``).

* the runtime imports nothing from the simulator, the tests, the benchmarks or the dashboard;
* no station imports another station's private names (``_name``);
* no import loop among the runtime's modules, not even through an import inside a function;
* the service starts without loading the heavy parts only some commands use (streamlit, matplotlib,
  tqdm, the simulator, the MCP SDK and its web server, the PDF library);
* the command line imports the simulator for its own commands only (``run --help`` loads none of it).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "factory_copilot"
FORBIDDEN = ("simulators", "tests", "bench", "dashboards")
STATIONS = {"collect", "detect", "alarms", "copilot", "publish", "store"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str], bool, int]]:
    """(module, names, at top level, line) for every import in the file; relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    top = {id(n) for n in tree.body}
    for node in tree.body:  # imports under `if TYPE_CHECKING:` never run
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            top |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], id(node) in top, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            out.append((base, [a.name for a in node.names], id(node) in top, node.lineno))
    return out


def runtime_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_runtime_imports_no_simulator_test_benchmark_or_dashboard():
    found = [f"{p.relative_to(ROOT)}:{line} imports {mod}" for p in runtime_files()
             for mod, _, _, line in imports(p) if mod.split(".")[0] in FORBIDDEN]
    assert found == []


def test_no_station_imports_another_stations_private_names():
    found = []
    for p in runtime_files():
        own = module_name(p).split(".")[1] if "." in module_name(p) else ""
        for mod, names, _, line in imports(p):
            parts = mod.split(".")
            if parts[0] == "factory_copilot" and len(parts) > 1 and parts[1] in STATIONS and parts[1] != own:
                found += [f"{p.relative_to(ROOT)}:{line} takes {mod}.{n}" for n in names if n.startswith("_")]
    assert found == []


def _graph() -> dict[str, dict[str, str]]:
    """module -> {module it imports: where (file:line, and "in a function" unless at top level)}."""
    known = {module_name(p) for p in runtime_files()}
    graph: dict[str, dict[str, str]] = {m: {} for m in known}
    for p in runtime_files():
        me = module_name(p)
        for mod, names, top, line in imports(p):
            for target in [f"{mod}.{n}" for n in names] + [mod]:
                if target in known and target != me:
                    where = f"{p.relative_to(ROOT)}:{line}" + ("" if top else ", in a function")
                    graph[me].setdefault(target, where)
                    break
    return graph


def import_loops(graph: dict[str, dict[str, str]]) -> list[str]:
    """One loop per knot of modules that import each other (strongly connected), named with each import's place."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    knots: list[set[str]] = []

    def visit(m: str) -> None:  # Tarjan's strongly connected components
        index[m] = low[m] = len(index)
        stack.append(m)
        for t in graph[m]:
            if t not in index:
                visit(t)
                low[m] = min(low[m], low[t])
            elif t in stack:
                low[m] = min(low[m], index[t])
        if low[m] == index[m]:
            knot = set()
            while True:
                t = stack.pop()
                knot.add(t)
                if t == m:
                    break
            if len(knot) > 1:
                knots.append(knot)

    for m in sorted(graph):
        if m not in index:
            visit(m)
    loops = []
    for knot in knots:
        start = min(knot)
        came: dict[str, str] = {}
        todo = [start]
        while start not in came:  # breadth first: the shortest way back to the start within the knot
            m = todo.pop(0)
            for t in sorted(graph[m]):
                if t in knot and t not in came:
                    came[t] = m
                    todo.append(t)
        path = [start]
        while came[path[-1]] != start:
            path.append(came[path[-1]])
        path = [start] + path[:0:-1] + [start]
        loops.append(" -> ".join(f"{a} ({graph[a][b]})" for a, b in zip(path, path[1:])) + f" -> {start}")
    return sorted(loops)


def test_no_import_loop_among_the_runtime_modules_not_even_through_an_import_in_a_function():
    """Every import counts, the ones inside functions too: a lazy import hides a loop from Python, not from the reader."""
    assert import_loops(_graph()) == []


def test_the_loop_finder_sees_a_loop_through_imports_in_functions():
    graph = {"a": {"b": "a.py:3, in a function"}, "b": {"c": "b.py:1"}, "c": {"a": "c.py:9, in a function"}, "d": {}}
    assert import_loops(graph) == ["a (a.py:3, in a function) -> b (b.py:1) -> c (c.py:9, in a function) -> a"]
    assert import_loops({"a": {"b": "a.py:1"}, "b": {}}) == []


@pytest.mark.parametrize("entry", ["factory_copilot.service", "factory_copilot.cli"])
def test_the_service_starts_without_the_heavy_parts_it_does_not_use(entry):
    heavy = ["streamlit", "matplotlib", "tqdm", "simulators", "mcp", "uvicorn", "fpdf"]  # mcp and fpdf2: their commands only
    code = f"import sys, {entry}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


CLI = """
import sys
from factory_copilot.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("imported:", *sorted(sys.modules), file=sys.stderr)
"""


def imported_by(*argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """``factory-copilot ARGV`` in a fresh interpreter, and every module it had imported at the end (sys.modules:
    ``-X importtime`` misses the modules the CLI loads with importlib)."""
    ran = subprocess.run([sys.executable, "-c", CLI, *argv], capture_output=True, text=True, timeout=120)
    return ran, set(ran.stderr.rpartition("imported: ")[2].split())


def test_run_and_the_other_commands_of_a_real_line_import_no_simulator_module():
    """docs/architecture.md: the runtime never imports the simulator; the command line did, for every command."""
    ran, modules = imported_by("run", "--help")
    assert ran.returncode == 0 and ran.stdout.startswith("usage: factory-copilot run"), ran.stderr[-2000:]
    assert "factory_copilot.service" in modules and [m for m in modules if m.split(".")[0] == "simulators"] == []
    ran, modules = imported_by("demo", "--help")  # the simulator's own command loads it (the check above can see it)
    assert ran.returncode == 0 and "simulators.demo" in modules
    ran, _ = imported_by("--help")  # and the list of commands still has them all
    assert " simulate " in ran.stdout and " demo " in ran.stdout


def test_the_cli_knows_which_commands_the_simulator_registers():
    import argparse
    import importlib

    from factory_copilot.cli import COMMANDS, SIMULATOR

    assert [p for p in COMMANDS if p.split(".")[0] == "simulators"] == list(SIMULATOR)
    for path, names in SIMULATOR.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(path).register(sub)
        assert tuple(sub.choices) == names, path


def test_one_list_of_commands_for_the_engine_the_schema_and_the_dashboard():
    import json

    from dashboards.live import COMMANDS as BUTTONS
    from factory_copilot.alarms.engine import COMMANDS
    from factory_copilot.records import CommandKind

    kinds = [k.value for k in CommandKind]
    schema = json.loads((PACKAGE / "publish" / "schemas" / "command" / "1.json").read_text())
    assert schema["properties"]["command"]["enum"] == kinds
    assert list(COMMANDS) == kinds
    assert set(BUTTONS) < set(kinds)
