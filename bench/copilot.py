"""Benchmark the copilot's model path: Qwen2.5-0.5B/1.5B-shaped Q4_K_M GGUFs (random weights) on the CPU.

For each model (and --threads count for the fixed ways; default: all cores but one, the service's fewest): prompt
tokens of a typical alarm (fixed prefix + compact evidence block), then
- cold: the first alarm after a start with nothing cached (prefix and data processed), the service's threads;
- warm: after a restart, the fixed prefix restored from disk (``state_dir``), then an alarm: the time to the
  first words of the summary the operator reads, to a complete validated diagnosis, the forward passes and
  tokens of the answer, and the CPU-seconds the model used (on a shared machine, about what the wall time
  would be on a quiet one with that many threads);
- the same warm alarm answered several ways, interleaved over ``--rounds`` (the machine is shared and noisy,
  so each way sees the same load), medians reported:
    grammar        one call under the full JSON-schema grammar (the way before this benchmark's last change)
    two-steps      the summary free, then the choices under a small GBNF grammar
    form/block     the answer form (decoding.py: summary written, ids chosen from a token trie, JSON given),
                   runbook steps' text in the data block, prompt on the generation's threads
    form           the same with the steps' text in the cached prefix (the data block names them)
    form+fa        the same with llama.cpp's flash attention
    form+tb2       the same with two threads for the prompt (batch), whatever the machine's load
    service        what the service does: the answer form, the steps in the prefix, prompt and generation threads
                   chosen by the cores the machine leaves idle at the time (SpareCores, asked before every pass;
                   never fewer than all cores but one), whatever --threads says
- the forward pass's speed as a share of the memory-bandwidth limit measured at the same thread count as the last
  way's passes used (every weight is read once per token; the limit is the model's bytes over the bandwidth that
  many threads reach).

    python bench/copilot.py [--sizes 0.5b 1.5b] [--threads 1] [--rounds 3] [--ways grammar form service]

The weights are random, so the text is noise: the answer form's summary is forced to its bound of 32 tokens (the
most a summary may take; a real Qwen writes one short sentence and stops sooner); under a grammar the summary
fills its 120 characters. The models are made by
models/make_shaped_qwen.py on first use (a few minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "models"))

from factory_copilot.config import SIMULATED_LINE, load_line  # noqa: E402
from factory_copilot.copilot import Copilot, LlamaCppBackend  # noqa: E402
from factory_copilot.copilot.backends import threads_for, default_threads  # noqa: E402
from factory_copilot.copilot.diagnosis import diagnosis_schema  # noqa: E402
from factory_copilot.copilot.prompt import DATA_OPEN, diagnosis_messages, system_prompt  # noqa: E402
from simulators.evaluation import simulated_incident  # noqa: E402

WAYS = ["grammar", "two-steps", "form/block", "form", "form+fa", "form+tb2", "service"]
STEM = DATA_OPEN + "\n"


def read_bandwidth(threads: int, mib: int = 1024, repeats: int = 5) -> float:
    """Best-of-N bytes/s reading a large array with ``threads`` threads at once (numpy releases the GIL while summing)."""
    a = np.ones(mib * 2**20 // 8)
    parts = np.array_split(a, threads)
    for p in parts:
        p.sum()
    best = float("inf")
    for _ in range(repeats):
        barrier = threading.Barrier(threads + 1)

        def read(p: np.ndarray) -> None:
            barrier.wait()
            p.sum()

        workers = [threading.Thread(target=read, args=(p,)) for p in parts]
        for w in workers:
            w.start()
        barrier.wait()
        t = time.perf_counter()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best


def copilot_for(backend: LlamaCppBackend, fault: str, alarm_id: str, steps_in_prefix: bool = True) -> tuple[Copilot, str]:
    line = load_line(SIMULATED_LINE)
    cop = Copilot(line, backend=backend, timeout_s=600)
    if not steps_in_prefix:
        cop.system = system_prompt(line.site, line.line, cop.faults, cop.library, line.description, steps=False)
    alarm, readings = simulated_incident(line, fault, at_s=600)
    alarm.alarm_id = alarm_id
    for r in readings:
        cop.observe(r)
    cop.evidence(alarm)
    # random weights write random tokens (~8 characters each here) and end the summary at a random quote: the answer
    # form's summary is forced to its token bound (SUMMARY_TOKENS), the same work every time and the most a real
    # model's summary may take (a real Qwen writes ~4 characters a token and stops at the end of its sentence)
    cop.schema["properties"]["summary"].update(minLength=10_000, maxLength=10_000)
    return cop, alarm_id


def diagnose(cop: Copilot, alarm_id: str) -> dict[str, float]:
    messages = diagnosis_messages(cop.system, cop.pack(alarm_id))
    llama = cop.backend.load()
    prompt = len(llama.tokenize(cop.backend._formatter(llama)(messages=messages).prompt.encode(), add_bos=True,
                                special=True))
    cpu = time.process_time()
    d = asyncio.run(cop._model_diagnosis(alarm_id, None))
    cpu = time.process_time() - cpu  # the CPU the model used: on a shared machine, what it would take on a quiet one
    t = cop.last_timing
    if d.origin != "model":
        raise SystemExit(f"no model diagnosis: {d.fallback_reason}")
    generated = t.get("completion_chunks", 0.0)
    passes = t.get("passes", generated)  # under a grammar every generated token is a pass
    return {"first": t["first_words_s"], "complete": t["complete_s"], "prompt": prompt,
            "new": prompt - cop.backend.last_prefix_tokens, "generated": generated, "passes": passes,
            "summary": len(d.summary),
            "gen_tps": (passes - 1) / max(1e-9, t["complete_s"] - t["first_words_s"]) if passes > 1 else 0.0,
            "cpu": cpu, "threads_batch": t.get("threads_batch", float(cop.backend.n_threads)),
            "threads": t.get("threads", float(cop.backend.n_threads))}


def bench(size: str, path: Path, threads: int, rounds: int, ways: list[str]) -> dict[str, float]:
    tag = f"[{size} x{threads}]"
    states = {k: Path(tempfile.mkdtemp(prefix=f"fc-bench-{k}-")) for k in ("prefix", "block")}
    started = time.perf_counter()
    backend = LlamaCppBackend(path, n_ctx=4096, n_threads=threads, seed=1, state_dir=states["prefix"])
    llama = backend.load()
    load_s = time.perf_counter() - started
    tok = lambda text: len(llama.tokenize(text.encode(), add_bos=False, special=True))  # noqa: E731
    print(f"{tag} {path.name}: {path.stat().st_size / 2**20:.0f} MiB, loaded in {load_s:.2f} s")

    # cold: nothing cached, the service's way (the prefix and the data block processed for this alarm)
    cop, first_alarm = copilot_for(backend, "bearing_wear", "A-cold")
    backend.fixed_threads = backend.n_threads_batch = None
    backend.last_prefix_tokens = 0
    cold = diagnose(cop, first_alarm)
    prefix = {k: tok(backend.prompt_stem(copilot_for(backend, "air_leak", "x", k == "prefix")[0].system, STEM))
              for k in states}
    print(f"{tag} cold (nothing cached): prompt {cold['prompt']:.0f} tokens (fixed prefix {prefix['prefix']}); first words "
          f"{cold['first']:.2f} s, complete diagnosis {cold['complete']:.2f} s, {cold['passes']:.0f} passes on "
          f"{cold['threads']:.1f} threads (prompt {cold['threads_batch']:.0f}); "
          f"CPU {cold['cpu']:.2f} s")

    # a restart: a new model instance finds the prefix on disk (saved by the first one's warm-up)
    for k in states:
        backend.state_dir = states[k]
        backend.warm(copilot_for(backend, "air_leak", "x", k == "prefix")[0].system, STEM)
    restarted = LlamaCppBackend(path, n_ctx=4096, n_threads=threads, seed=1, state_dir=states["prefix"])
    t = time.perf_counter()
    restarted.load()
    stats = restarted.warm(copilot_for(restarted, "air_leak", "x")[0].system, STEM).stats
    print(f"{tag} restart: load + prefix restored from disk {time.perf_counter() - t:.2f} s (restore "
          f"{stats['warm_s']:.2f} s, {stats['prefix_tokens']:.0f} tokens; with the steps' text in the data block the "
          f"prefix is {prefix['block']} tokens)")
    fa = (LlamaCppBackend(path, n_ctx=4096, n_threads=threads, seed=1, state_dir=states["prefix"], flash_attn=True)
          if "form+fa" in ways else None)

    def run(way: str) -> dict[str, float]:
        b = fa if way == "form+fa" else restarted
        in_prefix = way != "form/block" and way != "grammar" and way != "two-steps"
        b.state_dir = states["prefix" if in_prefix else "block"]
        b.n_threads_batch = {"form+tb2": 2, "service": None}.get(way, threads)
        b.fixed_threads = None if way == "service" else threads  # the service: as many as the machine leaves idle
        cop, alarm = copilot_for(b, "air_leak", f"A-{way}", in_prefix)
        cop.forms = way not in ("grammar", "two-steps")
        cop.two_steps = way == "two-steps"
        if not cop.forms:  # under a grammar the summary keeps its character bound (the grammar fills it)
            cop.schema = diagnosis_schema(faults=list(cop.faults))
        b.last_prefix_tokens = b.warm(cop.system, STEM).stats["prefix_tokens"]
        # (every way starts from the restored prefix, never from the previous way's prompt)
        return diagnose(cop, alarm)

    results: dict[str, list[dict[str, float]]] = {w: [] for w in ways}
    for r in range(rounds):
        for way in ways[r % len(ways):] + ways[: r % len(ways)]:  # each round starts with another way
            results[way].append(run(way))
    med = {w: {k: statistics.median(x[k] for x in xs) for k in xs[0]} for w, xs in results.items()}
    print(f"{tag} warm, the same alarm {rounds}x each way, interleaved (medians; CPU = the model's CPU-seconds):")
    for w in ways:
        m = med[w]
        print(f"{tag}   {w:10s} {m['new']:4.0f} new prompt tokens (x{m['threads_batch']:.0f}; passes x{m['threads']:.1f}), first words "
              f"{m['first']:5.2f} s, complete {m['complete']:5.2f} s, {m['generated']:3.0f} tokens out in "
              f"{m['passes']:3.0f} passes (summary {m['summary']:.0f} characters), CPU {m['cpu']:5.2f} s")

    main_way = "service" if "service" in med else ways[-1]
    s = med[main_way]
    n = max(1, round(s["threads"]))  # the limit at the thread count the reported way's passes ran on
    bandwidth = read_bandwidth(n)
    llama = restarted.load()
    token = llama.tokenize(b" the", add_bos=False)[0]
    llama.reset()
    llama._ctx.set_n_threads(n, n)
    llama.eval([token])
    n_decode = 24
    t = time.perf_counter()
    for _ in range(n_decode):
        llama.eval([token])
    decode_tps = n_decode / (time.perf_counter() - t)
    limit = bandwidth / path.stat().st_size
    share = decode_tps / limit
    print(f"{tag} forward pass {decode_tps:.1f} tok/s; bandwidth limit {limit:.1f} tok/s "
          f"({path.stat().st_size / 2**20:.0f} MiB per token at {bandwidth / 1e9:.1f} GB/s with {n} threads) "
          f"-> {share:.0%}")
    return {"warm": s["complete"], "first": s["first"], "cold": cold["complete"], "gen_tps": s["gen_tps"],
            "share": share, "warm_cpu": s["cpu"], "way": main_way, "threads": s["threads"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["0.5b", "1.5b"])
    ap.add_argument("--threads", nargs="+", type=int, help="llama.cpp generation threads (default: the service's)")
    ap.add_argument("--rounds", type=int, default=3, help="times each way answers the warm alarm (interleaved)")
    ap.add_argument("--ways", nargs="+", default=WAYS, choices=WAYS)
    args = ap.parse_args()
    from make_shaped_qwen import make, shaped_path, train_vocabulary

    threads = args.threads or [default_threads()]
    missing = [s for s in args.sizes if not shaped_path(s).exists()]
    vocabulary = train_vocabulary() if missing else None
    paths = {s: make(s, vocabulary=vocabulary) for s in args.sizes}
    cores = os.cpu_count() or 1
    print(f"{cores} cores, load average {os.getloadavg()[0]:.1f}; threads {threads} for the fixed ways; the "
          f"service's: at least {default_threads()}, {threads_for(float(cores), default_threads(), cores)} with "
          f"every core at least 60 % idle")
    results = {(s, n): bench(s, p, n, args.rounds, args.ways) for s, p in paths.items() for n in threads}
    key = ("1.5b" if "1.5b" in paths else args.sizes[-1], default_threads() if default_threads() in threads else threads[0])
    r = results[key]
    print(f"(load average at the end {os.getloadavg()[0]:.1f}; the figures below are the '{r['way']}' way, its passes "
          f"on {r['threads']:.1f} threads on average; the CPU time of its warm diagnosis was {r['warm_cpu']:.1f} s)")
    print(f"copilot: {r['warm']:.1f} s to diagnosis ({key[0].upper()}, warm), {r['first']:.1f} s to first words, "
          f"{r['gen_tps']:.1f} tok/s generation, {r['share']:.0%} of bandwidth limit")


if __name__ == "__main__":
    main()
