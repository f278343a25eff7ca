"""Peak memory of the whole stack: the headless demo for N seconds, without an LLM and with a GGUF model.

Runs `factory-copilot demo --headless` as a child process (simulated line + OPC UA server, broker,
service with detector, alarms, store, publisher, copilot) and samples the resident memory of its
whole process tree every 0.2 s. The detector is trained once beforehand, so both runs measure serving.

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

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "factory_copilot.cli"]


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run(state: Path, duration: float, port: int, model: str | None) -> tuple[int, dict]:
    # without --keep-state each run starts with no alarms (an alarm still active from the run before would not be
    # raised again); the trained detector is kept
    cmd = CLI + ["--log-level", "WARNING", "demo", "--headless", "--duration", str(duration), "--state-dir", str(state),
                 "--mqtt-port", str(port)]
    if model:
        cmd += ["--model", model]
    log = state / f"demo-{'model' if model else 'no-llm'}.log"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, cwd=ROOT)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, tree_rss(ps))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    out = proc.stdout.read()
    if proc.returncode != 0 or "{" not in out:
        # a demo that died must not pass for one that raised no alarm
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise SystemExit(f"demo {'with ' + model if model else 'without a model'} failed (exit {proc.returncode}); "
                         f"end of {log}:\n{tail}")
    return peak, json.loads(out[out.index("{"):])


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
    rows = []
    for label, model in (("no LLM", None), (Path(args.model).name, args.model)):
        if model and not Path(model).exists():
            print(f"{label}: skipped, {model} does not exist (models/make_shaped_qwen.py makes it)")
            continue
        peak, summary = run(state, args.duration, args.port, model)
        rows.append((label, peak))
        print(f"{label:40s} peak RSS {peak / 2**20:7.0f} MiB; alarms {len(summary.get('alarms_raised', []))}, "
              f"diagnoses {summary.get('diagnoses')}, latency {summary.get('latency_s')}", flush=True)
    print("demo memory: " + ", ".join(f"{label} {peak / 2**20:.0f} MiB" for label, peak in rows))


if __name__ == "__main__":
    main()
