"""Peak memory of the whole stack: the headless demo for N seconds, without an LLM and with a GGUF model.

Runs `factory-copilot demo --headless` as a child process (simulated line + OPC UA server, broker,
service with detector, alarms, store, publisher, copilot) and samples the resident memory of its
whole process tree every 0.2 s. The detector is trained once beforehand, so both runs measure serving.
First, where the memory goes: what each group of imports, the trained detector and the simulated line's
OPC UA server add to a fresh interpreter, in the demo's order, then what the libraries serving keeps out
would add; at the peak, each process of the tree.

    .venv/bin/python bench/demo_memory.py [--duration 120] [--model models/shaped-qwen2.5-1.5b-q4_k_m.gguf]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from factory_copilot.config import ServicePaths

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "factory_copilot.cli"]


# (what, statements) in the order the demo loads them, then what serving keeps out (training loads it)
IMPORTS = [
    ("numpy", "import numpy"),
    ("pydantic, PyYAML: line file, records", "import factory_copilot.config, factory_copilot.records"),
    ("asyncua, cryptography: OPC UA", "import asyncua, factory_copilot.collect.station"),
    ("paho-mqtt, joblib, the stations: service", "import factory_copilot.service"),
    ("every command, the simulator: demo", "import factory_copilot.cli, simulators.demo, simulators.runner, "
                                           "simulators.opcua_server; factory_copilot.cli.build_parser()"),
    ("the trained detector and fault classifier", "import joblib; models = joblib.load({detector!r})"),
    ("the simulated line's OPC UA server (address space)",
     "import asyncio, asyncua; server = asyncua.Server(); asyncio.run(server.init())"),
    ("kept out: pandas 3 (+ pyarrow it imports)", "import pandas"),
    ("kept out: scipy.stats, scikit-learn", "import scipy.stats, sklearn.ensemble, sklearn.feature_extraction.text"),
]
RSS = "int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) * 1024"


def import_costs(detector: Path) -> list[tuple[str, int]]:
    """Resident memory each group of imports adds, in one fresh interpreter (Linux: /proc/self/status)."""
    steps = [stmt.format(detector=str(detector)) for _, stmt in IMPORTS]
    code = "\n".join([f"print({RSS}, flush=True)"] + [f"{stmt}\nprint({RSS}, flush=True)" for stmt in steps])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    sizes = [int(v) for v in out.stdout.split()]
    return [("python", sizes[0])] + [(label, b - a) for (label, _), a, b in zip(IMPORTS, sizes, sizes[1:])]


def tree_rss(proc: psutil.Process) -> dict[str, int]:
    """Resident memory of each process of the tree, by name and pid."""
    out = {}
    for p in [proc, *proc.children(recursive=True)]:
        try:
            out[f"{p.name()}[{p.pid}]"] = p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return out


def run(state: Path, duration: float, port: int, model: str | None) -> tuple[int, dict, dict]:
    # without --keep-state each run starts with no alarms (an alarm still active from the run before would not be
    # raised again); the trained detector is kept
    cmd = CLI + ["--log-level", "WARNING", "demo", "--headless", "--duration", str(duration), "--state-dir", str(state),
                 "--mqtt-port", str(port)]
    if model:
        cmd += ["--model", model]
    log = state / f"demo-{'model' if model else 'no-llm'}.log"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, cwd=ROOT)
    ps = psutil.Process(proc.pid)
    peak, at_peak = 0, {}
    while proc.poll() is None:
        try:
            sizes = tree_rss(ps)
        except psutil.NoSuchProcess:
            break
        if sum(sizes.values()) > peak:
            peak, at_peak = sum(sizes.values()), sizes
        time.sleep(0.2)
    out = proc.stdout.read()
    if proc.returncode != 0 or "{" not in out:
        # a demo that died must not pass for one that raised no alarm
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise SystemExit(f"demo {'with ' + model if model else 'without a model'} failed (exit {proc.returncode}); "
                         f"end of {log}:\n{tail}")
    return peak, at_peak, json.loads(out[out.index("{"):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--model", default=str(ROOT / "models" / "shaped-qwen2.5-1.5b-q4_k_m.gguf"))
    ap.add_argument("--port", type=int, default=18883)
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="fc-demo-mem-"))
    # train once (not measured) so both runs below measure the serving stack
    subprocess.run(CLI + ["--log-level", "WARNING", "demo", "--headless", "--duration", "1", "--state-dir", str(state),
                          "--mqtt-port", str(args.port)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    print("where the memory goes (resident MiB each group adds, in one interpreter, in the order the demo loads them):")
    for label, size in import_costs(ServicePaths(state).detector):
        print(f"  {label:52s} {size / 2**20:6.0f}")
    rows = []
    for label, model in (("no LLM", None), (Path(args.model).name, args.model)):
        if model and not Path(model).exists():
            print(f"{label}: skipped, {model} does not exist (models/make_shaped_qwen.py makes it)")
            continue
        peak, at_peak, summary = run(state, args.duration, args.port, model)
        rows.append((label, peak))
        print(f"{label:40s} peak RSS {peak / 2**20:7.0f} MiB "
              f"({', '.join(f'{name} {size / 2**20:.0f}' for name, size in at_peak.items())}); "
              f"alarms {len(summary.get('alarms_raised', []))}, "
              f"diagnoses {summary.get('diagnoses')}, latency {summary.get('latency_s')}", flush=True)
    print("demo memory: " + ", ".join(f"{label} {peak / 2**20:.0f} MiB" for label, peak in rows))


if __name__ == "__main__":
    main()
