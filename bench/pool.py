"""Jobs a minute through the site's pool of explainers (issue 22), with 1 and 2 ``factory-copilot explainer`` processes.

A real broker on loopback; each explainer runs its model in a child process; the line's ``PoolBackend`` sends the
jobs (the diagnosis' form, ``--tokens`` long) from ``--concurrency`` threads. Default model: the tiny random-weight
GGUF the tests make (models/make_tiny_qwen.py), which measures the pool's own cost; give ``--model`` for a real one.
    PYTHONPATH=src:. .venv/bin/python bench/pool.py [--jobs 120 --tokens 32 --concurrency 8 --explainers 1 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: bench

from factory_copilot.config import MqttConnection  # noqa: E402
from factory_copilot.copilot.language_model import CALL_FOR, AnswerForm, CallFor  # noqa: E402
from factory_copilot.copilot.pool import PoolBackend  # noqa: E402
from bench import start_broker  # noqa: E402

SITE = "bench"
ASK = [{"role": "user", "content": "why is the pump hot?"}]


def tiny_model(folder: Path) -> Path:
    spec = importlib.util.spec_from_file_location("make_tiny_qwen", ROOT / "models" / "make_tiny_qwen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.write_tiny_qwen(folder / "tiny-qwen.gguf"))


def start_explainer(port: int, model: Path, name: str, threads: int, *, site: str = SITE, url: str | None = None,
                    extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """``factory-copilot explainer`` on ``url`` (default mqtt://127.0.0.1:PORT), ready once it takes jobs;
    ``extra``: more of its options (a site broker's user, password and CA: bench/site.py)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.Popen([sys.executable, "-m", "factory_copilot.cli", "explainer", "--broker",
                             url or f"mqtt://127.0.0.1:{port}", "--site", site, "--model", str(model), "--threads",
                             str(threads), "--name", name, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            if "taking jobs" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(120):
        raise SystemExit(f"explainer {name} did not start")
    return proc


def stop_explainer(proc: subprocess.Popen) -> dict:
    """SIGTERM; the counters it prints as it stops (done, expired, refused)."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])


def run(port: int, model: Path, n_explainers: int, jobs: int, tokens: int, concurrency: int, threads: int) -> dict:
    procs = [start_explainer(port, model, f"ex-{i}", threads) for i in range(n_explainers)]
    backend = PoolBackend(MqttConnection(host="127.0.0.1", port=port), SITE, "line-1", max_pending=concurrency,
                          deadline_s=600)
    form = AnswerForm(min_chars=tokens, max_chars=tokens * 4, max_tokens=tokens)

    def one(i: int) -> float:
        CALL_FOR.set(CallFor(f"A-{i}@0.000", 2))
        started = time.perf_counter()
        backend.answer(ASK, form, timeout_s=600)
        return time.perf_counter() - started

    backend.answer(ASK, form, timeout_s=600)  # connected, and each model loaded (the explainers checked it)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        latencies = sorted(ex.map(one, range(jobs)))
    took = time.perf_counter() - started
    stats = backend.stats()
    backend.close()
    done = [stop_explainer(p)["done"] for p in procs]
    return {"explainers": n_explainers, "jobs": jobs, "seconds": round(took, 2),
            "jobs_per_min": round(jobs / took * 60), "p50_s": round(latencies[len(latencies) // 2], 3),
            "done_by_explainer": done, "duplicates": stats["duplicates"], "republished": stats["republished"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="GGUF file (default: the tiny generated one)")
    ap.add_argument("--jobs", type=int, default=120)
    ap.add_argument("--tokens", type=int, default=32, help="each answer's token bound (the diagnosis' summary: 32)")
    ap.add_argument("--concurrency", type=int, default=8, help="jobs out at once (the pool's max_pending)")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads per explainer")
    ap.add_argument("--explainers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    broker = start_broker()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = args.model or tiny_model(Path(tmp))
            results = [run(broker.port, model, n, args.jobs, args.tokens, args.concurrency, args.threads)
                       for n in args.explainers]
    finally:
        broker.stop()
    for r in results:
        print(json.dumps(r))
    load = os.getloadavg()[0]
    print("summary: " + "; ".join(f"{r['explainers']} explainer(s) {r['jobs_per_min']} jobs/min (p50 {r['p50_s']} s)"
                                  for r in results) + f"; {model.name}, {args.tokens} tokens, load {load:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
