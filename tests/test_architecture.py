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


def test_one_builder_for_what_an_operators_client_sends_and_it_meets_the_schemas():
    """The dashboard and the MCP write tools send commands, feedback, questions and handover acknowledgements built by
    publish/payloads.py only (beside their parsers), so no sender can drift from the schema the service reads."""
    import re

    from factory_copilot.publish import payloads
    from factory_copilot.records import FEEDBACK_VERDICTS, CommandKind

    for kind in CommandKind:
        shelve_s = 60.0 if kind is CommandKind.SHELVE else None
        for actor in (None, "ann"):
            body = payloads.command(kind, "pump.flow-limit", "r-1", actor=actor, comment="c", shelve_s=shelve_s)
            assert payloads.problems(body, payloads.COMMAND) == [], (kind, actor)
            parsed = payloads.parse_command(payloads.encode(body), "ann")
            assert (parsed.command, parsed.shelve_s, parsed.request_id) == (kind.value, shelve_s, "r-1")
    assert payloads.problems(payloads.command("shelve", "a", "r"), payloads.COMMAND) != []  # the schema bites
    with pytest.raises(ValueError):
        payloads.command("reset", "a", "r")
    assert payloads.problems(payloads.question(None, "why?", "r-2", "ann"), payloads.ASK) == []
    assert payloads.problems(payloads.handover_ack("h-1", "r-3", "ann", "read"), payloads.HANDOVER_ACK) == []
    for verdict in FEEDBACK_VERDICTS:
        cause = "clogged_filter" if verdict == "other_cause" else None
        body = payloads.feedback("pump.flow-limit", verdict, "r-4", actor="ann", actual_cause=cause, fix="f")
        assert payloads.problems(body, payloads.FEEDBACK) == [], verdict
        parsed = payloads.parse_command(payloads.encode(body), "ann")
        assert (parsed.verdict, parsed.actual_cause, parsed.actor, parsed.request_id) == (verdict, cause, "ann", "r-4")
    schema = payloads.load_schema(payloads.FEEDBACK)
    assert schema["properties"]["verdict"]["enum"] == list(FEEDBACK_VERDICTS)  # one list of verdicts
    assert payloads.problems(payloads.feedback("a", "other_cause", "r"), payloads.FEEDBACK) != []  # names no cause
    with pytest.raises(ValueError):
        payloads.feedback("a", "maybe", "r")
    by_hand = re.compile(r"""["']schema["']\s*:\s*["'](command|ask|handover-ack|feedback)/""")
    senders = [*runtime_files(), *sorted((ROOT / "dashboards").glob("*.py"))]
    found = [f"{p.relative_to(ROOT)}:{n}" for p in senders if p != PACKAGE / "publish" / "payloads.py"
             for n, line in enumerate(p.read_text().splitlines(), 1) if by_hand.search(line)]
    assert found == []


# -- the bus: what each station takes and gives, declared, wired and documented alike -------------------------

def _documented_lanes() -> dict[str, tuple[set[str], set[str]]]:
    """docs/architecture.md's station table: station -> (record names taken, record names given)."""
    import re

    from factory_copilot import records

    names = {n for n in dir(records) if isinstance(getattr(records, n), type)}
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("| Station | Package | Takes | Gives |"):].split("\n\n")[0].splitlines()[2:]
    out = {}
    for row in table:
        station, _, takes, gives = [c.strip() for c in row.strip("|").split("|")]
        pick = lambda cell: {n for n in re.findall(r"`(\w+)`", cell) if n in names}  # noqa: E731
        out[station.split(" (")[0]] = (pick(takes), pick(gives))
    return out


def _full_service(tmp_path):
    """A service with every optional station and lane wired: shifts, the PLC's alarms, the OPC UA alarm server."""
    from factory_copilot.config import SIMULATED_LINE, LineConfig, ServicePaths, load_line
    from factory_copilot.detect.persist import TrainedDetector
    from factory_copilot.service import LineService

    data = load_line(SIMULATED_LINE).model_dump()
    data["shifts"] = [{"name": "early", "start": "06:00"}, {"name": "late", "start": "18:00"}]
    data["service"]["plc_alarms"] = {"map": [{"source": "ns=2;s=Pump1", "asset": "product_pump"}]}
    data["service"]["opcua_server"] = {"endpoint": "opc.tcp://127.0.0.1:4999/x/", "security": "none"}
    line = LineConfig.model_validate(data)
    return LineService(line, TrainedDetector(line.fingerprint(), line.line, detector=None), ServicePaths(tmp_path),
                       health_port=None)


def test_the_architecture_table_is_what_the_stations_declare_and_the_service_wires(tmp_path):
    service = _full_service(tmp_path)
    try:
        documented = _documented_lanes()
        stations = {"collect": service.collector, "detect": service.detect, "alarms": service.alarms,
                    "copilot": service.copilot, "publish": service.publisher, "store": service.store_station,
                    "shift": service.shift, "opcua-server": service.opcua_server}
        wired = service.bus.wiring()
        assert set(documented) == set(stations) == set(wired)
        for name, station in stations.items():
            declared = ({t.__name__ for t in station.takes}, {t.__name__ for t in station.gives})
            assert documented[name] == declared, f"docs/architecture.md's row for {name} is not what its class declares"
            as_wired = wired.get(name, {"takes": set(), "gives": set()})
            assert ({t.__name__ for t in as_wired["takes"]}, {t.__name__ for t in as_wired["gives"]}) == declared, name
    finally:
        service.engine.close()
        service.store.close()


def test_every_record_given_is_taken_and_every_record_taken_is_given():
    """No dead lanes: a record a station gives that nobody takes, or one a station waits for that nobody gives."""
    from factory_copilot.alarms.station import AlarmStation
    from factory_copilot.collect.station import CollectStation
    from factory_copilot.copilot.station import Copilot
    from factory_copilot.detect.station import DetectStation
    from factory_copilot.publish.opcua_server import AlarmServer
    from factory_copilot.publish.publisher import Publisher
    from factory_copilot.shift.station import ShiftStation
    from factory_copilot.store.station import StoreStation

    classes = [CollectStation, DetectStation, AlarmStation, Copilot, Publisher, StoreStation, ShiftStation, AlarmServer]
    given = {t for c in classes for t in c.gives}
    taken = {t for c in classes for t in c.takes}
    assert given - taken == set(), "given and taken by nobody"
    assert taken - given == set(), "taken and given by nobody"


def test_the_bus_refuses_a_lane_a_station_does_not_declare_and_delivers_by_type_in_order():
    from factory_copilot.plumbing.bus import Bus
    from factory_copilot.records import Anomaly, Reading, SourceState

    class Detect:
        takes, gives = (Reading, SourceState), (Anomaly,)

    bus = Bus(10)
    inbox = bus.subscribe("detect", Reading, SourceState)
    store = bus.subscribe("store", Reading, size=2)
    out = bus.outlet("collect", Reading, SourceState)
    lost = SourceState("opcua", 2.0, False, "gone", ())
    for item in (Reading(1.0, "a", "x", 1.0), lost, Reading(3.0, "a", "x", 2.0), Reading(4.0, "a", "x", 3.0)):
        out.offer(item)
    assert [inbox.get_nowait().ts for _ in range(inbox.qsize())] == [1.0, 2.0, 3.0, 4.0]  # both types, in order
    assert store.qsize() == 2 and store.dropped == 1  # the slow taker drops only its own oldest
    try:
        out.offer(Anomaly(ts=1.0, asset="a", kind="limit", score=1.0, threshold=1.0))
    except TypeError as exc:
        assert "collect" in str(exc) and "Anomaly" in str(exc)
    else:
        raise AssertionError("an outlet gave a record type it does not declare")
    bus.outlet("detect", Anomaly)
    bus.check({"detect": Detect(), "store": type("Store", (), {"takes": (Reading,), "gives": ()})(),
               "collect": type("Collect", (), {"takes": (), "gives": (Reading, SourceState)})()})
    bus.subscribe("detect", Anomaly)  # not what Detect takes
    with pytest.raises(TypeError, match="wired to take Anomaly"):
        bus.check({"detect": Detect(), "store": type("Store", (), {"takes": (Reading,), "gives": ()})(),
                   "collect": type("Collect", (), {"takes": (), "gives": (Reading, SourceState)})()})
